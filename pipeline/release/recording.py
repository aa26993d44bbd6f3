"""Recording a release in the ledger (`ledger.py`): its run opened, filled in, or discarded.

A release is recorded only after its image was pushed and its files rendered
(`record_release`). Its run is made first (`open_release`: the release id is the run id, which
the rendered pipeline carries) and has no status until the release is recorded; the status
tag is the commit point, written last. A release that stops before it deletes its run
(`discard_release`), and if that fails too the next release of the service does
(`discard_unrecorded`, under the service's lease). What a record holds, and every question
about earlier releases, are `ledger.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ReleaseError, map_exceptions
from pipeline.release.ledger import (
    API_CHANGES,
    HANDED_OFF,
    OPENAPI_ARTIFACT,
    STATUSES,
    TAG,
    ReleaseRecord,
    find_experiment,
    record_of,
    search_release_runs,
)
from pipeline.release.spec import ReleaseSpec

if TYPE_CHECKING:
    from mlflow import MlflowClient


def record_release(
    client: MlflowClient,
    spec: ReleaseSpec,
    rendered_files: Mapping[str, Path],
    status: str = HANDED_OFF,
    *,
    artifact_root: Path | None = None,
    api_change: str | None = None,
    api_diff: Mapping[str, Any] | None = None,
    predecessor: str | None = None,
    allow_dirty: bool | None = None,
    trusted_types: Sequence[str] = (),
    run_id: str | None = None,
    outcome_reporting: str = "",
) -> ReleaseRecord:
    """Record a pushed and rendered release as one finished run; return it as read back.

    `rendered_files` is what `render_release` returned (relative path -> file). With the
    embedded store pass `artifact_root` so artifacts land in the state folder, not `./mlruns`.
    `api_change` (one of API_CHANGES) is the API guard's decision, recorded as the tag
    `bentoship.api_change` and the param `api_change`; `api_diff` is logged as
    `openapi-diff.json`. `predecessor` is the release id of the production this release
    replaces (None: a first release); `allow_dirty`, when given, whether the release was allowed
    to come from a dirty work tree. `run_id` is the run `open_release` made for it (its id is
    in the rendered pipeline), None to make one now. `outcome_reporting` says how its outcome
    will be known (the tag `bentoship.outcome_reporting`). If logging fails half-way the run
    is deleted again and ReleaseError raised.
    """
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    if status not in STATUSES:
        raise ReleaseError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if api_change is not None and api_change not in API_CHANGES:
        raise ReleaseError(f"api_change: {api_change!r} is not one of {', '.join(API_CHANGES)}")
    missing = [str(p) for p in rendered_files.values() if not Path(p).is_file()]
    if missing:
        raise ReleaseError(f"cannot record the release: rendered files are missing: {missing}")

    tags = {
        f"{TAG}name": spec.name,
        f"{TAG}kind": spec.kind,
        f"{TAG}status": status,
        f"{TAG}mode": spec.mode,
        f"{TAG}image": spec.image,
        f"{TAG}image.tag": spec.image_tag,
        f"{TAG}image.digest": spec.digest,
        f"{TAG}baseline": spec.baseline_image or "",
        f"{TAG}code_version": spec.code_version,
        **{
            f"{TAG}model.{variant}": f"{m['name']}/{m['version']}"
            for variant, m in spec.model_versions.items()
        },
        **({f"{TAG}api_change": api_change} if api_change else {}),
        f"{TAG}predecessor": predecessor or "none",
        **({f"{TAG}allow_dirty": str(allow_dirty).lower()} if allow_dirty is not None else {}),
        **({f"{TAG}trusted_types": ",".join(trusted_types)} if trusted_types else {}),
        **({f"{TAG}outcome_reporting": outcome_reporting} if outcome_reporting else {}),
    }
    params = {
        "name": spec.name,
        "kind": spec.kind,
        "image": spec.image,
        "image_tag": spec.image_tag,
        "baseline": spec.baseline_image or "none",
        "code_version": spec.code_version,
        "skip_canary": str(spec.skip_canary).lower(),
        **{
            f"model.{variant}.{key}": str(value) or "none"
            for variant, m in spec.model_versions.items()
            for key, value in m.items()
        },
        **({"api_change": api_change} if api_change else {}),
        "predecessor": predecessor or "none",
        **({"allow_dirty": str(allow_dirty).lower()} if allow_dirty is not None else {}),
        **({"trusted_types": ",".join(trusted_types)} if trusted_types else {}),
    }
    if run_id is None:
        run_id = open_release(client, spec, artifact_root=artifact_root)
    # The status tag is the commit point: written last, in a call of its own, after everything
    # else. A release killed before it (or an MLflow that died) leaves a run without a status,
    # which no reader counts (`list_releases`, production, `_pending`) and the next release of
    # the service deletes (`discard_unrecorded`).
    status_tag = tags.pop(f"{TAG}status")
    try:
        client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        for rel, path in sorted(rendered_files.items()):
            if rel == "openapi.json" and spec.openapi is not None:
                continue  # logged once, at the top, below
            folder = str(Path("release", rel).parent)
            client.log_artifact(run_id, str(path), artifact_path=folder)
        if spec.openapi is not None:
            client.log_dict(run_id, dict(spec.openapi), OPENAPI_ARTIFACT)
        if api_diff is not None:
            client.log_dict(run_id, dict(api_diff), "openapi-diff.json")
        client.log_batch(run_id, tags=[RunTag(f"{TAG}status", status_tag)])
    except (MlflowException, OSError) as exc:
        discard_release(client, run_id)
        raise ReleaseError(
            f"recording release {run_id} in {client.tracking_uri} failed half-way: {exc}. "
            "Nothing was recorded (a run without a status is not a release; the next release "
            "of the service deletes it)"
        ) from exc
    try:
        client.set_terminated(run_id, status="FAILED" if "failed" in status else "FINISHED")
    except (MlflowException, OSError):
        pass  # recorded all the same: the status tag says so; the run's state is cosmetic
    return record_of(client.get_run(run_id))


def open_release(
    client: MlflowClient, spec: ReleaseSpec, *, artifact_root: Path | None = None
) -> str:
    """Make the run a release will be recorded in and return its id, the release id.

    The run has no status until `record_release(..., run_id=...)` fills it in (`get_release`
    shows it as `recording`; it is never listed, never production); `discard_release` deletes
    it when the release stops before that, and if that fails too (MLflow gone, the process
    killed) the next release of the service does (`discard_unrecorded`).
    """
    with map_exceptions({"mlflow": (
        ReleaseError, lambda exc: f"cannot record the release in {client.tracking_uri}: {exc}"
    )}):
        experiment_id = find_experiment(client, create=True, artifact_root=artifact_root)
        assert experiment_id is not None
        run = client.create_run(experiment_id, run_name=f"{spec.name}:{spec.image_tag}",
                                tags={f"{TAG}name": spec.name})
    return str(run.info.run_id)


def discard_release(client: MlflowClient, run_id: str) -> None:
    """Delete a run `open_release` made for a release that was not recorded after all."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_run(run_id)
    except (MlflowException, OSError):
        pass  # the error that stopped the release is the one to report; the run has no status


def discard_unrecorded(client: MlflowClient, name: str) -> list[str]:
    """Delete the runs of `name` that never got a status; return their ids.

    Only a release holding the service's lease calls this: no other release of the service
    is recording then, so such a run was left by one that was killed, or whose MLflow stopped
    answering, before it recorded (a run without a status is not a release).
    """
    with map_exceptions({"mlflow": (
        ReleaseError, lambda exc: f"cannot read the ledger at {client.tracking_uri}: {exc}"
    )}):
        experiment_id = find_experiment(client)
        if experiment_id is None:
            return []
        left = [run.info.run_id for run in
                search_release_runs(client, experiment_id, f"tags.`{TAG}name` = '{name}'")
                if not run.data.tags.get(f"{TAG}status")]
        for run_id in left:
            client.delete_run(run_id)
    return left
