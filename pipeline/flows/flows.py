"""The CI flows, as a typed API: a new model version, a code-only hotfix, a rollback.

    on_model_registered(model, version, ...)  a registered version -> canary release
    on_commit(message, sha, ...)              `[deploy: code-only]` -> hotfix rebuild -> canary
    rollback(to, ...)                         an earlier image, by digest -> deploy, no build

`bentoship ci ...` and `bentoship rollback` (pipeline/_cli_ci.py) only parse and print; the
webhook receiver (pipeline/receiver.py) calls `on_model_registered` for each accepted delivery.

Production is what the ledger says: the newest succeeded release of the service. A new version
is released as the treatment against production's control (or, with `[ci] new_version_as =
"control"`, replaces the control); a hotfix rebuilds production's model versions with the
code of the checked-out commit; a rollback goes back to the release before production, skipping
images an earlier rollback left behind. Releases run one at a time per state folder
(`<BENTOSHIP_HOME>/release.lock`), so a webhook and a CI job on one machine never race.

Configuration: the `[ci]` table of bentoship.toml (`CiConfig`), next to `[release]`.
"""

from __future__ import annotations

import fcntl
import json
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.build import bento, oci
from pipeline.config import CiConfig, ReleaseConfig, Settings, rollback_release_config
from pipeline.errors import (
    ArtifactError,
    ConfigError,
    LedgerUnavailable,
    ReleaseError,
    VersionNotReadyError,
)
from pipeline.flows.flags import parse_commit_flags
from pipeline.identity import LABEL_PREFIX, ImageIdentity, parse_tag
from pipeline.models import registry
from pipeline.progress import Echo
from pipeline.release import ledger
from pipeline.release.documents import ReleaseSpec, parse_image_reference, render_release

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.build.builder import BuildRequest
    from pipeline.release.handoff import Handoff

__all__ = [
    "CiConfig",
    "FlowResult",
    "LedgerUnavailable",
    "RollbackResult",
    "RollbackTarget",
    "choose_previous",
    "ledger_problem",
    "on_commit",
    "on_model_registered",
    "parse_target",
    "plan_model_release",
    "rollback",
]

_HEX_ID = re.compile(r"^[0-9a-f]{6,32}$")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")



# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowResult:
    """What a flow did: `released` (with the handoff) or `skipped` (with the reason)."""

    flow: Literal["on-model-registered", "on-commit"]
    action: Literal["released", "skipped"]
    reason: str
    handoff: Handoff | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "action": self.action,
            "reason": self.reason,
            "release": self.handoff.as_dict() if self.handoff else None,
        }


@dataclass(frozen=True)
class RollbackResult:
    """A rendered rollback; `record` is None when the ledger could not be written."""

    spec: ReleaseSpec
    files: dict[str, Path]
    chosen: str  # how the target was found, for humans
    record: ledger.ReleaseRecord | None
    ledger_note: str
    submitted: bool
    submit_note: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "release": self.record.to_dict() if self.record else None,
            "recorded": self.record is not None,
            "ledger_note": self.ledger_note,
            "image": self.spec.image,
            "baseline": self.spec.baseline_image,
            "mode": self.spec.mode,
            "kind": self.spec.kind,
            "models": {k: dict(v) for k, v in self.spec.model_versions.items()},
            "code_version": self.spec.code_version,
            "image_tag": self.spec.image_tag,
            "chosen": self.chosen,
            "files": {k: str(v) for k, v in self.files.items()},
            "submitted": self.submitted,
            "submit_note": self.submit_note,
        }


# --- shared helpers -------------------------------------------------------------------------------


