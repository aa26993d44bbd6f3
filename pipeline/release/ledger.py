"""The release ledger: one MLflow run per release in the experiment `bentoship-releases`.

A release is recorded only after its image was pushed and its files rendered
(`recording.py`: the run opened, filled in, or discarded); the run holds
what was released (tags and params: kind, model versions, code version, image tag, image and
baseline by digest, the API guard's decision `api_change`) and, as artifacts, the rendered
release files, the OpenAPI spec (`openapi.json`) and its diff against production
(`openapi-diff.json`), the release it replaced (`predecessor`: production's release id when it
was planned, `none` for a first release) and whether a dirty work tree was allowed
(`allow_dirty`). The release id is the run id; any unique prefix of it works too.

A release's status says how far it got. It is recorded `handed-off` (its files written, and
submitted with `--submit`), or `rendered` / `rehearsal_failed` (not handed off); the pipeline
(or someone, `bentoship releases mark`) then reports what became of it
(`marking.mark_release`, marking.py):

    handed-off ──▶ promoted ──▶ rolled-back      (a later rollback replaced it)
         ├───────▶ rolled-back                   (it reached production and was undone)
         └───────▶ failed                        (it never reached production)

Every other change is refused (BadTransition); marking a release with the status it has
changes nothing (the outcome webhook may be delivered twice). Each change is kept in the tag
`bentoship.outcome_history` (a JSON list of from, to, at, by, reason); `bentoship.outcome_at`,
`outcome_by` and `outcome_reason` hold the latest. Runs recorded before outcomes existed carry
the status `succeeded`, read as `handed-off` (`_LEGACY_STATUSES`, the one place).

`check_production` is the check at record time: production must still be the release this one
was planned against, so the ledger never records two successors of one release (the release
lease, pipeline/release/lease.py, keeps two releases of a service from running at once).

The flows (pipeline/flows/) ask it every question about earlier releases: production is the
newest **promoted** release of the service (`latest_successful`; "successful" means promoted
throughout); the release a rollback goes back to is `choose_previous` over the promoted ones
(`succeeded_releases`, `previous_successful`); `only_service` and `find_succeeded` find the
service and the release of an image or tag. While a service has no promoted release but one
still awaits its outcome, production is unknown: `latest_successful` raises ReleaseError
rather than let the next release deploy straight to production as if it were the first.

Works against any tracking URI: the embedded SQLite store or an `mlflow server`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import (
    ConfigError,
    ReleaseConflict,
    ReleaseError,
    ReleaseNotFound,
    map_exceptions,
)
from pipeline.release.spec import KINDS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

EXPERIMENT = "bentoship-releases"
HANDED_OFF = "handed-off"
PROMOTED = "promoted"
REHEARSAL_FAILED = "rehearsal_failed"  # `release --rehearse`: its canary failed here
STATUSES = (HANDED_OFF, PROMOTED, "rolled-back", "failed", "rendered", REHEARSAL_FAILED)
# What a release's pipeline reports when it ends (pipeline/release/outcome.py).
OUTCOMES = (PROMOTED, "rolled-back", "failed")
TRANSITIONS: dict[str, tuple[str, ...]] = {HANDED_OFF: OUTCOMES, PROMOTED: ("rolled-back",)}
_LEGACY_STATUSES = {"succeeded": HANDED_OFF}  # before outcomes, "succeeded" meant handed off
# What the API guard decided (pipeline/release/handoff.py): no change a caller can notice (or no
# production release to compare with), compatible changes only, a breaking change allowed
# explicitly, or production recorded no spec to compare with.
API_CHANGES = ("none", "compatible", "breaking-allowed", "unchecked")
OPENAPI_ARTIFACT = "openapi.json"
TAG = "bentoship."  # the prefix of every tag a release run carries
_ORDER = ["attributes.start_time DESC"]


@dataclass(frozen=True)
class ReleaseRecord:
    """One recorded release, as read back from its MLflow run."""

    release_id: str
    created: datetime
    name: str
    kind: str
    status: str
    mode: str
    image: str
    image_tag: str
    baseline: str | None
    code_version: str
    model_versions: dict[str, dict[str, str]]
    artifact_uri: str
    api_change: str = ""  # one of API_CHANGES; empty when not checked (rollbacks, older records)
    predecessor: str = ""  # the production release it replaced; "none" first; "" older records
    allow_dirty: str = ""  # "true" / "false" when a release from a work tree recorded it
    trusted_types: str = ""  # skops types its build trusted by name, comma-separated
    outcome_reporting: str = ""  # "webhook <url>", or why the pipeline reports no outcome
    outcome_at: str = ""  # when its status last changed after it was recorded (ISO 8601)
    outcome_by: str = ""  # who or what changed it (a user@host, the pipeline's webhook)
    outcome_reason: str = ""

    @property
    def short_id(self) -> str:
        return self.release_id[:12]

    @property
    def models(self) -> str:
        return ", ".join(
            f"{v}={m.get('name', '?')}/{m.get('version', '?')}"
            for v, m in sorted(self.model_versions.items())
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created"] = self.created.isoformat()
        return data


def check_production(client: MlflowClient, name: str, expected: ReleaseRecord | None) -> None:
    """ReleaseConflict unless production of `name` is still `expected` (None: no release yet)."""
    with map_exceptions({"mlflow": (
        ReleaseError, lambda exc: f"cannot read production of {name} from {client.tracking_uri}: "
        f"{exc}. Nothing was recorded."
    )}):
        now = latest_successful(client, name=name)
    if (now.release_id if now else None) == (expected.release_id if expected else None):
        return
    was = f"release {expected.short_id} ({expected.image})" if expected else "no release yet"
    raise ReleaseConflict(
        f"production of {name} changed while this release ran: it was {was}, the ledger now "
        f"says release {now.short_id if now else '?'} ({now.image if now else 'none'}), "
        "recorded by another release. Nothing was submitted or recorded for this one; run it "
        "again to release against the new production."
    )


def list_releases(
    client: MlflowClient, *, limit: int = 20, name: str | None = None
) -> list[ReleaseRecord]:
    """The newest `limit` recorded releases, newest first; optionally of one service only.

    Runs without a status (a release still recording, or one that stopped before it recorded)
    are not releases and are left out.
    """
    if limit < 1:
        raise ReleaseError(f"limit must be at least 1, got {limit}")
    experiment_id = find_experiment(client)
    if experiment_id is None:
        return []
    filter_string = f"tags.`{TAG}status` != ''"
    if name:
        filter_string += f" and tags.`{TAG}name` = '{name}'"
    page = client.search_runs(
        [experiment_id], filter_string=filter_string, order_by=_ORDER, max_results=limit
    )
    return [record_of(run) for run in page]


def get_release(client: MlflowClient, release_id: str) -> ReleaseRecord:
    """The release with this run id, or with the one run id starting with this prefix."""
    wanted = release_id.strip().lower()
    experiment_id = find_experiment(client)
    if not wanted or experiment_id is None:
        raise ReleaseNotFound(
            f"no release {release_id!r}: no releases are recorded in {client.tracking_uri}"
        )
    runs = list(search_release_runs(client, experiment_id))
    if not runs:
        raise ReleaseNotFound(
            f"no release {release_id!r}: no releases are recorded in {client.tracking_uri}"
        )
    matches = [run for run in runs if run.info.run_id.startswith(wanted)]
    if not matches:
        raise ReleaseNotFound(
            f"no release with id {release_id!r} in experiment {EXPERIMENT!r} at "
            f"{client.tracking_uri}; `bentoship releases list` shows the recorded ids"
        )
    if len(matches) > 1:
        ids = ", ".join(run.info.run_id for run in matches[:5])
        raise ReleaseError(
            f"release id prefix {release_id!r} is ambiguous: it matches {ids}; give more of the id"
        )
    return record_of(matches[0])


def release_files(client: MlflowClient, release_id: str) -> list[str]:
    """Paths of every artifact recorded with a release (its rendered files, the OpenAPI spec)."""
    pending: list[str] = [""]
    files: list[str] = []
    while pending:
        for info in client.list_artifacts(release_id, pending.pop() or None):
            (pending if info.is_dir else files).append(info.path)
    return sorted(files)


def release_openapi(client: MlflowClient, release_id: str) -> dict[str, Any] | None:
    """The OpenAPI spec recorded with a release (`openapi.json`), or None when it has none."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    if OPENAPI_ARTIFACT not in {info.path for info in client.list_artifacts(release_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="bentoship-openapi-") as tmp:
        try:
            path = client.download_artifacts(release_id, OPENAPI_ARTIFACT, tmp)
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (MlflowException, OSError, ValueError) as exc:
            raise ReleaseError(
                f"cannot read {OPENAPI_ARTIFACT} of release {release_id} from "
                f"{client.tracking_uri}: {exc}"
            ) from exc
    if not isinstance(spec, dict):
        raise ReleaseError(f"{OPENAPI_ARTIFACT} of release {release_id} is not a JSON object")
    return spec


