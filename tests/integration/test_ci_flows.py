"""`bentoship ci webhook` with a real `mlflow server` sending real registry webhooks on loopback,
and `bentoship rollback` with MLflow down.

The MLflow server signs each delivery itself (HMAC-SHA256 with the webhook's secret); the
receiver runs as its own process, as in production. One image is built in this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from mlflow import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from pipeline import flows
from pipeline.build import oci
from pipeline.cli import cli
from pipeline.config import ReleaseConfig
from pipeline.errors import ArtifactError
from pipeline.models import demo
from pipeline.models.integrity import DIGEST_TAG
from pipeline.release import ledger
from pipeline.settings import load_settings
from tests.stores import free_port, running_mlflow_server

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.mlflow_server]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-webhook-secret"
MODEL = "ci-hooked"  # the registered model (and service) the webhooks announce
REPOSITORY = f"127.0.0.1:5000/{MODEL}"
T = TypeVar("T")

# --- helpers, shared with tests/e2e/test_story.py -------------------------------------------------


@contextmanager
def webhook_mlflow_server(root: Path) -> Iterator[str]:
    """An `mlflow server` (SQLite) allowed to send webhooks to loopback over plain HTTP.

    MLflow only posts to public https URLs unless told otherwise; it caches the webhook list
    for 60 s (0 here, so a webhook counts as soon as it exists), and encrypts webhook secrets
    with a key that must stay the same for the server's lifetime.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
        patch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
        patch.setenv("MLFLOW_WEBHOOK_CACHE_TTL", "0")
        patch.setenv("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", Fernet.generate_key().decode())
        with running_mlflow_server(root) as url:
            yield url


def bentoship_env(home: Path, tracking_uri: str, **extra: str) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "BENTOSHIP_"))}
    env.update({
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOSHIP_HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BENTOSHIP_WEBHOOK_SECRET": SECRET,
        **extra,
    })
    return env


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str,
             log: Path | None = None) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text().splitlines()[-40:]) if log and log.exists() else ""
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.5)


@dataclass
class ReceiverProcess:
    url: str
    log: Path

    def counts(self) -> dict[str, int]:
        return dict(get_json(f"{self.url}/healthz")["counts"])

    def failed(self) -> None:
        if self.counts().get("failed"):
            pytest.fail(f"a release failed in the receiver:\n{self.log.read_text()[-4000:]}")


@contextmanager
def webhook_receiver(cwd: Path, env: dict[str, str], out: Path, log: Path, *,
                     port: int | None = None,
                     config: Path | None = None) -> Iterator[ReceiverProcess]:
    """`bentoship ci webhook` as its own process on a (free) loopback port."""
    port = port or free_port()
    command = [sys.executable, "-m", "pipeline", "ci", "webhook", "--port", str(port),
               "--out", str(out), *(["--config", str(config)] if config else [])]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    receiver = ReceiverProcess(f"http://127.0.0.1:{port}", log)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the receiver exited {process.returncode}:\n{log.read_text()}")
        try:
            return get_json(f"{receiver.url}/healthz")["status"] == "ok"
        except OSError:
            return False

    try:
        wait_for(answers, 60, "the webhook receiver's /healthz", log)
        yield receiver
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # lets a running release finish
            try:
                process.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def register(tracking_uri: str, source_model: str, source_version: str, name: str) -> str:
    """Register the logged model behind `source_model/source_version` as a new version of `name`.

    Through the server's REST API, as `mlflow.register_model` does (without touching the
    process-wide tracking URI).
    """
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    logged = client.get_model_version(source_model, source_version)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = str(logged.source)  # `models:/m-<id>`, the logged model
    created = client.create_model_version(name, source, run_id=logged.run_id,
                                          model_id=source.removeprefix("models:/"))
    return str(created.version)


