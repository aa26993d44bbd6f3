"""The deploy story end to end, on real components, through the CI definitions' own scripts.

    train and register v1      -> `ci on-model-registered` (GitHub model job)  -> release 1
    register v2 (MLflow server) -> webhook -> `ci webhook` receiver              -> release 2
    commit without a flag      -> `ci on-commit` (GitHub hotfix job)           -> nothing
    commit `[deploy: code-only]` -> `ci on-commit`                             -> release 3
    `rollback` (GitHub rollback job)                                           -> release 4

Each step is checked by the registry (the digest is served), the image labels (as the registry
serves them) and the ledger (the MLflow experiment on the server).

A code-only change needs a checkout that changes, so the story runs on a git repository of its
own: a snapshot of this working tree (tracked and untracked files, as the tests see them) is
committed into `origin`, and every CI job runs in a fresh clone of it, as CI jobs do. The
`bentoship` on the jobs' PATH is `python -m pipeline` run from that clone (PYTHONPATH and the
working directory put the clone's `pipeline/` and `services/` first; a check below makes sure),
so the code version is the clone's commit and `--sha` is checked against it for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.build import image, oci
from pipeline.models import demo
from pipeline.release import ledger, marking
from tests.integration.test_ci_flows import (
    SECRET,
    bentoship_env,
    register,
    registry_digest,
    wait_for,
    webhook_mlflow_server,
    webhook_receiver,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.mlflow_server]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "story-classifier"
REPOSITORY = f"127.0.0.1:5000/{MODEL}"
WORKFLOW = yaml.safe_load((ROOT / "ci" / "github-actions.yml").read_text())


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Story", "-c", "user.email=story@example.com",
         *args], check=True, capture_output=True, text=True,
    ).stdout.strip()


def snapshot(dest: Path) -> None:
    """Commit this working tree as the tests see it (without ignored files) into `dest`."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():  # skip files deleted but not yet committed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "Snapshot of the working tree under test")


class Story:
    def __init__(self, root: Path, tracking_uri: str) -> None:
        self.root = root
        self.origin = root / "origin"
        self.origin.mkdir()
        snapshot(self.origin)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.home = root / "home"
        self.bin = root / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "bentoship"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pipeline "$@"\n')
        wrapper.chmod(0o755)
        self.jobs = 0

    def checkout(self) -> Path:
        """A fresh clone of origin's main, as a CI job starts with."""
        self.jobs += 1
        path = self.root / f"job-{self.jobs}"
        subprocess.run(["git", "clone", "-q", str(self.origin), str(path)], check=True)
        return path

    def env(self, checkout: Path, **step_env: str) -> dict[str, str]:
        env = bentoship_env(self.home, self.tracking_uri, PYTHONPATH=str(checkout), **step_env)
        env["PATH"] = f"{self.bin}:{env['PATH']}"
        return env

    def run_step(self, job: str, step_id: str, **step_env: str) -> tuple[Path, dict[str, Any]]:
        """Run a step's `run:` script of ci/github-actions.yml in a fresh checkout."""
        [step] = [s for s in WORKFLOW["jobs"][job]["steps"] if s.get("id") == step_id]
        checkout = self.checkout()
        step_env["RELEASE_DIR"] = str(checkout.with_name(f"{checkout.name}-runner-temp"))
        assert set(step["env"]) == set(step_env), "the test gives exactly the step's env"
        proc = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=checkout,
                              env=self.env(checkout, **step_env), capture_output=True, text=True,
                              timeout=900, check=False)
        assert proc.returncode == 0, f"{job}/{step_id} failed:\n{proc.stderr[-4000:]}"
        assert git(checkout, "status", "--porcelain") == "", "the job left files in the checkout"
        return checkout, json.loads(Path(step_env["RELEASE_DIR"], "release.json").read_text())

    def releases(self) -> list[ledger.ReleaseRecord]:
        return ledger.list_releases(self.client, name=MODEL)

    def promote(self, record: ledger.ReleaseRecord) -> None:
        """What the release's pipeline reports once its canary passed (or its deploy)."""
        marking.mark_release(self.client, record.release_id, "promoted", by="e2e: the pipeline")

    def commit(self, path: str, text: str, message: str) -> str:
        target = self.origin / path
        target.write_text(target.read_text() + text)
        git(self.origin, "commit", "-qam", message)
        return git(self.origin, "rev-parse", "HEAD")


def labels_of(record: ledger.ReleaseRecord) -> dict[str, str]:
    """The labels of a released image as the registry serves them, after checking its digest."""
    repository, _, digest = record.image.partition("@")
    assert repository == REPOSITORY
    assert registry_digest(repository, digest) == digest, f"{record.image} is not served"
    found = oci.find(repository, digest)
    assert found is not None
    return found.labels


def models(labels: dict[str, str]) -> dict[str, str]:
    return {key.split(".")[3]: value for key, value in labels.items()
            if key.startswith("io.bentoship.model.") and key.endswith(".version")}


def manifests(labels: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in labels.items() if key.endswith(".manifest_sha256")}


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: Any):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("story")
    (root / "mlflow").mkdir()
    with webhook_mlflow_server(root / "mlflow") as url:
        yield Story(root, url)


