"""Real MLflow stores for tests: SQLite files in temporary folders, demo models trained in them."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.models import demo
from pipeline.settings import Settings, load_settings


def _checkout_is_dirty() -> bool:
    from pipeline.build.plan import PROJECT_ROOT
    from pipeline.identity import code_version

    return code_version(PROJECT_ROOT).dirty


# A release refuses a dirty checkout (pipeline/identity.py, check_clean). CI tests a clean clone;
# tests that release for another reason pass these so they also run before a commit.
CHECKOUT_DIRTY = _checkout_is_dirty()
ALLOW_DIRTY = ["--allow-dirty"] if CHECKOUT_DIRTY else []


def store_settings(directory: Path) -> Settings:
    return load_settings(
        {"BENTOSHIP_HOME": str(directory), "MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db"}
    )


def promote(settings: Settings, release_id: str) -> None:
    """Say the release's pipeline promoted it, as its outcome webhook or `releases mark` does:
    production is the newest promoted release, and the next release is compared with it."""
    from pipeline.models.registry import settings_client
    from pipeline.release import marking

    marking.mark_release(settings_client(settings), release_id, "promoted", by="tests")


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` process on a free loopback port (SQLite backend); yields its URL."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    command = [
        str(venv_bin / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", (root / "artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        # Its own session, so stopping it also stops the workers it forks.
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited {server.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health in 180s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
