"""A rollback: deploy an earlier image again, by digest; no build.

`--to` names the target (`parse_target`): nothing (the release before production, by the
ledger's rule `choose_previous`), a release id or prefix, an image tag, or an image by digest.
The registry must still serve the image and its labels must name the models the ledger
recorded for it. With MLflow down an explicit image still renders, deploying directly, but is
not recorded: LedgerUnavailable carries the result. `bentoship rollback` calls `rollback`.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.build import oci
from pipeline.config import CiConfig, ReleaseConfig, rollback_release_config
from pipeline.errors import ConfigError, LedgerUnavailable, ReleaseError
from pipeline.flows.images import describe_models, remote_identity, same_models
from pipeline.flows.preflight import ledger_problem, one_at_a_time
from pipeline.flows.results import RollbackResult
from pipeline.identity import LABEL_PREFIX, parse_tag
from pipeline.models import registry
from pipeline.progress import Echo
from pipeline.release import lease, ledger
from pipeline.release.files import render_release
from pipeline.release.spec import ReleaseSpec, parse_image_reference
from pipeline.release.submit import check_submit, submit_pipeline
from pipeline.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["RollbackTarget", "parse_target", "rollback"]

_HEX_ID = re.compile(r"^[0-9a-f]{6,32}$")


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


def _resolve_target(
    target: RollbackTarget, settings: Settings, client: MlflowClient | None, name: str | None
) -> tuple[str, str, ledger.ReleaseRecord | None, str]:
    """(repository, digest, the release it came from if known, how it was chosen)."""
    if target.kind == "previous":
        assert client is not None
        service = ledger.only_service(client, name, "roll back")
        records = ledger.succeeded_releases(client, name=service)
        if not records:
            raise ReleaseError(
                f"nothing to roll back: the ledger at {client.tracking_uri} has no promoted "
                f"release of {service} (`bentoship releases list` shows what is recorded)"
            )
        chosen = ledger.choose_previous(records)
        if chosen is None:
            raise ReleaseError(
                f"no earlier promoted release of {service} to roll back to: production is "
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
        if record.status != ledger.PROMOTED:
            raise ReleaseError(
                f"release {record.short_id} has status {record.status}: only a release that "
                "was promoted to production can be rolled back to"
            )
        repository, digest = parse_image_reference(record.image, option="release image")
        return repository, digest, record, f"release {record.short_id} (--to)"
    if target.kind == "tag":
        assert target.tag is not None
        in_repo = target.repository
        if in_repo is None and client is not None:
            found_record = ledger.find_succeeded(client, name=name, image_tag=target.tag)
            if found_record is not None:
                repo, digest = parse_image_reference(found_record.image, option="release image")
                return repo, digest, found_record, (
                    f"release {found_record.short_id}, tag {target.tag}"
                )
        if in_repo is None:
            if name is None:
                raise ConfigError(
                    f"--to {target.tag}: no promoted release in the ledger has this tag; give "
                    "the repository too (REPOSITORY:TAG) or --name to look it up in the registry"
                )
            in_repo = f"{settings.oci_registry}/{name}"
        found = oci.find(in_repo, target.tag, docker_config=settings.docker_config)
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
    wait_s: float = lease.DEFAULT_WAIT_S,
) -> RollbackResult:
    """Deploy an earlier image again: no build; the registry must still serve it.

    The image's labels must name the models the ledger recorded for it (or, given by digest
    alone, must be a bentoship image). With MLflow down, an explicit image (`--to` a digest or
    `REPO:TAG`) still renders, deploying directly; the ledger entry is then missing and
    LedgerUnavailable is raised after rendering (the result is attached to it as `.result`).
    `baseline` (REPO@sha256:...) names production's image for that case; with the ledger up it
    must agree with the ledger. With the ledger up, the service's release lease is held from
    the moment the image names the service; another release is waited for up to `wait_s`.
    """
    from pipeline.release import handoff

    target = parse_target(to)
    given = parse_image_reference(baseline, option="--baseline") if baseline else None
    check_submit(submit)
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
    with one_at_a_time(settings, echo), ExitStack() as held:
        client = None if problem else registry.settings_client(settings)
        repository, digest, record, chosen = _resolve_target(target, settings, client, name)
        echo(f"Rolling back to {repository}@{digest}: {chosen}")
        identity = remote_identity(repository, digest, settings.docker_config)
        models = {variant: dict(model) for variant, model in identity.models.items()}
        service = identity.title
        if "control" not in models or not service:
            raise ReleaseError(
                f"{repository}@{digest} is not a bentoship image: its labels name no "
                f"{LABEL_PREFIX}.model.control.* or org.opencontainers.image.title"
            )
        if name is not None and service != name:
            raise ReleaseError(f"{repository}@{digest} is an image of {service}, not of {name}")
        if client is not None:
            held.enter_context(lease.hold(settings, service, echo, wait_s=wait_s, client=client))
        if client is not None and record is None:
            record = ledger.find_succeeded(client, name=service, image=f"{repository}@{digest}")
        if record is not None and not same_models(record.model_versions, models):
            raise ReleaseError(
                f"{repository}@{digest} carries {describe_models(models)} in its labels, but "
                f"release {record.short_id} recorded {describe_models(record.model_versions)}: "
                "the registry does not hold what the ledger says. Nothing was rendered."
            )
        echo(f"  the registry serves it; its labels name {describe_models(models)}")

        current = given
        production = None
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
            baseline_model_versions=production.model_versions if production else None,
        )
        config = rollback_release_config(release_config, ci) if ci.rollback_canary else \
            release_config
        if client is not None:
            done = handoff.hand_over(spec, config, outdir, settings, echo, None, submit,
                                     production=production)
            return RollbackResult(spec, done.files, chosen, done.record,
                                  f"recorded as release {done.record.short_id}", done.submitted,
                                  done.submit_note)
        echo(f"Rendering the {spec.mode} rollback into {outdir}")
        files = render_release(spec, config, outdir)
        submitted, note = submit_pipeline(files, submit)
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
    try:
        return ledger.release_openapi(client, record.release_id)
    except (ReleaseError, MlflowException, OSError):
        return None  # an older release without one: the rollback renders without it
