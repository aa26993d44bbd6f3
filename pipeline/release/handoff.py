"""The canary handoff: build (or reuse) and push, render the release files, record the release.

Order matters: the release configuration is validated before anything is built, the ledger is
written only after the image is pushed and the files are rendered, so a failure at any earlier
point records nothing.

The API guard runs as soon as the service's OpenAPI spec is known, right after the build's
plan (models resolved and verified, configuration derived) and before anything is built: it
compares the spec with the one recorded for the current production release of the service
(`pipeline.release.api_diff.diff_specs`) and refuses a breaking change unless it is allowed
(`bentoship release --allow-breaking-api`, or `[api: allow-breaking]` in a commit message,
which CI passes as `allow_breaking_api=True`). The decision is recorded with the release
(`api_change`: none, compatible, breaking-allowed, or unchecked when production has no spec).

`release` builds, then `hand_over` renders, submits (pipeline/release/submit.py, `--submit`)
and records; a rollback, which builds nothing, calls `hand_over` directly. The release id is
known before anything is rendered (`recording.open_release` makes its run first, deleted again if
the release stops before it is recorded), so the pipeline can report the release's outcome to
the webhook receiver (pipeline/release/outcome.py) when BENTOSHIP_WEBHOOK_SECRET and
`[release] outcome_url` are set; `outcome_note` says which it does.

One release per service at a time: `release` refuses a dirty work tree (unless `allow_dirty`,
recorded), then holds the service's lease (pipeline/release/lease.py) from before production is
read until the release is recorded, waiting up to `wait_s` for another holder. Right before
anything is submitted or recorded, `hand_over` checks that the lease is still ours and that
production is still the release this one was planned against, and records that predecessor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pipeline import identity
from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import BuildRequest, Plan
from pipeline.config import ReleaseConfig
from pipeline.errors import PipelineError, RehearsalFailed, ReleaseError
from pipeline.models import registry
from pipeline.release import lease, ledger, recording
from pipeline.release.api_diff import Change, diff_specs
from pipeline.release.api_export import service_spec
from pipeline.release.files import render_release
from pipeline.release.outcome import OutcomeHook, outcome_hook
from pipeline.release.spec import ReleaseSpec
from pipeline.release.submit import check_submit, submit_pipeline
from pipeline.settings import Settings

# A diff entry that says only that the release differs (every release has a new image tag).
_INFORMATIONAL = ("info.version",)


@dataclass(frozen=True)
class ApiCheck:
    """The API guard's decision: the new spec against production's."""

    decision: str  # one of ledger.API_CHANGES
    production: ledger.ReleaseRecord | None
    changes: tuple[Change, ...] = ()  # informational ones (info.version) left out

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "production_release": self.production.release_id if self.production else None,
            "production_image": self.production.image if self.production else None,
            "changes": [
                {"kind": c.kind, "path": c.path, "message": c.message} for c in self.changes
            ],
        }


@dataclass(frozen=True)
class Rehearsed:
    """What `release --rehearse` learnt: the verdict, the files to record with the release."""

    passed: bool
    summary: str
    report: Path
    files: dict[str, Path]


# Rehearses the rendered release in the folder it is given (pipeline.rehearse.run).
Rehearse = Callable[[Path], Rehearsed]


@dataclass(frozen=True)
class Handoff:
    build: BuildResult | None
    spec: ReleaseSpec
    record: ledger.ReleaseRecord
    files: dict[str, Path]
    submitted: bool
    submit_note: str
    api: ApiCheck | None = None
    outcome_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.record.release_id,
            "release": self.record.to_dict(),
            "api": self.api.as_dict() if self.api else None,
            "image": self.spec.image,
            "baseline": self.spec.baseline_image,
            "mode": self.spec.mode,
            "files": {k: str(v) for k, v in self.files.items()},
            "submitted": self.submitted,
            "submit_note": self.submit_note,
            "outcome_note": self.outcome_note,
            "build": self.build.as_dict() if self.build else None,
        }


def check_api(
    client: Any,
    name: str,
    spec: dict[str, Any],
    *,
    allow_breaking: bool,
    echo: Callable[[str], None],
    not_done: str = "Nothing was built, pushed or recorded.",
) -> ApiCheck:
    """Compare `spec` with the spec of the production release of `name`; refuse a break.

    Raises ReleaseError listing the breaking changes (and how to allow them) unless
    `allow_breaking`; `not_done` tells the reader what the refusal left undone.
    """
    production = ledger.latest_successful(client, name=name)
    if production is None:
        echo(f"API check: no production release of {name} yet, nothing to compare with")
        return ApiCheck("none", None)
    recorded = ledger.release_openapi(client, production.release_id)
    if recorded is None:
        echo(f"API check: production release {production.short_id} recorded no OpenAPI spec; "
             "not compared")
        return ApiCheck("unchecked", production)
    changes = tuple(c for c in diff_specs(recorded, spec) if c.path not in _INFORMATIONAL)
    breaking = [c for c in changes if c.kind == "breaking"]
    against = f"production release {production.short_id} ({production.image})"
    if not breaking:
        decision = "compatible" if changes else "none"
        echo(f"API check against {against}: "
             + (f"{len(changes)} compatible change(s)" if changes else "no changes"))
        return ApiCheck(decision, production, changes)
    listed = "\n".join(f"  - {c.path}: {c.message}" for c in breaking[:20])
    more = f"\n  ... and {len(breaking) - 20} more" if len(breaking) > 20 else ""
    if not allow_breaking:
        raise ReleaseError(
            f"refusing to release {name}: its API has {len(breaking)} breaking change(s) for "
            f"callers of {against}:\n{listed}{more}\n{not_done} If the callers are ready "
            "for it, allow the break explicitly: `bentoship release ... --allow-breaking-api`, "
            "or `[api: allow-breaking]` in the commit message for CI. The decision is recorded "
            "with the release."
        )
    echo(f"API check against {against}: {len(breaking)} breaking change(s), allowed:\n"
         f"{listed}{more}")
    return ApiCheck("breaking-allowed", production, changes)


def release(
    req: BuildRequest,
    settings: Settings,
    config: ReleaseConfig,
    outdir: Path,
    echo: Callable[[str], None],
    *,
    kind: Literal["model", "hotfix"] = "model",
    submit: bool = False,
    allow_breaking_api: bool = False,
    allow_dirty: bool = False,
    wait_s: float = lease.DEFAULT_WAIT_S,
    root: Path | None = None,
    rehearse: Rehearse | None = None,
) -> Handoff:
    """Build and push `req`, render the canary release against production, record it.

    A breaking change of the API against production's is refused before anything is built
    (see the module docstring) unless `allow_breaking_api`; so is a dirty work tree at `root`
    (default: the checkout the image is built from) unless `allow_dirty`. Waits up to `wait_s`
    seconds for another release of the same service (LeaseHeld after that). With `rehearse`,
    a canary release is rehearsed once rendered (`bentoship rehearse`); one that does not
    pass is recorded as rehearsal_failed, not submitted, and RehearsalFailed raised.
    """
    from pipeline.build import bento
    from pipeline.build.builder import PROJECT_ROOT

    check_submit(submit)
    identity.check_clean(root or PROJECT_ROOT, allow_dirty=allow_dirty)
    service = req.name or bento.service_name(registry.parse_ref(req.control).name)
    with lease.hold(settings, service, echo, wait_s=wait_s):
        return _release(req, settings, config, outdir, echo, kind=kind, submit=submit,
                        allow_breaking_api=allow_breaking_api, allow_dirty=allow_dirty,
                        rehearse=rehearse)


def _release(
    req: BuildRequest,
    settings: Settings,
    config: ReleaseConfig,
    outdir: Path,
    echo: Callable[[str], None],
    *,
    kind: Literal["model", "hotfix"],
    submit: bool,
    allow_breaking_api: bool,
    allow_dirty: bool,
    rehearse: Rehearse | None = None,
) -> Handoff:
    from pipeline.build.engine import connect

    mlflow_client = registry.settings_client(settings)
    checked: list[tuple[bytes, ApiCheck]] = []

    def guard(plan: Plan) -> None:
        api = check_api(mlflow_client, plan.resolved.name, plan.openapi,
                        allow_breaking=allow_breaking_api, echo=echo)
        checked.append((identity.canonical_json(plan.openapi), api))

    result = build(replace(req, push=True), settings, echo, check=guard)
    assert result.digest is not None and result.pinned is not None  # push=True sets it or raises
    with _pushed_unrecorded(result.pinned, mlflow_client.tracking_uri):
        name = result.name
        production = ledger.latest_successful(mlflow_client, name=name)
        baseline = production.image.partition("@")[2] if production else None
        if baseline == result.digest:
            echo(f"Production already runs {result.pinned}: rendering a direct deploy, "
                 "no canary")
            baseline = None
        openapi = service_spec(connect(), result.reference)
        planned, api = checked[-1]
        if identity.canonical_json(openapi) != planned:  # the image serves another spec
            api = check_api(mlflow_client, name, openapi, allow_breaking=allow_breaking_api,
                            echo=echo, not_done=f"{result.pinned} was pushed but nothing was "
                            "rendered or recorded.")
        spec = ReleaseSpec(
            name=name,
            repository=result.repository,
            digest=result.digest,
            baseline_digest=baseline,
            model_versions=result.models,
            code_version=identity.ImageIdentity.from_labels(result.labels).code_version,
            image_tag=result.tag,
            kind=kind,
            openapi=openapi,
            baseline_model_versions=production.model_versions if production else None,
        )
        return hand_over(spec, config, outdir, settings, echo, result, submit, api=api,
                         production=production, allow_dirty=allow_dirty, rehearse=rehearse)


@contextmanager
def _pushed_unrecorded(pinned: str, tracking_uri: str) -> Iterator[None]:
    """A failure after the push says that the image is in the registry and how to finish.

    A release stopped here (MLflow gone, the lease lost, production moved) recorded nothing;
    running it again reuses the pushed image (same labels), so only the recording is redone.
    """
    from mlflow.exceptions import MlflowException

    finish = (f"The image was pushed as {pinned}, but nothing was recorded in the ledger. To "
              "finish, run the same release again once MLflow answers: it reuses that image "
              "instead of building it, and deletes what this one left unrecorded.")
    try:
        yield
    except PipelineError as exc:
        if exc.args and isinstance(exc.args[0], str) and pinned not in exc.args[0]:
            exc.args = (f"{exc.args[0]}\n{finish}", *exc.args[1:])
        raise
    except MlflowException as exc:
        raise ReleaseError(
            f"{pinned} was pushed, but nothing was recorded: MLflow at {tracking_uri} stopped "
            f"answering.\n{finish}\nMLflow's error: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def hand_over(
    spec: ReleaseSpec,
    config: ReleaseConfig,
    outdir: Path,
    settings: Settings,
    echo: Callable[[str], None],
    result: BuildResult | None,
    submit: bool,
    *,
    production: ledger.ReleaseRecord | None,
    api: ApiCheck | None = None,
    allow_dirty: bool | None = None,
    wait_s: float = lease.DEFAULT_WAIT_S,
    rehearse: Rehearse | None = None,
) -> Handoff:
    """Render `spec` into `outdir`, submit it when asked, record it in the ledger.

    The last steps of every release: `release` after its build, a rollback (which builds
    nothing) directly. `result` is the build, None when nothing was built. `production` is the
    release this one replaces, as read when it was planned: if the ledger's production is
    another one by now, or the service's lease is no longer ours, ReleaseConflict and nothing
    is submitted or recorded. `allow_dirty` is recorded when given.
    """
    client = registry.settings_client(settings)
    with lease.hold(settings, spec.name, echo, wait_s=wait_s, client=client) as held:
        # Holding the lease, no other release of the service is recording: a run without a
        # status was left by one that was killed or lost MLflow before it recorded.
        left = recording.discard_unrecorded(client, spec.name)
        if left:
            echo(f"Deleted {len(left)} unrecorded ledger run(s) of {spec.name} left by an "
                 f"interrupted release: {', '.join(r[:12] for r in left)}")
        release_id = recording.open_release(client, spec, artifact_root=settings.embedded_artifact_root)
        try:
            hook, reporting, outcome_note = outcome_reporting(settings, config, release_id)
            echo(f"Rendering the {spec.mode} release {release_id[:12]} into {outdir}")
            files = render_release(spec, config, outdir, hook)
            rehearsal = None
            if rehearse is not None and spec.mode == "canary":
                rehearsal = rehearse(outdir)
                files = {**files, **rehearsal.files}
            elif rehearse is not None:
                echo("Nothing to rehearse: this release deploys directly, without a canary")
            held.verify()
            ledger.check_production(client, spec.name, production)
            if rehearsal is not None and not rehearsal.passed:
                submitted, note = False, "not submitted: its canary failed the rehearsal"
            else:
                submitted, note = submit_pipeline(files, submit)
            held.verify()
            ledger.check_production(client, spec.name, production)
            echo(f"Recording release {release_id[:12]} in the ledger at {client.tracking_uri}")
            record = recording.record_release(
                client, spec, files,
                artifact_root=settings.embedded_artifact_root,
                api_change=api.decision if api else None,
                api_diff=api.as_dict() if api and api.changes else None,
                predecessor=production.release_id if production else None,
                allow_dirty=allow_dirty,
                trusted_types=(identity.ImageIdentity.from_labels(result.labels).trusted_types
                               if result is not None else ()),
                run_id=release_id,
                outcome_reporting=reporting,
                status=(ledger.REHEARSAL_FAILED if rehearsal is not None and not rehearsal.passed
                        else ledger.HANDED_OFF),
            )
        except BaseException:
            recording.discard_release(client, release_id)
            raise
    if rehearsal is not None and not rehearsal.passed:
        raise RehearsalFailed(
            f"the canary of {spec.image} failed its rehearsal ({rehearsal.summary}); report: "
            f"{rehearsal.report}. Recorded as {record.status} (release {record.short_id}); "
            "nothing was handed off or submitted"
        )
    api_note = f", API change: {api.decision}" if api else ""
    echo(f"Recorded release {record.short_id} ({spec.kind}{api_note}) in the ledger as "
         f"{record.status}; {outcome_note}")
    return Handoff(result, spec, record, files, submitted, note, api, outcome_note)


def outcome_reporting(
    settings: Settings, config: ReleaseConfig, release_id: str
) -> tuple[OutcomeHook | None, str, str]:
    """(the hook the pipeline reports with, the ledger's tag for it, a note for humans)."""
    mark = f"mark it: `bentoship releases mark {release_id[:12]} --status promoted|rolled-back|failed`"
    if not settings.webhook_secret:
        return None, "none: BENTOSHIP_WEBHOOK_SECRET was not set at render time", (
            "the pipeline reports no outcome (BENTOSHIP_WEBHOOK_SECRET, the webhook receiver's "
            f"secret, was not set when it was rendered); {mark}")
    if config.outcome_url is None:
        return None, "none: [release] outcome_url is not set", (
            "the pipeline reports no outcome ([release] outcome_url, where Spinnaker reaches "
            f"`bentoship ci webhook`'s /outcome, is not set); {mark}")
    return (outcome_hook(settings.webhook_secret, config.outcome_url, release_id),
            f"webhook {config.outcome_url}",
            f"the pipeline reports its outcome to {config.outcome_url}")

