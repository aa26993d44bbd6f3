"""Two releases of one service at once, from two state folders sharing one MLflow.

Real processes (`python -m pipeline release`, each with its own BENTOSHIP_HOME), a real MLflow
(the SQLite store, and an `mlflow server` over HTTP), the real engine and registry. The store is
a copy of the demo store, so the demo A/B image built once per session (`ab_build`) is reused
and a release takes seconds, not a build.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from pipeline.cli import cli
from pipeline.release import lease, ledger
from pipeline.settings import Settings
from tests.stores import running_mlflow_server

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVICE = "demo-classifier"  # the demo A/B image's service (tests/integration/conftest.py)
RELEASE = ["release", "--model", "demo-classifier@champion",
           "--treatment", "demo-classifier@challenger", "--allow-dirty", "--output", "json"]
HOLDER = """
import sys, time
from pipeline.settings import load_settings
from pipeline.release import lease
with lease.hold(load_settings(), sys.argv[1], print):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@dataclass(frozen=True)
class Shared:
    root: Path
    uri: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def env(self, home: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENTOSHIP_"))}
        (self.root / home).mkdir(exist_ok=True)
        return {**env, "MLFLOW_TRACKING_URI": self.uri,
                "BENTOSHIP_HOME": str(self.root / home / "state"), **extra}

    def start(self, home: str, args: list[str], **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args, "--out", str(self.root / home / "out")],
            env=self.env(home, **extra), cwd=self.root / home, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )

    def releases(self) -> list[ledger.ReleaseRecord]:
        return ledger.list_releases(self.client, limit=100, name=SERVICE)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("server", marks=pytest.mark.mlflow_server)],
)
def store(
    request: pytest.FixtureRequest, demo_store: Settings, ab_build: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp(f"lease-{request.param}")
    # The same models (same run ids and manifests), so the session's demo image is reused.
    shutil.copy(demo_store.tracking_uri.removeprefix("sqlite:///"), root / "mlflow.db")
    if request.param == "sqlite":
        yield Shared(root, f"sqlite:///{root / 'mlflow.db'}")
    else:
        with running_mlflow_server(root) as url:
            yield Shared(root, url)


@pytest.fixture
def shared(store: Shared) -> Shared:
    """The module's store with an empty ledger and no lease held."""
    client = store.client
    experiment = client.get_experiment_by_name(ledger.EXPERIMENT)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            client.delete_run(run.info.run_id)
    assert lease.current(client, SERVICE) is None
    return store


def _finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _wait_for_holder(shared: Shared, pid: int, timeout: float = 300) -> lease.Holder:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lease.current(shared.client, SERVICE)
        if holder is not None and holder.pid == pid:
            return holder
        time.sleep(0.2)
    pytest.fail(f"process {pid} never took the release lease of {SERVICE}")


def test_two_releases_at_once_never_share_a_baseline(shared: Shared) -> None:
    """The second waits for the first's lease; then production is the first release, whose
    outcome nobody has reported yet, so the second is refused rather than planned against a
    production that may never be: one release per baseline. Once the first is promoted, the
    next release is planned against it."""
    started = time.monotonic()
    first = shared.start("a", RELEASE, BENTOSHIP_CI_JOB="https://ci.example/job/1")
    second = shared.start("b", RELEASE, BENTOSHIP_CI_JOB="https://ci.example/job/2")
    results = [_finish(first), _finish(second)]
    elapsed = time.monotonic() - started
    waited = [(code, err) for code, _, err in results
              if f"Another release of {SERVICE} is running" in err]
    assert len(waited) == 1, "exactly one of the two releases waits for the other"
    code, err = waited[0]
    assert "https://ci.example/job/" in err and "Got the release lease" in err
    assert code == 1 and "without its outcome being reported" in err, err[-3000:]
    assert "releases mark" in err
    assert sorted(c for c, _, _ in results) == [0, 1]
    print(f"two releases at once: {elapsed:.1f}s;",
          next(line for line in err.splitlines() if "Got the release lease" in line))

    (older,) = shared.releases()  # the refused one recorded nothing
    assert older.predecessor == "none" and older.allow_dirty == "true"
    assert lease.current(shared.client, SERVICE) is None  # both let go on exit
    marked = CliRunner().invoke(cli, ["releases", "mark", older.release_id, "--status",
                                      "promoted"], env=shared.env("mark"),
                                catch_exceptions=False)
    assert marked.exit_code == 0, marked.output
    code, _, err = _finish(shared.start("c", RELEASE))
    assert code == 0, err[-3000:]
    newer = next(r for r in shared.releases() if r.release_id != older.release_id)
    assert newer.predecessor == older.release_id
    shown = CliRunner().invoke(cli, ["releases", "show", newer.release_id],
                               env=shared.env("show"), catch_exceptions=False)
    assert f"Replaces  release {older.release_id[:12]}" in shown.output
    assert "Dirty     allowed (--allow-dirty)" in shown.output


def test_a_release_gives_up_after_wait_naming_the_holder(shared: Shared) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, SERVICE, "60"], text=True, stdout=subprocess.PIPE,
        env=shared.env("holder", BENTOSHIP_CI_JOB="https://ci.example/job/41"),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        code, out, err = _finish(shared.start("b", [*RELEASE, "--wait", "3"]))
        waited = time.monotonic() - started
    finally:
        holder.terminate()  # as a cancelled CI job is stopped: it lets go of the lease
        holder.wait(timeout=30)
    assert code == 1, err
    assert out == ""
    assert f"another release of {SERVICE} is running" in err
    assert "CI job https://ci.example/job/41" in err and f"(pid {holder.pid}) since " in err
    assert "lease expires" in err and "--wait SECONDS" in err
    assert 3 <= waited < 30
    print(f"gave up after {waited:.1f}s (--wait 3)")
    assert shared.releases() == []
    assert lease.current(shared.client, SERVICE) is None


def test_a_killed_release_loses_its_lease_to_the_next_one(shared: Shared) -> None:
    ttl = {"BENTOSHIP_LEASE_TTL": "5"}
    crashed = shared.start("a", RELEASE, **ttl)
    try:
        _wait_for_holder(shared, crashed.pid)
    finally:
        os.killpg(crashed.pid, signal.SIGKILL)  # kill -9, its children too
        crashed.wait()
    assert lease.current(shared.client, SERVICE) is not None  # still held: nobody let go
    started = time.monotonic()
    code, _, err = _finish(shared.start("b", [*RELEASE, "--wait", "60"], **ttl))
    elapsed = time.monotonic() - started
    assert code == 0, err[-3000:]
    assert f"Took over the expired release lease of {SERVICE}" in err
    assert f"(pid {crashed.pid})" in err
    print(f"release after a kill -9 of the holder: {elapsed:.1f}s (TTL 5s)")
    records = shared.releases()
    assert [r.predecessor for r in records] == ["none"]  # the killed one recorded nothing
    assert lease.current(shared.client, SERVICE) is None