def ledger_problem(settings: Settings, timeout_s: float = 3.0) -> str | None:
    """Why the ledger's MLflow server cannot be used right now, or None when it answers.

    Only an HTTP tracking server can be down; MLflow's own client would retry for minutes.
    """
    uri = settings.tracking_uri.rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    loopback = re.match(r"^http://(localhost|127\.[0-9.]+|\[::1\])(:|/|$)", uri) is not None
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
    try:
        with opener.open(f"{uri}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # something answers (a proxy without /health): let MLflow's client judge
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"the MLflow tracking server {uri} does not answer ({reason})"


@contextmanager
def one_at_a_time(settings: Settings, echo: Echo) -> Iterator[None]:
    """Hold `<home>/release.lock` while a release runs; wait for one already running."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / "release.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"Another release is running (lock {settings.home / 'release.lock'}): waiting")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)



def _same_models(a: Mapping[str, Mapping[str, str]], b: Mapping[str, Mapping[str, str]]) -> bool:
    def key(models: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[str, str]]:
        return {v: (m.get("name", ""), m.get("version", "")) for v, m in models.items()}

    return key(a) == key(b)


def _describe(models: Mapping[str, Mapping[str, str]]) -> str:
    return ", ".join(f"{v}={m.get('name')}/{m.get('version')}" for v, m in sorted(models.items()))


def _succeeded(client: MlflowClient, name: str | None) -> list[ledger.ReleaseRecord]:
    """Succeeded releases (of one service when named), newest first."""
    return [r for r in ledger.list_releases(client, limit=1000, name=name) if r.status == "succeeded"]


def _one_service(client: MlflowClient, name: str | None, what: str) -> str:
    """`name`, or the one service the ledger has succeeded releases of."""
    if name is not None:
        return name
    names = sorted({r.name for r in _succeeded(client, None)})
    if not names:
        raise ReleaseError(
            f"nothing to {what}: the ledger at {client.tracking_uri} has no successful release "
            "(`bentoship releases list` shows what is recorded)"
        )
    if len(names) > 1:
        raise ConfigError(
            f"the ledger has releases of several services ({', '.join(names)}): pass --name "
            f"to say which one to {what}"
        )
    return names[0]


def _remote_identity(repository: str, digest: str) -> ImageIdentity:
    """The labels of `repository@digest` as the registry serves them; ReleaseError if gone."""
    found = oci.find(repository, digest)
    if found is None:
        raise ReleaseError(
            f"{repository}@{digest} is not in the registry any more (deleted or garbage-"
            "collected): it cannot be deployed. `bentoship releases list` shows other releases."
        )
    return ImageIdentity.from_labels(found.labels)



# --- a new model version --------------------------------------------------------------------------


def plan_model_release(
    model: str,
    version: str,
    production: ledger.ReleaseRecord | None,
    ci: CiConfig,
    service: str,
) -> tuple[BuildRequest | None, str]:
    """The build a new version asks for, and why; (None, reason) when there is nothing to do."""
    from pipeline.build.builder import BuildRequest

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
) -> FlowResult:
    """Release a newly registered version against production (see the module docstring).

    Skips, saying why, when the model is not followed, when the version already is production's
    control, and when production already runs exactly these versions with this code. A change
    of the service's API that breaks production's callers is refused (pipeline/handoff.py)
    unless `allow_breaking_api`.
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
    handoff._check_submit(submit)
    with one_at_a_time(settings, echo):
        client = registry.settings_client(settings)
        mv = _wait_until_ready(client, model, str(version), ci, echo)
        service = name or bento.service_name(mv.name)
        production = ledger.latest_successful(client, name=service)
        request, why = plan_model_release(mv.name, mv.version, production, ci, service)
        if request is None:
            return FlowResult(flow, "skipped", why)
        if production is not None:
            planned = {"control": _ref(request.control)}
            if request.treatment is not None:
                planned["treatment"] = _ref(request.treatment)
            code = code_version(build.PROJECT_ROOT).label
            if _same_models(production.model_versions, planned) and production.code_version == code:
                return FlowResult(
                    flow, "skipped",
                    f"release {production.short_id} already runs {_describe(planned)} with code "
                    f"{code}: nothing new to release",
                )
        echo(f"Releasing {service}: {why}")
        done = handoff.release(request, settings, release_config, outdir, echo, kind="model",
                               submit=submit, allow_breaking_api=allow_breaking_api)
    return FlowResult(flow, "released", why, done)


def _ref(reference: str) -> dict[str, str]:
    name, _, version = reference.rpartition("/")
    return {"name": name, "version": version}


# --- a code-only hotfix ---------------------------------------------------------------------------


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
) -> FlowResult:
    """Release the checked-out code with production's model versions, if the message asks.

    `[deploy: code-only]` (pipeline/flags.py) rebuilds the image of the newest successful
    release with this commit's code, verifies that its model manifests are still the ones
    production's image was built with, and hands it to the canary as a `hotfix` release.
    Without the flag, or with a skip flag, nothing happens and the reason says why.
    `[api: allow-breaking]` in the message lets the release change the API incompatibly.
    """
    from pipeline.build import builder as build
    from pipeline.build.builder import BuildRequest
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
    handoff._check_submit(submit)
    with one_at_a_time(settings, echo):
        client = registry.settings_client(settings)
        service = _one_service(client, name, "hotfix")
        production = ledger.latest_successful(client, name=service)
        if production is None:
            raise ReleaseError(
                f"nothing to hotfix: {service} has no successful release in the ledger at "
                f"{client.tracking_uri}; a code-only deploy reuses the models of one"
            )
        if production.code_version == code:
            return FlowResult(flow, "skipped",
                              f"release {production.short_id} already runs code {code}")
        repository, digest = parse_image_reference(production.image, option="production image")
        identity = _remote_identity(repository, digest)
        _check_manifests(client, production, identity)
        models = production.model_versions
        treatment = models.get("treatment")
        request = BuildRequest(
            control=f"{models['control']['name']}/{models['control']['version']}",
            treatment=f"{treatment['name']}/{treatment['version']}" if treatment else None,
            name=service,
            treatment_weight=identity.treatment_weight if treatment else None,
            allow_pickle=identity.allow_pickle,
        )
        why = (f"{decision.reason}: code {code} with the models of release "
               f"{production.short_id} ({_describe(models)})")
        echo(f"Hotfix of {service}: {why}")
        done = handoff.release(request, settings, release_config, outdir, echo, kind="hotfix",
                               submit=submit, allow_breaking_api=decision.allow_breaking_api)
    return FlowResult(flow, "released", why, done)


