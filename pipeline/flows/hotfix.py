"""A code-only hotfix: production's model versions, rebuilt with the checked-out commit's code.

`[deploy: code-only]` in the commit message (pipeline/flows/flags.py) asks for it; the commit
must be the clean checked-out HEAD, and each model version's recorded manifest must still be
the one production's image was built with, so the hotfix serves the very same artifacts.
`bentoship ci on-commit` calls `on_commit` on every push.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.config import BuildConfig, ReleaseConfig
from pipeline.errors import ArtifactError, ConfigError, ReleaseError, map_exceptions
from pipeline.flows.flags import parse_commit_flags
from pipeline.flows.images import describe_models, remote_identity
from pipeline.flows.preflight import one_at_a_time
from pipeline.flows.results import FlowResult
from pipeline.identity import ImageIdentity
from pipeline.models import registry
from pipeline.progress import Echo
from pipeline.release import lease, ledger
from pipeline.release.spec import parse_image_reference
from pipeline.release.submit import check_submit
from pipeline.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["check_commit", "check_manifests", "on_commit"]

_SHA = re.compile(r"^[0-9a-f]{7,40}$")


def check_commit(root: Path, sha: str) -> str:
    """The code label of `root` when its HEAD is `sha` and the tree is clean; else ConfigError."""
    from pipeline.identity import code_version

    wanted = sha.strip().lower()
    if not _SHA.match(wanted):
        raise ConfigError(f"--sha {sha!r} is not a git commit sha (7 to 40 hex digits)")
    code = code_version(root)
    if not code.sha.startswith(wanted):
        raise ConfigError(
            f"--sha {wanted} is not the checked-out commit: HEAD of {root} is {code.sha}. The "
            "image is built from the checkout, so check out the commit being deployed (in CI: "
            "the pushed sha) and run again."
        )
    if code.dirty:
        raise ConfigError(
            f"the checkout {root} has uncommitted changes (code version {code.label}): a hotfix "
            f"ships exactly commit {code.sha[:7]}. Commit or stash them first."
        )
    return code.label


def on_commit(
    message: str,
    sha: str,
    settings: Settings,
    release_config: ReleaseConfig,
    outdir: Path,
    echo: Echo,
    *,
    name: str | None = None,
    submit: bool = False,
    root: Path | None = None,
    wait_s: float = lease.DEFAULT_WAIT_S,
    build_config: BuildConfig | None = None,
) -> FlowResult:
    """Release the checked-out code with production's model versions, if the message asks.

    `[deploy: code-only]` (pipeline/flows/flags.py) rebuilds the image of the newest successful
    release with this commit's code, verifies that its model manifests are still the ones
    production's image was built with, and hands it to the canary as a `hotfix` release.
    Without the flag, or with a skip flag, nothing happens and the reason says why.
    `[api: allow-breaking]` in the message lets the release change the API incompatibly.
    Another release of the service is waited for up to `wait_s` seconds (its lease).
    """
    from pipeline.build import builder as build
    from pipeline.build.plan import BuildRequest
    from pipeline.release import handoff

    flow: Literal["on-commit"] = "on-commit"
    decision = parse_commit_flags(message)
    if decision.action == "skip":
        return FlowResult(flow, "skipped", f"{decision.reason}: not deploying this commit")
    if decision.action == "none":
        return FlowResult(
            flow, "skipped",
            f"{decision.reason}: nothing to deploy. A code-only deploy needs `[deploy: code-only]` "
            "(or a `Deploy: code-only` trailer) in the commit message; new model versions are "
            "released by `bentoship ci on-model-registered`.",
        )
    code = check_commit(root or build.PROJECT_ROOT, sha)
    check_submit(submit)
    with one_at_a_time(settings, echo):
        client = registry.settings_client(settings)
        service = ledger.only_service(client, name, "hotfix")
        with lease.hold(settings, service, echo, wait_s=wait_s, client=client):
            production = ledger.latest_successful(client, name=service)
            if production is None:
                raise ReleaseError(
                    f"nothing to hotfix: {service} has no successful release in the ledger at "
                    f"{client.tracking_uri}; a code-only deploy reuses the models of one"
                )
            if production.code_version == code:
                return FlowResult(flow, "skipped",
                                  f"release {production.short_id} already runs code {code}")
            repository, digest = parse_image_reference(production.image,
                                                       option="production image")
            identity = remote_identity(repository, digest, settings.docker_config)
            check_manifests(client, production, identity)
            models = production.model_versions
            treatment = models.get("treatment")
            request = BuildRequest(
                control=f"{models['control']['name']}/{models['control']['version']}",
                treatment=f"{treatment['name']}/{treatment['version']}" if treatment else None,
                name=service,
                treatment_weight=identity.treatment_weight if treatment else None,
                allow_pickle=identity.allow_pickle,
                trusted_types=identity.trusted_types,  # the same models: the same trust
                # The code of this commit, its hooks included ([service] of bentoship.toml).
                build_config=build_config if build_config is not None else BuildConfig(),
            )
            why = (f"{decision.reason}: code {code} with the models of release "
                   f"{production.short_id} ({describe_models(models)})")
            echo(f"Hotfix of {service}: {why}")
            done = handoff.release(request, settings, release_config, outdir, echo,
                                   kind="hotfix", submit=submit,
                                   allow_breaking_api=decision.allow_breaking_api,
                                   wait_s=wait_s, root=root)
    return FlowResult(flow, "released", why, done)


def check_manifests(
    client: MlflowClient, production: ledger.ReleaseRecord, identity: ImageIdentity
) -> None:
    """Each model version's recorded manifest must be the one production's image carries.

    The build then verifies the downloaded artifacts against that same manifest, so the hotfix
    image serves byte-for-byte the artifacts production serves. ArtifactError otherwise.
    """
    from pipeline.models.integrity import DIGEST_TAG

    for variant, model in sorted(production.model_versions.items()):
        in_image = identity.manifests.get(variant)
        what = f"{model['name']}/{model['version']} ({variant} of release {production.short_id})"
        with map_exceptions({"mlflow": (ArtifactError, _unreadable(what))}):
            tags = client.get_model_version(model["name"], model["version"]).tags or {}
        recorded = tags.get(DIGEST_TAG)
        if not in_image or recorded != in_image:
            raise ArtifactError(
                f"{model['name']}/{model['version']} ({variant}): its recorded manifest "
                f"({recorded or 'none'}) is not the one production's image {production.image} "
                f"was built with ({in_image or 'none'}); a code-only hotfix must serve the same "
                "artifacts. Nothing was built."
            )


def _unreadable(what: str) -> Callable[[BaseException], str]:
    return lambda exc: f"{what} cannot be read from the registry: {exc}"
