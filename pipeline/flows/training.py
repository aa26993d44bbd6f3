"""After training: a newly registered model version becomes a canary release.

Production is the newest promoted release of the service in the ledger. A new version is
released as the treatment beside production's control (with `[ci] treatment_weight` percent of
the traffic), or, with `[ci] new_version_as = "control"`, replaces the control; the first
release of a service deploys the version alone. `bentoship ci on-model-registered` and the
webhook receiver (pipeline/flows/receiver.py) call `on_model_registered`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.build import bento
from pipeline.config import BuildConfig, CiConfig, ReleaseConfig
from pipeline.errors import ConfigError, VersionNotReadyError
from pipeline.flows.images import describe_models, same_models
from pipeline.flows.preflight import one_at_a_time
from pipeline.flows.results import FlowResult
from pipeline.models import registry
from pipeline.progress import Echo
from pipeline.release import lease, ledger
from pipeline.release.submit import check_submit
from pipeline.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.build.plan import BuildRequest

__all__ = ["on_model_registered", "plan_model_release"]


def plan_model_release(
    model: str,
    version: str,
    production: ledger.ReleaseRecord | None,
    ci: CiConfig,
    service: str,
) -> tuple[BuildRequest | None, str]:
    """The build a new version asks for, and why; (None, reason) when there is nothing to do."""
    from pipeline.build.plan import BuildRequest

    new = f"{model}/{version}"
    if production is None:
        return (
            BuildRequest(control=new, name=service),
            f"first release of {service}: {new} is the control, deployed directly",
        )
    control = production.model_versions.get("control", {})
    current = f"{control.get('name')}/{control.get('version')}"
    if current == new:
        return None, f"{new} is already production's control (release {production.short_id})"
    if ci.new_version_as == "control":
        return (
            BuildRequest(control=new, name=service),
            f"{new} replaces production's control {current} (new_version_as = \"control\")",
        )
    return (
        BuildRequest(control=current, treatment=new, name=service,
                     treatment_weight=ci.treatment_weight, allow_pickle=False),
        (f"{new} is the treatment ({ci.treatment_weight}%) beside production's control "
         f"{current} (release {production.short_id})"),
    )


def _wait_until_ready(client: MlflowClient, model: str, version: str, ci: CiConfig,
                      echo: Echo) -> registry.ModelVersion:
    deadline = time.monotonic() + ci.ready_timeout_s
    told = False
    while True:
        try:
            return registry.resolve(client, f"{model}/{version}")
        except VersionNotReadyError:
            status = client.get_model_version(model, version).status
            if status != "PENDING_REGISTRATION" or time.monotonic() > deadline:
                raise
            if not told:
                echo(f"{model}/{version} is still being registered: waiting up to "
                     f"{ci.ready_timeout_s:.0f}s")
                told = True
            time.sleep(1.0)


def on_model_registered(
    model: str,
    version: str,
    settings: Settings,
    release_config: ReleaseConfig,
    ci: CiConfig,
    outdir: Path,
    echo: Echo,
    *,
    name: str | None = None,
    submit: bool = False,
    allow_breaking_api: bool = False,
    allow_dirty: bool = False,
    wait_s: float = lease.DEFAULT_WAIT_S,
    build_config: BuildConfig | None = None,
) -> FlowResult:
    """Release a newly registered version against production (see the module docstring).

    `build_config` is bentoship.toml's `[build]`/`[service]` (requirements, trusted types, the
    team's hooks); the defaults when None.

    Skips, saying why, when the model is not followed, when the version already is production's
    control, and when production already runs exactly these versions with this code. A change
    of the service's API that breaks production's callers is refused by the handoff's API guard
    (pipeline/release/handoff.py) unless `allow_breaking_api`; a dirty work tree unless
    `allow_dirty`. Another release of the service is waited for up to `wait_s` seconds (its
    lease, pipeline/release/lease.py), then LeaseHeld names it.
    """
    from pipeline.build import builder as build
    from pipeline.identity import code_version
    from pipeline.release import handoff

    flow: Literal["on-model-registered"] = "on-model-registered"
    if not str(version).isdigit():
        raise ConfigError(f"--version must be a model version number, got {version!r}")
    if ci.models and model not in ci.models:
        return FlowResult(flow, "skipped",
                          f"{model} is not among the models [ci] follows ({', '.join(ci.models)})")
    check_submit(submit)
    with one_at_a_time(settings, echo):
        client = registry.settings_client(settings)
        mv = _wait_until_ready(client, model, str(version), ci, echo)
        service = name or bento.service_name(mv.name)
        with lease.hold(settings, service, echo, wait_s=wait_s, client=client):
            production = ledger.latest_successful(client, name=service)
            request, why = plan_model_release(mv.name, mv.version, production, ci, service)
            if request is not None and build_config is not None:
                request = replace(request, build_config=build_config)
            if request is None:
                return FlowResult(flow, "skipped", why)
            if production is not None:
                planned = {"control": _ref(request.control)}
                if request.treatment is not None:
                    planned["treatment"] = _ref(request.treatment)
                code = code_version(build.PROJECT_ROOT).label
                if same_models(production.model_versions, planned) \
                        and production.code_version == code:
                    return FlowResult(
                        flow, "skipped",
                        f"release {production.short_id} already runs {describe_models(planned)} "
                        f"with code {code}: nothing new to release",
                    )
            echo(f"Releasing {service}: {why}")
            done = handoff.release(request, settings, release_config, outdir, echo, kind="model",
                                   submit=submit, allow_breaking_api=allow_breaking_api,
                                   allow_dirty=allow_dirty, wait_s=wait_s)
    return FlowResult(flow, "released", why, done)


def _ref(reference: str) -> dict[str, str]:
    name, _, version = reference.rpartition("/")
    return {"name": name, "version": version}