def registry_tags(repository: str) -> list[str]:
    registry, name = oci.split(repository)
    try:
        return list(get_json(f"http://{registry}/v2/{name}/tags/list").get("tags") or [])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def registry_digest(repository: str, digest: str) -> str | None:
    """The digest the registry answers for `repository@digest` (None when it has none)."""
    registry, name = oci.split(repository)
    request = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{digest}", method="HEAD",
        headers={"Accept": ", ".join(oci.MANIFEST_TYPES)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError:
        return None


def post_signed(url: str, body: bytes, delivery_id: str, secret: str = SECRET) -> tuple[int, Any]:
    """A delivery signed as MLflow signs it (MLflow's own signing function)."""
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
               "X-MLflow-Timestamp": stamp,
               "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, stamp,
                                                              body.decode())}
    request = urllib.request.Request(f"{url}/webhook", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- fixtures -------------------------------------------------------------------------------------


@dataclass
class Stack:
    tracking_uri: str
    client: MlflowClient
    home: Path
    out: Path
    receiver: ReceiverProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: Any,
          base_image: Any) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ci-flows")
    (root / "mlflow").mkdir()
    with webhook_mlflow_server(root / "mlflow") as url:
        demo.train(url, name="ci-staging")  # versions 1 (scikit-learn) and 2 (XGBoost)
        home, out = root / "home", root / "out"
        env = bentoship_env(home, url)
        # The releases' pipelines report their outcome to this receiver's /outcome.
        port = free_port()
        config = root / "bentoship.toml"
        config.write_text(f'[release]\noutcome_url = "http://127.0.0.1:{port}/outcome"\n')
        with webhook_receiver(ROOT, env, out, root / "receiver.log", port=port,
                              config=config) as receiver:
            yield Stack(url, MlflowClient(url), home, out, receiver)


@dataclass
class Rejected:
    counts: dict[str, int]
    images: tuple[set[str], set[str]]  # this repository's image ids, before and after
    tags: tuple[list[str], list[str]]  # its tags in the registry, before and after


def _images(docker_client: Any) -> set[str]:
    return {i.id for i in docker_client.images.list(name=REPOSITORY)}


@pytest.fixture(scope="module")
def rejected(stack: Stack, docker_client: Any) -> Rejected:
    """A version announced by a webhook whose secret is not ours."""
    # Earlier runs on this engine and registry may have left images of the repository.
    images, tags = _images(docker_client), registry_tags(REPOSITORY)
    hook = stack.client.create_webhook("wrong-secret", f"{stack.receiver.url}/webhook",
                                       ["model_version.created"], secret="not-our-secret")
    try:
        register(stack.tracking_uri, "ci-staging", "1", MODEL)
        counts = wait_for(lambda: stack.receiver.counts() if stack.receiver.counts().get(
            "rejected") else None, 60, "MLflow's delivery to be rejected", stack.receiver.log)
        time.sleep(1)  # a build, had one started, would have tagged nothing yet either way
        return Rejected(counts, (images, _images(docker_client)),
                        (tags, registry_tags(REPOSITORY)))
    finally:
        stack.client.delete_webhook(hook.webhook_id)


@pytest.fixture(scope="module")
def released(stack: Stack, rejected: Rejected) -> ledger.ReleaseRecord:
    """A version announced by a webhook with our secret: released by the receiver."""
    hook = stack.client.create_webhook(
        "bentoship", f"{stack.receiver.url}/webhook",
        ["model_version.created", "model_version_tag.set"], secret=SECRET,
    )
    try:
        version = register(stack.tracking_uri, "ci-staging", "2", MODEL)
        assert version == "2"

        def recorded() -> list[ledger.ReleaseRecord]:
            stack.receiver.failed()
            if not stack.receiver.counts().get("released"):  # journaled after the ledger entry
                return []
            return ledger.list_releases(stack.client, name=MODEL)

        [record] = wait_for(recorded, 420, "the webhook's release in the ledger", stack.receiver.log)
        return record
    finally:
        stack.client.delete_webhook(hook.webhook_id)


# --- tests ----------------------------------------------------------------------------------------


