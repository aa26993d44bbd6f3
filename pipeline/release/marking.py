"""What became of a recorded release: its status after the hand-off, and the history of it.

A release is recorded `handed-off` (ledger.py); its pipeline's outcome webhook, or `bentoship
releases mark`, moves it on along `ledger.TRANSITIONS` (promoted, rolled-back, failed). Each
change keeps who made it, when and why in the run's `bentoship.outcome_history` tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipeline.errors import (
    BadTransition,
    ConfigError,
    ReleaseError,
    ReleaseNotFound,
    map_exceptions,
)
from pipeline.release.ledger import PROMOTED, STATUSES, TAG, TRANSITIONS, ReleaseRecord, get_release

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["Marked", "mark_release", "outcome_history"]


@dataclass(frozen=True)
class Marked:
    """What `mark_release` did: the release as read back, and whether its status changed."""

    record: ReleaseRecord
    changed: bool
    previous: str  # the status it had
    also: tuple[ReleaseRecord, ...] = ()  # releases marked rolled-back because of this one


def mark_release(
    client: MlflowClient,
    release_id: str,
    status: str,
    *,
    by: str,
    reason: str = "",
    now: datetime | None = None,
) -> Marked:
    """Record what became of a release: `status` must follow its current one (TRANSITIONS).

    `release_id` is a run id or unique prefix (ReleaseNotFound otherwise). The same status again
    changes nothing (`changed` False): outcomes may be reported twice. Any other change not in
    TRANSITIONS is BadTransition. `by` says who or what marked it, `reason` why; both are kept
    with the time in the release's outcome history. A promoted rollback marks the release it
    replaced (its predecessor, when that one is promoted) rolled-back.
    """
    if status not in STATUSES:
        raise ConfigError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    with map_exceptions({"mlflow": (
        ReleaseError, lambda exc: f"cannot mark release {release_id} in {client.tracking_uri}: "
        f"{exc}"
    )}):
        record = get_release(client, release_id)
        if record.status == status:
            return Marked(record, False, record.status)
        allowed = TRANSITIONS.get(record.status, ())
        if status not in allowed:
            raise BadTransition(
                f"release {record.short_id} is {record.status or 'without a status'}; it cannot "
                f"be marked {status}: "
                + (f"from {record.status} only {' or '.join(allowed)}" if allowed else
                   f"{record.status or 'such a release'} is final")
                + ". Allowed: handed-off -> promoted, rolled-back or failed; promoted -> "
                "rolled-back."
            )
        _set_status(client, record, status, by=by, reason=reason, now=now)
        also: list[ReleaseRecord] = []
        if status == PROMOTED and record.kind == "rollback" and record.predecessor not in ("",
                                                                                           "none"):
            try:
                replaced = get_release(client, record.predecessor)
            except ReleaseNotFound:
                replaced = None
            if replaced is not None and replaced.status == PROMOTED:
                _set_status(client, replaced, "rolled-back", by=by, now=now,
                            reason=f"rollback release {record.short_id} replaced it in production")
                also.append(get_release(client, replaced.release_id))
        return Marked(get_release(client, record.release_id), True, record.status, tuple(also))


def _set_status(
    client: MlflowClient,
    record: ReleaseRecord,
    status: str,
    *,
    by: str,
    reason: str,
    now: datetime | None,
) -> None:
    from mlflow.entities import RunTag

    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    history = [*_history(client.get_run(record.release_id)), {"from": record.status, "to": status, "at": at, "by": by,
                          "reason": reason}]
    tags = {
        f"{TAG}status": status,
        f"{TAG}outcome_at": at,
        f"{TAG}outcome_by": by,
        f"{TAG}outcome_reason": reason,
        # MLflow limits a tag value to 8,000 characters: keep the newest changes that fit.
        f"{TAG}outcome_history": _fitting(history, 8000),
    }
    # One call: the status and its history change together or not at all.
    client.log_batch(record.release_id, tags=[RunTag(k, v) for k, v in tags.items()])
    if status == "failed":
        client.set_terminated(record.release_id, status="FAILED")


def _fitting(history: list[dict[str, str]], limit: int) -> str:
    while True:
        text = json.dumps(history, separators=(",", ":"))
        if len(text) <= limit or len(history) <= 1:
            return text[:limit]
        history = history[1:]


def outcome_history(client: MlflowClient, release_id: str) -> list[dict[str, str]]:
    """Every status change recorded for a release after it was recorded, oldest first."""
    return _history(client.get_run(release_id))


def _history(run: Run) -> list[dict[str, str]]:
    try:
        history = json.loads(run.data.tags.get(f"{TAG}outcome_history", "[]"))
    except ValueError:
        return []
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
