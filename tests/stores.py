"""Real MLflow stores for tests: SQLite files in temporary folders, demo models trained in them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline import demo
from pipeline.settings import Settings, load_settings


def store_settings(directory: Path) -> Settings:
    return load_settings(
        {"BENTOSHIP_HOME": str(directory), "MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db"}
    )


def train_demo(settings: Settings) -> None:
    demo.train(settings.tracking_uri, artifact_root=settings.artifact_root)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A real SQLite MLflow store with the two demo versions (read-only for tests)."""
    settings = store_settings(tmp_path_factory.mktemp("demo-store"))
    demo.train(settings.tracking_uri, artifact_root=settings.artifact_root)
    return settings


@pytest.fixture
def fresh_demo_store(tmp_path: Path) -> Settings:
    """A demo store of this test's own, for tests that change it."""
    settings = store_settings(tmp_path)
    demo.train(settings.tracking_uri, artifact_root=settings.artifact_root)
    return settings


def set_status(settings: Settings, name: str, version: str, status: str) -> None:
    """Put a version into a state MLflow's SQL store can hold but the demo never produces."""
    db = settings.tracking_uri.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE model_versions SET status = ? WHERE name = ? AND version = ?",
            (status, name, int(version)),
        )