def test_a_delivery_with_a_bad_signature_is_rejected_and_nothing_is_built(
    stack: Stack, rejected: Rejected
) -> None:
    assert rejected.counts == {"rejected": 1}
    log = stack.receiver.log.read_text()
    assert "Rejected a delivery: bad signature" in log and "Releasing" not in log
    assert ledger.list_releases(stack.client) == []
    before, after = rejected.images
    assert after == before
    before_tags, after_tags = rejected.tags
    assert after_tags == before_tags
    assert not stack.out.exists()


def test_a_new_version_announced_by_mlflow_is_released(
    stack: Stack, released: ledger.ReleaseRecord
) -> None:
    # The first release of the service: v2 is its control (v1 was never released).
    assert (released.kind, released.status, released.mode) == ("model", "handed-off", "direct")
    assert released.model_versions["control"]["version"] == "2"
    assert "treatment" not in released.model_versions
    repository, _, digest = released.image.partition("@")
    assert repository == REPOSITORY
    assert registry_digest(REPOSITORY, digest) == digest
    labels = oci.find(REPOSITORY, digest).labels  # type: ignore[union-attr]
    assert labels["io.bentoship.model.control.name"] == MODEL
    assert labels["io.bentoship.model.control.version"] == "2"
    assert labels["org.opencontainers.image.version"] == released.image_tag
    counts = stack.receiver.counts()
    assert counts["accepted"] == 1 and counts["released"] == 1
    # The build tagged the version with its manifest: MLflow announced that too, and the
    # receiver acknowledged and ignored it.
    assert counts.get("ignored", 0) >= 1
    [folder] = stack.out.iterdir()
    pipeline_json = json.loads((folder / "pipeline.json").read_text())
    assert digest in json.dumps(pipeline_json)


def report_outcome(receiver_url: str, pipeline_json: Path, outcome: str) -> tuple[int, Any]:
    """Post what the pipeline's `Report outcome` stage posts when it ends with `outcome`."""
    import re

    from pipeline.release.outcome import SIGNATURE_HEADER

    stage = next(s for s in json.loads(pipeline_json.read_text())["stages"]
                 if s["name"] == "Report outcome")
    signed = re.search(rf"== '{outcome}' \? '([^']+)'", stage["customHeaders"][SIGNATURE_HEADER])
    assert signed is not None and stage["url"] == f"{receiver_url}/outcome"
    body = json.dumps({**stage["payload"], "outcome": outcome,
                       "execution_id": "01J-ci-flows"}).encode()
    request = urllib.request.Request(stage["url"], data=body, method="POST", headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: signed[1]})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_replayed_delivery_is_a_duplicate_and_an_old_version_does_nothing(
    stack: Stack, released: ledger.ReleaseRecord
) -> None:
    # The release's pipeline ran and reported it promoted: it is production now.
    [folder] = stack.out.iterdir()
    code, marked = report_outcome(stack.receiver.url, folder / "pipeline.json", "promoted")
    assert (code, marked["status"], marked["release_id"]) == (200, "marked", released.release_id)
    assert ledger.get_release(stack.client, released.release_id).status == "promoted"
    body = json.dumps({"entity": "model_version", "action": "created",
                       "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": MODEL, "version": "2"}}).encode()
    delivery = str(uuid.uuid4())
    code, answer = post_signed(stack.receiver.url, body, delivery)
    assert (code, answer["status"]) == (202, "accepted")
    status = wait_for(
        lambda: (get_json(f"{stack.receiver.url}/deliveries/{delivery}")
                 if get_json(f"{stack.receiver.url}/deliveries/{delivery}")["status"] != "accepted"
                 else None),
        120, "the replayed delivery to be handled", stack.receiver.log,
    )
    assert status["status"] == "skipped"
    assert status["detail"] == (f"{MODEL}/2 is already production's control "
                                f"(release {released.short_id})")
    code, answer = post_signed(stack.receiver.url, body, delivery)
    assert (code, answer["status"]) == (200, "duplicate")
    assert [r.release_id for r in ledger.list_releases(stack.client)] == [released.release_id]


