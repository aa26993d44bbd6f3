"""The platform's base image, built by pipeline.build.base with a real Docker engine and registry."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import docker
import pytest

from pipeline.build import base
from pipeline.build.base import BaseImage, ensure_base_image, lock_pins
from pipeline.build.engine import connect
from pipeline.errors import EngineUnavailableError, ImageBuildError
from pipeline.settings import load_settings

RUNTIME = ["bentoml", "sklearn", "xgboost", "skops", "pandas", "numpy"]


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, so `docker save` can be read as it streams."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _layer_paths(client: docker.DockerClient, image_id: str) -> Iterator[str]:
    """Every path in every layer of the image (deleted files included), from `docker save`."""
    stream = io.BufferedReader(_ChunkReader(client.images.get(image_id).save()), 1 << 20)
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if not (member.name.endswith("layer.tar") or member.name.startswith("blobs/")):
                continue
            blob = archive.extractfile(member)
            if blob is None:
                continue
            try:
                with tarfile.open(fileobj=blob, mode="r|*") as layer:
                    for entry in layer:
                        yield entry.name.removeprefix("./").lstrip("/")
            except tarfile.ReadError:  # an OCI config or manifest blob, not a layer
                continue


@pytest.mark.docker
def test_base_image_runs_the_runtime_as_uid_10001(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    script = (
        "import importlib.metadata as m, json, os\n"
        f"import {', '.join(RUNTIME)}\n"
        "print(json.dumps({'uid': os.getuid(), 'cwd': os.getcwd(), 'versions': {n: m.version(n)"
        " for n in ['bentoml', 'scikit-learn', 'xgboost-cpu', 'skops', 'pandas', 'numpy']}}))"
    )
    out = docker_client.containers.run(
        base_image.ref, ["python", "-c", script], remove=True, network_mode="none"
    )
    answer = json.loads(out)
    assert answer["uid"] == 10001
    assert answer["cwd"] == "/home/bentoship"
    pins = lock_pins()
    assert answer["versions"] == {name: pins[name] for name in answer["versions"]}

    config = docker_client.images.get(base_image.ref).attrs["Config"]
    assert config["User"] == "10001"
    assert "3000/tcp" in config["ExposedPorts"]
    assert "BENTOML_HOME=/home/bentoship/bentoml" in config["Env"]
    lock_sha = hashlib.sha256(base.LOCK_FILE.read_bytes()).hexdigest()
    assert config["Labels"][base.LOCK_LABEL] == lock_sha == base_image.lock_sha256


@pytest.mark.docker
@pytest.mark.slow
def test_no_layer_holds_wheels_or_a_pip_cache(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    paths = list(_layer_paths(docker_client, base_image.image_id))
    assert any(p.startswith("opt/venv/") for p in paths), "saw no layer contents at all"
    # Debian's python3-venv ships the two wheels ensurepip installs; nothing else may be a wheel.
    wheels = [
        p for p in paths if p.endswith(".whl") and not p.startswith("usr/share/python-wheels/")
    ]
    assert wheels == []
    assert [p for p in paths if p == "wheels" or p.startswith("wheels/")] == []
    assert [p for p in paths if ".cache/pip" in p] == []


@pytest.mark.docker
def test_history_leaks_no_host_path_or_credentials(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    history = docker_client.api.history(base_image.image_id)
    config = docker_client.images.get(base_image.image_id).attrs["Config"]
    text = json.dumps([history, config])
    checkout = str(Path(base.__file__).resolve().parents[2])
    assert checkout not in text
    assert "/work" not in text
    assert not re.search(r"://[^/\s:@\"]+:[^/\s@\"]+@", text), "a URL with credentials"
    assert not re.search(
        r"password|passwd|secret|token|api[_-]?key|authorization", text, re.IGNORECASE
    )


@pytest.mark.docker
def test_base_image_is_pushed_and_referred_to_by_digest(base_image: BaseImage) -> None:
    registry = load_settings().oci_registry
    if "@" not in base_image.ref:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs the registry {registry} (bash ci/setup.sh starts it)")
        pytest.skip(f"registry {registry} does not answer; the base image was not pushed")
    repository, digest = base_image.ref.split("@")
    assert repository == f"{registry}/bentoship/base"
    request = urllib.request.Request(
        f"http://{registry}/v2/bentoship/base/manifests/{digest}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == digest


@pytest.mark.docker
def test_a_current_base_image_is_reused(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    messages: list[str] = []
    again = ensure_base_image(docker_client, load_settings(), push=False, echo=messages.append)
    assert again.image_id == base_image.image_id
    assert any("reusing" in m for m in messages), messages


@pytest.mark.docker
def test_missing_root_image_says_to_run_setup_and_leaves_nothing(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_bytes(base.LOCK_FILE.read_bytes() + b"# a lock no image was built from\n")
    monkeypatch.setattr(base, "LOCK_FILE", lock)
    monkeypatch.setattr(base, "ROOT_IMAGE", "bentoship/no-such-root:0")
    home = tmp_path / "home"
    images_before = {i.id for i in docker_client.images.list(all=True)}

    with pytest.raises(ImageBuildError) as error:
        ensure_base_image(docker_client, load_settings({"BENTOSHIP_HOME": str(home)}))

    assert "bentoship/no-such-root:0 is missing" in str(error.value)
    assert "bash ci/setup.sh" in str(error.value)
    assert {i.id for i in docker_client.images.list(all=True)} == images_before
    assert not home.exists() or list(home.iterdir()) == []


def test_no_engine_explains_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = tmp_path / "no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    with pytest.raises(EngineUnavailableError) as error:
        connect()
    message = str(error.value)
    assert f"unix://{socket} (from DOCKER_HOST)" in message
    assert "bash ci/setup.sh" in message
    assert "dockerd &" in message
