"""Pushes and registry lookups with credentials from the Docker config, never shown anywhere.

A real registry (Debian's docker-registry, as ci/setup.sh runs it) that requires basic auth
(htpasswd, bcrypt) on a loopback port of its own; the real engine pushes to it; bentoship runs
as a user does (`python -m pipeline`), with DOCKER_CONFIG pointing at a config that has an
`auths` entry, or a credential helper (`docker-credential-<name>` on PATH).
"""

from __future__ import annotations

import base64
import crypt
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.build.builder import BuildResult
from pipeline.release import ledger

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
USER = "ci-bot"


@dataclass(frozen=True)
class AuthRegistry:
    address: str  # 127.0.0.1:PORT
    password: str
    root: Path

    def docker_config(self, name: str, config: dict[str, object]) -> Path:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
        return folder


def _free_port(first: int = 5100, last: int = 5199) -> int:
    for port in range(first, last + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in {first}-{last}")


@pytest.fixture
def pushed_tag(auth_registry: AuthRegistry, ab_build: BuildResult, docker_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The demo image tagged for the authenticated registry; the tag is removed afterwards."""
    reference = f"{auth_registry.address}/demo-classifier:{ab_build.tag}"
    docker_client.api.tag(ab_build.image_id, reference.rpartition(":")[0], ab_build.tag)
    yield reference
    docker_client.images.remove(reference)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    if not REGISTRY_BINARY.exists():
        pytest.fail(f"{REGISTRY_BINARY} is missing: `bash ci/setup.sh` installs docker-registry")
    root = tmp_path_factory.mktemp("auth-registry")
    password = f"rel-pw-{secrets.token_urlsafe(18)}"
    (root / "htpasswd").write_text(
        f"{USER}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    port = _free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: rel-test\n    path: {root / 'htpasswd'}\n"
    )
    with (root / "registry.log").open("wb") as log:
        server = subprocess.Popen([str(REGISTRY_BINARY), "serve", str(root / "config.yml")],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401  # it answers, and wants credentials
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail((root / "registry.log").read_text())
                time.sleep(0.3)
        yield AuthRegistry(f"127.0.0.1:{port}", password, root)
    finally:
        server.terminate()
        server.wait(timeout=20)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd,
                          text=True, capture_output=True, timeout=900, check=False)


def _env(home: Path, docker_config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENTOSHIP_"))}
    return {**env, "BENTOSHIP_HOME": str(home), "DOCKER_CONFIG": str(docker_config), **extra}


def test_push_and_lookup_use_the_docker_config_and_never_show_the_password(
    auth_registry: AuthRegistry, pushed_tag: str, tmp_path: Path
) -> None:
    repository = pushed_tag.rpartition(":")[0]
    seen: list[str] = []  # everything bentoship printed
    home = tmp_path / "home"

    # No credentials: the push is refused, and the message says how to give them.
    nothing = auth_registry.docker_config("empty", {})
    refused = _run(["push", pushed_tag], _env(home, nothing), tmp_path)
    seen += [refused.stdout, refused.stderr]
    assert refused.returncode == 1, refused.stderr
    assert f"holds no credentials for {auth_registry.address}" in refused.stderr
    assert f"docker login {auth_registry.address}" in refused.stderr

    # An `auths` entry, as `docker login` writes it.
    pair = base64.b64encode(f"{USER}:{auth_registry.password}".encode()).decode()
    logged_in = auth_registry.docker_config(
        "auths", {"auths": {auth_registry.address: {"auth": pair}}})
    pushed = _run(["push", pushed_tag, "--output", "json"],
                  _env(home, logged_in), tmp_path)
    seen += [pushed.stdout, pushed.stderr]
    assert pushed.returncode == 0, pushed.stderr
    digest = json.loads(pushed.stdout)["digest"]
    assert digest.startswith("sha256:")

    # A credential helper: the rollback reads the image's labels from the registry (the same
    # lookup a build's reuse check makes), then records the release in the ledger.
    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / "docker-credential-reltest"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f"printf '{{\"ServerURL\": \"%s\", \"Username\": \"{USER}\", "
        f"\"Secret\": \"{auth_registry.password}\"}}' \"$server\"\n"
    )
    helper.chmod(0o755)
    via_helper = auth_registry.docker_config(
        "helper", {"credHelpers": {auth_registry.address: "reltest"}})
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = _env(home, via_helper, MLFLOW_TRACKING_URI=store,
               PATH=f"{helpers}{os.pathsep}{os.environ['PATH']}")
    rolled = _run(["rollback", "--to", f"{repository}@{digest}", "--name", "demo-classifier",
                   "--out", str(tmp_path / "release"), "--output", "json"], env, tmp_path)
    seen += [rolled.stdout, rolled.stderr]
    assert rolled.returncode == 0, rolled.stderr
    answer = json.loads(rolled.stdout)
    assert answer["image"] == f"{repository}@{digest}" and answer["recorded"] is True
    assert "the registry serves it; its labels name control=demo-classifier/1" in rolled.stderr

    # Without the helper on PATH the lookup fails, naming the helper, not the secret.
    broken = _run(["rollback", "--to", f"{repository}@{digest}", "--name", "demo-classifier",
                   "--out", str(tmp_path / "again")], {**env, "PATH": os.environ["PATH"]},
                  tmp_path)
    seen += [broken.stdout, broken.stderr]
    assert broken.returncode == 1
    assert "docker-credential-reltest" in broken.stderr

    client = MlflowClient(tracking_uri=store)
    records = ledger.list_releases(client)
    assert [r.image for r in records] == [f"{repository}@{digest}"]
    run = client.get_run(records[0].release_id)
    recorded = [json.dumps(run.data.tags), json.dumps(run.data.params)]
    for path in ledger.release_files(client, records[0].release_id):
        local = client.download_artifacts(records[0].release_id, path, str(tmp_path / "dl"))
        recorded.append(Path(local).read_text(errors="replace"))
    written = [p.read_bytes().decode(errors="replace")
               for p in [*home.rglob("*"), *(tmp_path / "release").rglob("*")]
               if p.is_file() and p.stat().st_size < 50_000_000]
    for text in [*seen, *recorded, *written]:
        assert auth_registry.password not in text
        assert pair not in text
