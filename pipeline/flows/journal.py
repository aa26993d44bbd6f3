"""The webhook receiver's delivery journal: which deliveries it accepted and what became of them.

One JSON line per change under `<BENTOSHIP_HOME>/webhook/deliveries.jsonl`, written when a
delivery is accepted and again when the release worker is done with it: a retried delivery is
a duplicate even after a restart, and deliveries accepted but not finished when the receiver
stopped are run when it starts again (`unfinished`). A line cut short by a crash is skipped.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.flows.webhook import RegistryEvent


@dataclass(frozen=True)
class Outcome:
    """What the worker did with a delivery: `released`, `skipped` or `failed`."""

    status: str
    detail: str
    release_id: str | None = None


class DeliveryJournal:
    """Delivery ids and what became of them, one JSON line per change, safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: the rest is still good
                if isinstance(entry, dict) and isinstance(entry.get("delivery_id"), str):
                    self._entries.setdefault(entry["delivery_id"], {}).update(entry)

    def accept(self, event: RegistryEvent) -> bool:
        """Journal a new delivery as accepted; False when its id was seen before."""
        assert event.delivery_id
        with self._lock:
            if event.delivery_id in self._entries:
                return False
            self._write({"delivery_id": event.delivery_id, "status": "accepted",
                         "event": asdict(event)})
            return True

    def finish(self, delivery_id: str, outcome: Outcome) -> None:
        with self._lock:
            self._write({"delivery_id": delivery_id, **asdict(outcome)})

    def seen(self, delivery_id: str) -> bool:
        with self._lock:
            return delivery_id in self._entries

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(delivery_id)
            return dict(entry) if entry else None

    def unfinished(self) -> list[RegistryEvent]:
        """Deliveries accepted but never finished (the receiver stopped), oldest first."""
        with self._lock:
            return [RegistryEvent(**e["event"]) for e in self._entries.values()
                    if e.get("status") == "accepted" and isinstance(e.get("event"), dict)]

    def _write(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
        self._entries.setdefault(entry["delivery_id"], {}).update(entry)
