"""Faults in the middle of `bentoship release`, on real parts, in the order a release meets them.

One release of the demo champion (service `faults-demo`) is run again and again against its own
`mlflow server` (a copy of the demo store), its own registry behind a proxy that can slow
uploads down, and the suite's Docker engine. Each step breaks one thing while the release
runs, chosen by the progress line it prints on stderr: SIGKILL of the release itself in each
phase (resolve, build, smoke test, push, render, record), the registry killed mid-push, and the
MLflow server killed between the push and the recording. Each step then checks what a user
would find: the message, no tag on an image that did not pass its smoke test (here and in the
registry), nothing recorded half, the lease let go or expired. Each step's release is the
rerun of the step before, so it must get past that step's fault; the last one completes and
reuses the image pushed before. Nothing is asserted about time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from mlflow import MlflowClient

from pipeline.build import smoke
from pipeline.release import lease, ledger
from tests.faults.parts import (
    Killed,
    MlflowServer,
    Registry,
    Throttle,
    kill_group,
    run_bentoship,
)
from tests.stores import demo_store, free_port  # noqa: F401 - demo_store is a fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.mlflow_server]

SERVICE = "faults-demo"
TTL_S = 6  # BENTOSHIP_LEASE_TTL: a killed release blocks the next one this long at most
RELEASE = ["release", "--model", "demo-classifier@champion", "--name", SERVICE,
           "--allow-dirty", "--wait", "120"]


@dataclass
class World:
    root: Path
    server: MlflowServer
    registry: Registry
    proxy: Throttle
    docker: docker.DockerClient

    @property
    def address(self) -> str:
        """The registry as bentoship sees it: through the proxy."""
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.server.url)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENTOSHIP_"))}
        return {**env, "MLFLOW_TRACKING_URI": self.server.url,
                "BENTOSHIP_HOME": str(self.root / "home"), "BENTOSHIP_REGISTRY": self.address,
                "BENTOSHIP_LEASE_TTL": str(TTL_S),
                # MLflow's client retries a refused connection 7 times with backoff (minutes);
                # the message is the same after one try.
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

    def release(self, marker: Callable[[str], bool] | None = None,
                action: Callable[[subprocess.Popen[str]], None] | None = None) -> Killed:
        return run_bentoship([*RELEASE, "--out", str(self.root / "out")], self.env(), self.root,
                             marker=marker, action=action)

    def releases(self) -> list[ledger.ReleaseRecord]:
        return ledger.list_releases(self.client, limit=100, name=SERVICE)

    def unrecorded(self) -> list[str]:
        """Ledger runs of the service without a status: not releases, left by a stopped one."""
        experiment = self.client.get_experiment_by_name(ledger.EXPERIMENT)
        if experiment is None:
            return []
        runs = self.client.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.`bentoship.name` = '{SERVICE}'")
        return [r.info.run_id for r in runs if not r.data.tags.get("bentoship.status")]

    def local_tags(self) -> list[str]:
        return [t for image in self.docker.images.list(name=f"{self.address}/{SERVICE}")
                for t in image.tags]

    def registry_tags(self) -> list[str]:
        return self.registry.tags(SERVICE)

    def smoke_containers(self, pid: int) -> list[str]:
        found = self.docker.containers.list(all=True, filters={"label": smoke.OWNER_LABEL})
        return [c.name for c in found if c.labels[smoke.OWNER_LABEL].endswith(f":{pid}")]

    def lease_expires(self, pid: int) -> lease.Holder | None:
        """The killed holder `pid`, if it held the lease; waits until its lease is free."""
        holder = lease.current(self.client, SERVICE)
        held = holder if holder is not None and holder.pid == pid else None
        deadline = time.monotonic() + 10 * TTL_S
        while lease.current(self.client, SERVICE) is not None:
            assert time.monotonic() < deadline, "the lease of a killed release never expired"
            time.sleep(0.5)
        return held


@pytest.fixture(scope="module")
def world(
    demo_store, docker_client: docker.DockerClient, base_image: object,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("faults")
    # The demo's registered models (their artifacts stay where the demo store keeps them).
    shutil.copy(demo_store.tracking_uri.removeprefix("sqlite:///"), root / "mlflow.db")
    server = MlflowServer(root, free_port())
    registry = Registry(root / "registry", free_port())
    proxy = Throttle(upstream=registry.port, port=free_port())
    server.start()
    registry.start()
    proxy.start()
    try:
        yield World(root, server, registry, proxy, docker_client)
    finally:
        proxy.stop()
        registry.kill()
        server.kill()
        for image in docker_client.images.list(name=f"127.0.0.1:{proxy.port}/{SERVICE}"):
            docker_client.images.remove(image.id, force=True)


def starts(prefix: str) -> Callable[[str], bool]:
    return lambda line: line.strip().startswith(prefix)


def first_layer_sent(line: str) -> bool:
    """The push is under way: the first layer the registry already has was skipped."""
    return line.rstrip().endswith((": Layer already exists", ": Pushed"))


@dataclass(frozen=True)
class Fault:
    id: str
    marker: Callable[[str], bool]
    throttle: bool = False  # slow uploads down, so that the push is still running at the kill


FAULTS = [
    Fault("sigkill-resolve", starts("Resolving model versions")),
    Fault("sigkill-build", starts("Building the image (no network)")),
    Fault("sigkill-smoke", starts("ready after")),
    Fault("registry-killed-mid-push", first_layer_sent, throttle=True),
    Fault("sigkill-push", first_layer_sent, throttle=True),
    Fault("sigkill-render", starts("Rendering the")),
    Fault("mlflow-killed-after-push", starts("Pushed 127.0.0.1:")),
    Fault("sigkill-record", starts("Recording release")),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_a_fault_mid_release_leaves_nothing_half(world: World, fault: Fault) -> None:
    world.proxy.rate = 20_000 if fault.throttle else None
    sigkill = fault.id.startswith("sigkill-")

    def act(process: subprocess.Popen[str]) -> None:
        if sigkill:
            kill_group(process)
        elif fault.id == "registry-killed-mid-push":
            world.registry.kill()
        else:
            world.server.kill()

    try:
        result = world.release(fault.marker, act)
    finally:
        world.proxy.rate = None
        if world.registry.process is None:
            world.registry.start()
        if world.server.process is None:
            world.server.start()
    print(f"{fault.id}: exit {result.code}; {result.error or '(killed: no message)'}")
    assert result.acted, f"the release never printed the line of {fault.id}:\n{result.err[-3000:]}"
    previous = FAULTS[FAULTS.index(fault) - 1].id if FAULTS.index(fault) else None
    if previous == "sigkill-smoke":  # the container the killed smoke test left is gone now
        assert "removed the container" in result.err and "of an interrupted smoke test" in result.err

    tag = next((t.split(":")[-1] for t in world.local_tags()), None)
    # No tag on an image that did not pass its smoke test: nothing is tagged before it passed.
    if fault.id in ("sigkill-resolve", "sigkill-build", "sigkill-smoke"):
        assert world.local_tags() == [] and world.registry_tags() == []
    # The registry never serves a tag whose image it does not hold whole.
    for pushed in world.registry_tags():
        assert world.registry.whole(SERVICE, pushed), f"{SERVICE}:{pushed} is not whole"
    if fault.id == "sigkill-smoke":  # its container is left running: the next build removes it
        assert world.smoke_containers(result.pid) != []
    if fault.id == "sigkill-record":  # the run the killed render left, deleted by this release
        assert "Deleted 1 unrecorded ledger run(s)" in result.err

    # Nothing recorded half: no release is listed, whatever runs the fault left have no status.
    records = world.releases()
    if fault.id == "sigkill-record" and records:  # killed after the status was written
        (record,) = records
        assert record.status == ledger.HANDED_OFF
        assert "openapi.json" in ledger.release_files(world.client, record.release_id)
    else:
        assert records == []

    if sigkill:
        assert result.code == -9 and result.error == ""
        holder = world.lease_expires(result.pid)
        assert holder is not None, "the killed release held no lease"
    elif fault.id == "registry-killed-mid-push":
        assert result.code == 1
        assert "pushing" in result.error and SERVICE in result.error
        assert "stopped answering during the push" in result.err
        assert "Nothing was recorded" in result.err
        assert tag is not None and tag not in world.registry_tags()
        assert lease.current(world.client, SERVICE) is None  # MLflow was up: it let go
    else:  # MLflow killed between the push and the recording
        assert result.code == 1
        assert f"{world.address}/{SERVICE}@sha256:" in result.error
        assert "was pushed" in result.error and "nothing was recorded" in result.err
        assert "run the same release again" in result.err
        assert "Traceback" not in result.err
        assert tag is not None and tag in world.registry_tags()
        world.lease_expires(result.pid)  # it could not let go: MLflow was down; the lease expires


def test_the_rerun_completes_and_reuses_the_pushed_image(world: World) -> None:
    recorded = world.releases()
    if recorded:  # the kill in `record` came after the status: that release is whole; fail it
        marked = run_bentoship(["releases", "mark", recorded[0].release_id, "--status", "failed",
                                "--reason", "killed after recording"], world.env(), world.root)
        assert marked.code == 0, marked.err
    result = world.release()
    assert result.code == 0, result.err[-3000:]
    assert "already exists locally with this configuration: not rebuilding" in result.err
    record = world.releases()[0]
    assert record.status == ledger.HANDED_OFF and record.image.startswith(f"{world.address}/")
    assert world.unrecorded() == []
    assert lease.current(world.client, SERVICE) is None
    assert world.registry.whole(SERVICE, record.image_tag)