def _check_manifests(
    client: MlflowClient, production: ledger.ReleaseRecord, identity: ImageIdentity
) -> None:
    """Each model version's recorded manifest must be the one production's image carries.

    The build then verifies the downloaded artifacts against that same manifest, so the hotfix
    image serves byte-for-byte the artifacts production serves.
    """
    from mlflow.exceptions import MlflowException

    from pipeline.models.integrity import DIGEST_TAG

    for variant, model in sorted(production.model_versions.items()):
        in_image = identity.manifests.get(variant)
        try:
            tags = client.get_model_version(model["name"], model["version"]).tags or {}
        except MlflowException as exc:
            raise ArtifactError(
                f"{model['name']}/{model['version']} ({variant} of release {production.short_id}) "
                f"cannot be read from the registry: {exc}"
            ) from exc
        recorded = tags.get(DIGEST_TAG)
        if not in_image or recorded != in_image:
            raise ArtifactError(
                f"{model['name']}/{model['version']} ({variant}): its recorded manifest "
                f"({recorded or 'none'}) is not the one production's image {production.image} "
                f"was built with ({in_image or 'none'}); a code-only hotfix must serve the same "
                "artifacts. Nothing was built."
            )


# --- rollback -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackTarget:
    """What `--to` asked for, before it is looked up."""

    kind: Literal["previous", "release", "tag", "digest"]
    text: str = ""
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None

    @property
    def needs_ledger(self) -> bool:
        return self.kind in ("previous", "release") or (self.kind == "tag" and not self.repository)


def parse_target(text: str | None) -> RollbackTarget:
    """Read `--to`: a release id (prefix), `REPO:TAG`, a bare tag, `REPO@sha256:...`, `sha256:...`."""
    if text is None or not text.strip():
        return RollbackTarget("previous")
    value = text.strip()
    if "@" in value:
        repository, digest = parse_image_reference(value, option="--to")
        return RollbackTarget("digest", value, repository=repository, digest=digest)
    if value.startswith("sha256:"):
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
            raise ConfigError(f"--to {value!r} is not a digest: use sha256:<64 lowercase hex digits>")
        return RollbackTarget("digest", value, digest=value)
    last = value.rsplit("/", 1)[-1]
    if "/" in value and ":" in last:
        repository, _, tag = value.rpartition(":")
        return RollbackTarget("tag", value, repository=repository, tag=tag)
    if parse_tag(value) is not None:
        return RollbackTarget("tag", value, tag=value)
    if _HEX_ID.match(value.lower()):
        return RollbackTarget("release", value.lower())
    raise ConfigError(
        f"--to {value!r}: give a release id (or a unique prefix of at least 6 characters, see "
        "`bentoship releases list`), an image tag (REPOSITORY:TAG or just ctl-v...), or an image "
        "by digest (REPOSITORY@sha256:...)"
    )