def latest_successful(
    client: MlflowClient, *, kinds: Sequence[str] = KINDS, name: str | None = None
) -> ReleaseRecord | None:
    """Production: the newest promoted release of one of `kinds` (of `name` when given).

    None when the service has no release yet (or none of `kinds`). ReleaseError when it has
    no promoted release but one that awaits its outcome: production is unknown then, and the
    next release must not go straight to production as if it were the first.
    """
    found = next(_successful(client, kinds=kinds, name=name), None)
    if found is None and name is not None:
        waiting = _pending(client, name)
        if waiting is not None:
            raise ReleaseError(
                f"production of {name} is unknown: no release of it is promoted, and release "
                f"{waiting.short_id} ({waiting.image}) was handed off on "
                f"{waiting.created:%Y-%m-%d %H:%M} UTC without its outcome being reported. Once "
                f"its pipeline has run, say what became of it: `bentoship releases mark "
                f"{waiting.short_id} --status promoted` (or rolled-back, failed)."
            )
    return found


def _pending(client: MlflowClient, name: str) -> ReleaseRecord | None:
    """The newest release of `name` still handed off, awaiting its outcome."""
    experiment_id = find_experiment(client)
    if experiment_id is None:
        return None
    filter_string = f"tags.`{TAG}name` = '{name}'"
    found = map(record_of, search_release_runs(client, experiment_id, filter_string))
    return next((r for r in found if r.status == HANDED_OFF), None)


