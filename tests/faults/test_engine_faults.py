"""The Docker engine failing under a build: restarted mid-build, and its disk full.

A second `dockerd` of these tests' own (its socket, exec root, bridge, and a data root on a
2.5 GB ext4 file system in a loop-mounted file), never the suite's engine. The platform base
image is copied into it from the suite's engine once (`docker save | docker load`). Each case
runs `bentoship build` of the demo champion against it, breaks the engine at a progress line
of the build, checks the message and that no tag points at an image that did not pass its
smoke test, then runs the same build again, which completes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.build.base import BaseImage
from tests.faults.parts import Engine, Killed, run_bentoship
from tests.stores import demo_store, free_port  # noqa: F401 - demo_store is a fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DISK_MB = 2500  # `docker load` of the base image (about 610 MB) needs about twice that, briefly


@dataclass
class Second:
    root: Path
    engine: Engine
    store: str  # MLFLOW_TRACKING_URI

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "BENTOSHIP_", "DOCKER_HOST"))}
        # No registry answers at this address: the base is used by its local tag, nothing pushed.
        return {**env, "MLFLOW_TRACKING_URI": self.store, "DOCKER_HOST": self.engine.socket,
                "BENTOSHIP_HOME": str(self.root / "home"),
                "BENTOSHIP_REGISTRY": f"127.0.0.1:{free_port()}"}

    def build(self, name: str, marker: object = None, action: object = None) -> Killed:
        return run_bentoship(["build", "--model", "demo-classifier@champion", "--name", name],
                             self.env(), self.root, marker=marker,  # type: ignore[arg-type]
                             action=action)  # type: ignore[arg-type]

    def tags(self, name: str) -> list[str]:
        out = self.engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
        return [line for line in out.split() if f"/{name}:" in line]

    def containers(self) -> list[str]:
        return self.engine.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout \
            .strip().splitlines()


@pytest.fixture(scope="module")
def second(
    demo_store, base_image: BaseImage, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
) -> Iterator[Second]:
    for tool in ("losetup", "mkfs.ext4", "dockerd", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to run a second engine on a small disk")
    root = tmp_path_factory.mktemp("faults-engine")
    shutil.copy(demo_store.tracking_uri.removeprefix("sqlite:///"), root / "mlflow.db")
    engine = Engine(root, DISK_MB)
    try:
        engine.mount()
        engine.start()
        tag = f"bentoship/base:{base_image.lock_sha256[:12]}"
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", engine.socket, "load"], stdin=save.stdout,
                              capture_output=True, text=True, check=False)
        assert save.wait() == 0 and load.returncode == 0, load.stderr
        yield Second(root, engine, f"sqlite:///{root / 'mlflow.db'}")
    finally:
        engine.unmount()


def step(prefix: str) -> object:
    """A build step's progress line, e.g. '  Step 3/9 : COPY ...': the engine is building."""
    return lambda line: line.strip().startswith(prefix)


def test_an_engine_restarted_mid_build_tags_nothing_and_the_rerun_completes(
    second: Second,
) -> None:
    name = "faults-restart"

    def restart(_process: object) -> None:
        second.engine.kill()
        second.engine.start()

    broken = second.build(name, step("Step 3/"), restart)
    print(f"engine restarted mid-build: exit {broken.code}; {broken.error}")
    assert broken.acted, broken.err[-3000:]
    assert broken.code == 1, broken.err[-3000:]
    assert "docker build failed" in broken.error
    assert "stopped answering during the build" in broken.err and "No image was tagged" in broken.err
    assert "Traceback" not in broken.err
    assert second.tags(name) == []
    left = second.containers()
    print(f"containers left on the restarted engine: {left}")
    assert not [c for c in left if " Up " in f" {c} "]

    again = second.build(name)
    assert again.code == 0, again.err[-3000:]
    assert "Smoke test: starting the container" in again.err
    assert len(second.tags(name)) == 1


def test_a_full_disk_fails_the_build_naming_disk_space_and_the_rerun_completes(
    second: Second,
) -> None:
    name = "faults-disk"
    filler = second.engine.fill()
    try:
        full = second.build(name)
    finally:
        filler.unlink()
    print(f"disk full: exit {full.code}; {full.error}")
    assert full.code == 1, full.err[-3000:]
    assert "no space left on device" in full.err
    assert "disk is full" in full.err and "No image was tagged" in full.err
    assert "Traceback" not in full.err
    assert second.tags(name) == []

    again = second.build(name)
    assert again.code == 0, again.err[-3000:]
    assert len(second.tags(name)) == 1