def choose_previous(records: Sequence[ledger.ReleaseRecord]) -> ledger.ReleaseRecord | None:
    """The release to go back to; `records` are one service's succeeded releases, newest first.

    The newest one is production. Going back means the newest older release whose image differs
    from production's and that no rollback moved away from (a rollback's baseline is the image
    it replaced): rolling back twice goes further back instead of returning to the bad image.
    """
    if not records:
        return None
    production = records[0]
    left_behind = {r.baseline for r in records if r.kind == "rollback" and r.baseline}
    for record in records[1:]:
        if record.image != production.image and record.image not in left_behind:
            return record
    return None


def _resolve_target(
    target: RollbackTarget, settings: Settings, client: MlflowClient | None, name: str | None
) -> tuple[str, str, ledger.ReleaseRecord | None, str]:
    """(repository, digest, the release it came from if known, how it was chosen)."""
    if target.kind == "previous":
        assert client is not None
        service = _one_service(client, name, "roll back")
        records = _succeeded(client, service)
        chosen = choose_previous(records)
        if chosen is None:
            raise ReleaseError(
                f"no earlier successful release of {service} to roll back to: production is "
                f"release {records[0].short_id} ({records[0].image}), and every release before "
                "it deployed that image or one a rollback moved away from. Choose one with "
                "--to (`bentoship releases list` shows them)."
            )
        repository, digest = parse_image_reference(chosen.image, option="release image")
        return repository, digest, chosen, (
            f"release {chosen.short_id}, the one before production {records[0].short_id}"
        )
    if target.kind == "release":
        assert client is not None
        record = ledger.get_release(client, target.text)
        if record.status != "succeeded":
            raise ReleaseError(
                f"release {record.short_id} has status {record.status}: only a release that "
                "succeeded can be rolled back to"
            )
        repository, digest = parse_image_reference(record.image, option="release image")
        return repository, digest, record, f"release {record.short_id} (--to)"
    if target.kind == "tag":
        assert target.tag is not None
        in_repo = target.repository
        if in_repo is None and client is not None:
            for record in ledger.list_releases(client, limit=1000, name=name):
                if record.image_tag == target.tag and record.status == "succeeded":
                    repo, digest = parse_image_reference(record.image, option="release image")
                    return repo, digest, record, f"release {record.short_id}, tag {target.tag}"
        if in_repo is None:
            if name is None:
                raise ConfigError(
                    f"--to {target.tag}: no succeeded release in the ledger has this tag; give "
                    "the repository too (REPOSITORY:TAG) or --name to look it up in the registry"
                )
            in_repo = f"{settings.oci_registry}/{name}"
        found = oci.find(in_repo, target.tag)
        if found is None:
            raise ReleaseError(f"{in_repo}:{target.tag} is not in the registry")
        return in_repo, found.digest, None, f"tag {target.tag} in the registry"
    assert target.digest is not None
    given_repo = target.repository
    if given_repo is None:
        if name is None:
            raise ConfigError(
                f"--to {target.digest}: a bare digest needs --name (or give "
                f"REPOSITORY@{target.digest})"
            )
        given_repo = f"{settings.oci_registry}/{name}"
    return given_repo, target.digest, None, "the image given by digest (--to)"


