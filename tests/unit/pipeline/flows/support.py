"""What the flows' unit tests share: ledger records made by hand, the CLI run in a temp home."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.release.ledger import ReleaseRecord

ROOT = Path(__file__).resolve().parents[4]
REPO = "127.0.0.1:5000/demo-classifier"


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def record(n: int, *, kind: str = "model", control: str = "1", treatment: str | None = None,
           image: int | None = None, baseline: int | None = None, age_s: int = 0) -> ReleaseRecord:
    models = {"control": {"name": "demo-classifier", "version": control, "run_id": "r"}}
    if treatment:
        models["treatment"] = {"name": "demo-classifier", "version": treatment, "run_id": "r"}
    return ReleaseRecord(
        release_id=f"{n:032x}",
        created=datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=age_s),
        name="demo-classifier",
        kind=kind,
        status="promoted",
        mode="direct",
        image=f"{REPO}@{digest(image if image is not None else n)}",
        image_tag=f"ctl-v{control}.code-1a2b3c4",
        baseline=f"{REPO}@{digest(baseline)}" if baseline is not None else None,
        code_version="1a2b3c4",
        model_versions=models,
        artifact_uri="",
    )


def invoke(args: list[str], tmp_path: Path, **env: str) -> Any:
    home = tmp_path / "home"
    environ = {"BENTOSHIP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
               **env}
    return CliRunner().invoke(cli, args, env=environ, catch_exceptions=False)