def test_rollback_with_mlflow_down_renders_from_the_registrys_labels(
    stack: Stack, released: ledger.ReleaseRecord, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_TRACKING_URI": down, "BENTOSHIP_HOME": str(stack.home)}
    result = CliRunner().invoke(
        cli, ["rollback", "--to", released.image, "--out", str(tmp_path / "rollback"),
              "--output", "json"], env=env, catch_exceptions=False,
    )
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["recorded"] is False and answer["release"] is None
    assert answer["image"] == released.image and answer["kind"] == "rollback"
    assert answer["models"]["control"] == released.model_versions["control"]
    assert answer["image_tag"] == released.image_tag
    assert f"it is not recorded in the ledger: the MLflow tracking server {down} does not " \
           "answer" in result.stderr
    deployment = (tmp_path / "rollback" / "k8s" / "deployment.yaml").read_text()
    assert f"image: {released.image}" in deployment
    assert "Production is unknown (no --baseline)" in answer["ledger_note"]

    # Naming production's image lets the pipeline replace it and undo a failed rollout.
    production = f"{REPOSITORY}@sha256:{'1' * 64}"
    result = CliRunner().invoke(
        cli, ["rollback", "--to", released.image, "--baseline", production,
              "--out", str(tmp_path / "with-baseline"), "--output", "json"],
        env=env, catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["baseline"] == production
    pipeline_json = json.loads((tmp_path / "with-baseline" / "pipeline.json").read_text())
    assert [stage["name"] for stage in pipeline_json["stages"]] == [
        "Deploy production", "Undo production rollout", "Verdict"]
    assert f"{released.image} replaces {production}" in pipeline_json["description"]
    # Nothing reached the real ledger.
    assert [r.release_id for r in ledger.list_releases(stack.client)] == [released.release_id]


def test_rollback_to_an_image_the_registry_no_longer_has_fails_before_rendering(
    stack: Stack, tmp_path: Path
) -> None:
    gone = f"{REPOSITORY}@sha256:{'0' * 64}"
    result = CliRunner().invoke(
        cli, ["rollback", "--to", gone, "--out", str(tmp_path / "rollback")],
        env={"MLFLOW_TRACKING_URI": stack.tracking_uri, "BENTOSHIP_HOME": str(stack.home)},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert f"{gone} is not in the registry any more" in result.output
    assert not (tmp_path / "rollback").exists()


def test_a_hotfix_refuses_models_whose_manifest_is_not_productions(
    stack: Stack, released: ledger.ReleaseRecord, tmp_path: Path, docker_client: Any
) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("a clean checkout\n")
    run = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*run, "init", "-q"], check=True)
    subprocess.run([*run, "add", "-A"], check=True)
    subprocess.run([*run, "commit", "-qm", "Fix [deploy: code-only]"], check=True)
    sha = subprocess.run([*run, "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    recorded = stack.client.get_model_version(MODEL, "2").tags[DIGEST_TAG]
    stack.client.set_model_version_tag(MODEL, "2", DIGEST_TAG, "0" * 64)
    images_before = {i.id for i in docker_client.images.list()}
    settings = load_settings({"BENTOSHIP_HOME": str(stack.home),
                              "MLFLOW_TRACKING_URI": stack.tracking_uri})
    try:
        with pytest.raises(ArtifactError) as excinfo:
            flows.on_commit("Fix [deploy: code-only]", sha, settings, ReleaseConfig(),
                            tmp_path / "out", print, root=checkout)
    finally:
        stack.client.set_model_version_tag(MODEL, "2", DIGEST_TAG, recorded)
    assert str(excinfo.value) == (
        f"{MODEL}/2 (control): its recorded manifest ({'0' * 64}) is not the one production's "
        f"image {released.image} was built with ({recorded}); a code-only hotfix must serve "
        "the same artifacts. Nothing was built."
    )
    assert {i.id for i in docker_client.images.list()} == images_before
    assert [r.release_id for r in ledger.list_releases(stack.client)] == [released.release_id]
    assert not (tmp_path / "out").exists()