def rollback(
    settings: Settings,
    release_config: ReleaseConfig,
    ci: CiConfig,
    outdir: Path,
    echo: Echo,
    *,
    to: str | None = None,
    name: str | None = None,
    baseline: str | None = None,
    submit: bool = False,
) -> RollbackResult:
    """Deploy an earlier image again: no build; the registry must still serve it.

    The image's labels must name the models the ledger recorded for it (or, given by digest
    alone, must be a bentoship image). With MLflow down, an explicit image (`--to` a digest or
    `REPO:TAG`) still renders, deploying directly; the ledger entry is then missing and
    LedgerUnavailable is raised after rendering (the result is attached to it as `.result`).
    `baseline` (REPO@sha256:...) names production's image for that case; with the ledger up it
    must agree with the ledger.
    """
    from pipeline.release import handoff

    target = parse_target(to)
    given = parse_image_reference(baseline, option="--baseline") if baseline else None
    handoff._check_submit(submit)
    problem = ledger_problem(settings)
    if problem and target.needs_ledger and not (target.kind == "tag" and name):
        asked = "which release came before production" if target.kind == "previous" else \
            f"what {target.text!r} refers to"
        raise ReleaseError(
            f"{problem}. Without the ledger bentoship cannot tell {asked}. Roll back to an "
            "explicit image instead, which needs only the OCI registry: `bentoship rollback "
            "--to REPOSITORY@sha256:...` (the digest is in the earlier release's pipeline.json "
            "and in `bentoship releases list --output json`), or `--to REPOSITORY:TAG`."
        )
    with one_at_a_time(settings, echo):
        client = None if problem else registry.settings_client(settings)
        repository, digest, record, chosen = _resolve_target(target, settings, client, name)
        echo(f"Rolling back to {repository}@{digest}: {chosen}")
        identity = _remote_identity(repository, digest)
        models = {variant: dict(model) for variant, model in identity.models.items()}
        service = identity.title
        if "control" not in models or not service:
            raise ReleaseError(
                f"{repository}@{digest} is not a bentoship image: its labels name no "
                f"{LABEL_PREFIX}.model.control.* or org.opencontainers.image.title"
            )
        if name is not None and service != name:
            raise ReleaseError(f"{repository}@{digest} is an image of {service}, not of {name}")
        if client is not None and record is None:
            record = next((r for r in _succeeded(client, service)
                           if r.image == f"{repository}@{digest}"), None)
        if record is not None and not _same_models(record.model_versions, models):
            raise ReleaseError(
                f"{repository}@{digest} carries {_describe(models)} in its labels, but release "
                f"{record.short_id} recorded {_describe(record.model_versions)}: the registry "
                "does not hold what the ledger says. Nothing was rendered."
            )
        echo(f"  the registry serves it; its labels name {_describe(models)}")

        current = given
        if client is not None:
            production = ledger.latest_successful(client, name=service)
            current = None
            if production is not None:
                current = parse_image_reference(production.image, option="production image")
                if given is not None and given != current:
                    raise ReleaseError(
                        f"--baseline {baseline} is not production: the ledger says release "
                        f"{production.short_id} runs {production.image}"
                    )
        if current is not None:
            if current[1] == digest:
                raise ReleaseError(f"{repository}@{digest} is already production: nothing to "
                                   "roll back")
            if current[0] != repository:
                raise ReleaseError(
                    f"production runs an image of {current[0]}, the rollback target is in "
                    f"{repository}: a rollback replaces an image within one repository"
                )
        spec = ReleaseSpec(
            name=service,
            repository=repository,
            digest=digest,
            baseline_digest=current[1] if current else None,
            model_versions=models,
            code_version=identity.code_version,
            image_tag=identity.tag,
            kind="rollback",
            skip_canary=not ci.rollback_canary,
            openapi=_recorded_openapi(client, record),
        )
        config = rollback_release_config(release_config, ci) if ci.rollback_canary else \
            release_config
        if client is not None:
            done = handoff._finish(spec, config, outdir, settings, echo, None, submit)
            return RollbackResult(spec, done.files, chosen, done.record,
                                  f"recorded as release {done.record.short_id}", done.submitted,
                                  done.submit_note)
        echo(f"Rendering the {spec.mode} rollback into {outdir}")
        files = render_release(spec, config, outdir)
        submitted, note = handoff._submit(files, submit)
    result = RollbackResult(
        spec, files, chosen, None,
        f"NOT recorded in the ledger: {problem}. "
        + ("" if current else "Production is unknown (no --baseline), so the pipeline deploys "
           "without an undo stage. ")
        + "Record it once MLflow is back by running the same command again.",
        submitted, note,
    )
    raise LedgerUnavailable(
        f"rendered the rollback to {spec.image} into {outdir}, but it is not recorded in the "
        f"ledger: {problem}. Hand the files over (`spin pipeline save --file "
        f"{files['pipeline.json']}`); run the same command again once MLflow answers to record it.",
        result,
    )


def _recorded_openapi(
    client: MlflowClient | None, record: ledger.ReleaseRecord | None
) -> dict[str, Any] | None:
    """The OpenAPI spec recorded with the release, when there is one to read."""
    from mlflow.exceptions import MlflowException

    if client is None or record is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bentoship-rollback-") as tmp:
        try:
            path = client.download_artifacts(record.release_id, "openapi.json", tmp)
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (MlflowException, OSError, json.JSONDecodeError):
            return None  # an older release without one: the rollback renders without it
    return data if isinstance(data, dict) else None