def succeeded_releases(client: MlflowClient, *, name: str | None = None) -> list[ReleaseRecord]:
    """Every promoted release (of one service when named), newest first."""
    return list(_successful(client, kinds=KINDS, name=name))


def find_succeeded(
    client: MlflowClient,
    *,
    name: str | None = None,
    image: str | None = None,
    image_tag: str | None = None,
) -> ReleaseRecord | None:
    """The newest promoted release (of one service when named) of this image and/or tag."""
    return next(
        (
            record
            for record in _successful(client, kinds=KINDS, name=name)
            if (image is None or record.image == image)
            and (image_tag is None or record.image_tag == image_tag)
        ),
        None,
    )


def only_service(client: MlflowClient, name: str | None, what: str) -> str:
    """`name`, or the one service the ledger has promoted releases of.

    `what` is the action asked for ("roll back", "hotfix"), for the messages: ReleaseError when
    the ledger has no promoted release, ConfigError when it has releases of several services.
    """
    if name is not None:
        return name
    names = sorted({r.name for r in _successful(client, kinds=KINDS, name=None)})
    if not names:
        raise ReleaseError(
            f"nothing to {what}: the ledger at {client.tracking_uri} has no promoted release "
            "(`bentoship releases list` shows what is recorded; `bentoship releases mark ID "
            "--status promoted` records a release production runs)"
        )
    if len(names) > 1:
        raise ConfigError(
            f"the ledger has releases of several services ({', '.join(names)}): pass --name "
            f"to say which one to {what}"
        )
    return names[0]


