"""What a flow did, as the CLI prints it (`as_dict` is the `--output json` answer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.release import ledger
from pipeline.release.spec import ReleaseSpec

if TYPE_CHECKING:
    from pipeline.release.handoff import Handoff

__all__ = ["FlowResult", "RollbackResult"]


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