def test_train_release_webhook_hotfix_rollback(story: Story, docker_client: Any) -> None:
    # The jobs run the clone's code, not this checkout's.
    probe = story.checkout()
    imported = subprocess.run(
        [sys.executable, "-c", ("import pipeline, services; print(pipeline.__file__); "
         "print(services.__file__)")], cwd=probe, env=story.env(probe), check=True,
        capture_output=True, text=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(probe) for p in imported), imported
    first_commit = git(story.origin, "rev-parse", "HEAD")

    # 1. Train, register v1; the training job's last step releases it.
    demo.train(story.tracking_uri, name="story-staging")  # v1 scikit-learn, v2 XGBoost
    assert register(story.tracking_uri, "story-staging", "1", MODEL) == "1"
    _, answer = story.run_step("model", "on-model-registered", MODEL_NAME=MODEL, MODEL_VERSION="1")
    assert answer["action"] == "released"
    [r1] = story.releases()
    assert (r1.kind, r1.mode, r1.baseline) == ("model", "direct", None)
    story.promote(r1)  # its pipeline ran and deployed it: production now
    assert r1.image == answer["release"]["image"]
    labels1 = labels_of(r1)
    assert models(labels1) == {"control": "1"}
    assert labels1["io.bentoship.code.version"] == first_commit[:7] == r1.code_version

    # 2. Register v2 through the server: MLflow's webhook reaches the receiver, which releases
    #    v2 as the treatment beside production's control v1.
    receiver_checkout = story.checkout()
    with webhook_receiver(receiver_checkout, story.env(receiver_checkout), story.root / "hooks",
                          story.root / "receiver.log") as receiver:
        hook = story.client.create_webhook("bentoship", f"{receiver.url}/webhook",
                                           ["model_version.created"], secret=SECRET)
        assert register(story.tracking_uri, "story-staging", "2", MODEL) == "2"

        def two_releases() -> list[ledger.ReleaseRecord] | None:
            receiver.failed()
            if not receiver.counts().get("released"):  # journaled after the ledger entry
                return None
            found = story.releases()
            return found if len(found) == 2 else None

        r2, _ = wait_for(two_releases, 420, "the webhook's release", receiver.log)
        assert receiver.counts() == {"accepted": 1, "released": 1}
        story.client.delete_webhook(hook.webhook_id)
    assert (r2.kind, r2.mode, r2.baseline) == ("model", "canary", r1.image)
    story.promote(r2)
    labels2 = labels_of(r2)
    assert models(labels2) == {"control": "1", "treatment": "2"}
    assert labels2["io.bentoship.weights"] == "control=90,treatment=10"
    assert manifests(labels2)["io.bentoship.model.control.manifest_sha256"] == (
        manifests(labels1)["io.bentoship.model.control.manifest_sha256"]
    )

    # 3a. A commit without a deploy flag deploys nothing, and says why.
    sha = story.commit("README.md", "\n<!-- reworded -->\n", "Reword the README")
    _, answer = story.run_step("hotfix", "on-commit", COMMIT_MESSAGE="Reword the README\n",
                               COMMIT_SHA=sha)
    assert answer["action"] == "skipped" and answer["release"] is None
    assert answer["reason"].startswith("no deploy flags in the commit message: nothing to deploy")
    assert len(story.releases()) == 2

    # 3b. A code-only hotfix: the same models, the new code, only the code layer is new.
    message = "Note where the hooks run\n\n[deploy: code-only]\n"
    sha = story.commit("services/hooks.py", "\n# Hooks run in the request path: keep them fast.\n",
                       message)
    _, answer = story.run_step("hotfix", "on-commit", COMMIT_MESSAGE=message, COMMIT_SHA=sha)
    assert answer["action"] == "released"
    r3 = story.releases()[0]
    assert (r3.kind, r3.mode, r3.baseline) == ("hotfix", "canary", r2.image)
    story.promote(r3)
    assert r3.model_versions == r2.model_versions
    assert r3.code_version == sha[:7] != r2.code_version
    labels3 = labels_of(r3)
    assert models(labels3) == models(labels2) and manifests(labels3) == manifests(labels2)
    assert labels3["io.bentoship.weights"] == labels2["io.bentoship.weights"]
    assert labels3["org.opencontainers.image.revision"] == sha
    assert r3.image_tag == f"ctl-v1.trt-v2.code-{sha[:7]}"
    before = image.layers(docker_client, r2.image)
    after = image.layers(docker_client, r3.image)
    assert [layer.group for layer in before] == [layer.group for layer in after]
    changed = [new.group for old, new in zip(before, after) if old.diff_id != new.diff_id]
    assert changed == ["code"], [(layer.group, layer.diff_id[:19]) for layer in after]

    # 4. Roll back: no build, the release before production (release 2's image) again.
    images_before = {i.id for i in docker_client.images.list()}
    _, answer = story.run_step("rollback", "rollback", ROLLBACK_TO="")
    assert answer["recorded"] is True
    r4 = story.releases()[0]
    assert (r4.kind, r4.mode, r4.status) == ("rollback", "direct", "handed-off")
    assert r4.image == r2.image and r4.baseline == r3.image
    assert r4.model_versions == r2.model_versions and r4.code_version == r2.code_version
    assert labels_of(r4) == labels2
    assert {i.id for i in docker_client.images.list()} == images_before
    assert [r.kind for r in story.releases()] == ["rollback", "hotfix", "model", "model"]
    deployment = Path(answer["files"]["k8s/deployment.yaml"]).read_text()
    assert f"image: {r2.image}" in deployment