def choose_previous(records: Sequence[ReleaseRecord]) -> ReleaseRecord | None:
    """The release to go back to; `records` are one service's promoted releases, newest first.

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


def previous_successful(
    client: MlflowClient, release_id: str | None = None, *, name: str | None = None
) -> ReleaseRecord | None:
    """The release a rollback from `release_id` (default: production) goes back to.

    `choose_previous` over that release followed by the promoted releases of its service that
    are older than it; production is the newest promoted release (of `name` when given).
    """
    reference = (
        get_release(client, release_id) if release_id else latest_successful(client, name=name)
    )
    if reference is None:
        return None
    older: list[ReleaseRecord] = []
    seen = False  # runs come newest first: everything after the reference is older
    for record in _successful(client, kinds=KINDS, name=reference.name):
        if record.release_id == reference.release_id:
            seen = True
        elif seen or record.created < reference.created:
            older.append(record)
    return choose_previous([reference, *older])


def _successful(
    client: MlflowClient, *, kinds: Sequence[str], name: str | None
) -> Iterator[ReleaseRecord]:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ReleaseError(f"kinds: {sorted(unknown)} are not among {', '.join(KINDS)}")
    experiment_id = find_experiment(client)
    if experiment_id is None:
        return
    filter_string = f"tags.`{TAG}status` = '{PROMOTED}'"
    if name:
        filter_string += f" and tags.`{TAG}name` = '{name}'"
    for run in search_release_runs(client, experiment_id, filter_string):
        record = record_of(run)
        if record.kind in kinds:
            yield record


def search_release_runs(
    client: MlflowClient, experiment_id: str, filter_string: str = ""
) -> Iterator[Run]:
    """Every run of the ledger's experiment matching `filter_string`, newest first."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            order_by=_ORDER,
            max_results=500,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def find_experiment(
    client: MlflowClient, *, create: bool = False, artifact_root: Path | None = None
) -> str | None:
    """The ledger's experiment id (made with `create`; None when there is none yet)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ReleaseError(
            f"the experiment {EXPERIMENT!r} at {client.tracking_uri} is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`)"
        )
    if experiment is not None:
        return str(experiment.experiment_id)
    if not create:
        return None
    location = (artifact_root / EXPERIMENT).as_uri() if artifact_root else None
    return str(client.create_experiment(EXPERIMENT, artifact_location=location))


def record_of(run: Run) -> ReleaseRecord:
    """A release run, as a record (`recording` while it has no status yet)."""
    tags = run.data.tags
    params = run.data.params
    models: dict[str, dict[str, str]] = {}
    for key, value in params.items():
        if key.startswith("model."):
            _, variant, field = key.split(".", 2)
            models.setdefault(variant, {})[field] = "" if value == "none" else value
    return ReleaseRecord(
        release_id=run.info.run_id,
        created=datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
        name=tags.get(f"{TAG}name", ""),
        kind=tags.get(f"{TAG}kind", ""),
        status=_status(tags.get(f"{TAG}status", "")) or (
            "recording" if run.info.status == "RUNNING" else ""),
        mode=tags.get(f"{TAG}mode", ""),
        image=tags.get(f"{TAG}image", ""),
        image_tag=tags.get(f"{TAG}image.tag", ""),
        baseline=tags.get(f"{TAG}baseline") or None,
        code_version=tags.get(f"{TAG}code_version", ""),
        model_versions=models,
        artifact_uri=run.info.artifact_uri or "",
        api_change=tags.get(f"{TAG}api_change", ""),
        predecessor=tags.get(f"{TAG}predecessor", ""),
        allow_dirty=tags.get(f"{TAG}allow_dirty", ""),
        trusted_types=tags.get(f"{TAG}trusted_types", ""),
        outcome_reporting=tags.get(f"{TAG}outcome_reporting", ""),
        outcome_at=tags.get(f"{TAG}outcome_at", ""),
        outcome_by=tags.get(f"{TAG}outcome_by", ""),
        outcome_reason=tags.get(f"{TAG}outcome_reason", ""),
    )


def _status(recorded: str) -> str:
    return _LEGACY_STATUSES.get(recorded, recorded)
