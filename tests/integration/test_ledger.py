"""The release ledger against real MLflow: an embedded SQLite store and an `mlflow server`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.artifacts
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from pipeline.cli import cli
from pipeline.config import ReleaseConfig
from pipeline.errors import ReleaseError
from pipeline.release import ledger
from pipeline.release.files import render_release
from pipeline.release.spec import ReleaseSpec
from tests.stores import running_mlflow_server

REPO = "127.0.0.1:5000/demo-classifier"
# What a built image's document says its models answer: the canary config judges those answers.
OPENAPI = {
    "openapi": "3.0.3",
    "info": {
        "title": "demo-classifier",
        "version": "1",
        "x-bentoship": {"output": {"task": "classification", "classes": [0, 1]}},
    },
    "paths": {},
}


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def spec(
    n: int, *, kind: str = "model", baseline: int | None = None, **changes: Any
) -> ReleaseSpec:
    fields: dict[str, Any] = {
        "name": "demo-classifier",
        "repository": REPO,
        "digest": digest(n),
        "baseline_digest": digest(baseline) if baseline is not None else None,
        "model_versions": {
            "control": {"name": "demo-classifier", "version": str(n), "run_id": f"{n:032x}"},
        },
        "code_version": "1a2b3c4",
        "image_tag": f"ctl-v{n}.code-1a2b3c4",
        "kind": kind,
        "skip_canary": kind == "rollback",
        "openapi": OPENAPI,
        **changes,
    }
    return ReleaseSpec(**fields)


def record(
    client: MlflowClient, tmp_path: Path, s: ReleaseSpec, status: str = "succeeded"
) -> ledger.ReleaseRecord:
    files = render_release(s, ReleaseConfig(), tmp_path / f"render-{s.digest[-6:]}")
    return ledger.record_release(client, s, files, status, artifact_root=tmp_path / "artifacts")


# --- backends -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port, stopped after the module."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded SQLite store per module: creating one runs every MLflow migration."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite-store') / 'mlflow.db'}"


def _emptied(uri: str) -> str:
    """Start a test from an empty ledger on a store shared by the module."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(ledger.EXPERIMENT)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            client.delete_run(run.info.run_id)
    return uri


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("server", marks=[pytest.mark.mlflow_server, pytest.mark.slow]),
    ]
)
def tracking_uri(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_store" if request.param == "sqlite" else "mlflow_server"
    return _emptied(request.getfixturevalue(fixture))


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


# --- round trips ----------------------------------------------------------------------------------


def test_a_release_round_trips_with_its_files(client: MlflowClient, tmp_path: Path) -> None:
    s = spec(7, baseline=6)
    files = render_release(s, ReleaseConfig(), tmp_path / "render")
    recorded = ledger.record_release(client, s, files, artifact_root=tmp_path / "artifacts")

    assert ledger.get_release(client, recorded.release_id) == recorded
    assert ledger.get_release(client, recorded.release_id[:8]) == recorded
    assert recorded.name == "demo-classifier"
    assert recorded.kind == "model" and recorded.status == "succeeded" and recorded.mode == "canary"
    assert recorded.image == f"{REPO}@{digest(7)}"
    assert recorded.baseline == f"{REPO}@{digest(6)}"
    assert recorded.image_tag == "ctl-v7.code-1a2b3c4"
    assert recorded.code_version == "1a2b3c4"
    assert recorded.model_versions == {
        "control": {"name": "demo-classifier", "version": "7", "run_id": f"{7:032x}"}
    }

    stored = ledger.release_files(client, recorded.release_id)
    assert "openapi.json" in stored
    assert {f"release/{rel}" for rel in files if rel != "openapi.json"} <= set(stored)
    pipeline_copy = mlflow.artifacts.download_artifacts(
        run_id=recorded.release_id,
        artifact_path="release/pipeline.json",
        dst_path=str(tmp_path / "download"),
        tracking_uri=client.tracking_uri,
    )
    assert Path(pipeline_copy).read_text() == files["pipeline.json"].read_text()
    openapi_copy = mlflow.artifacts.download_artifacts(
        run_id=recorded.release_id,
        artifact_path="openapi.json",
        dst_path=str(tmp_path / "download"),
        tracking_uri=client.tracking_uri,
    )
    assert json.loads(Path(openapi_copy).read_text()) == OPENAPI

    run = client.get_run(recorded.release_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["image"] == f"{REPO}@{digest(7)}"
    assert run.data.params["kind"] == "model"
    assert run.data.tags["bentoship.image.digest"] == digest(7)


def test_list_is_newest_first(client: MlflowClient, tmp_path: Path) -> None:
    assert ledger.list_releases(client) == []
    first = record(client, tmp_path, spec(1))
    second = record(client, tmp_path, spec(2, kind="hotfix", baseline=1))
    third = record(client, tmp_path, spec(3, kind="rollback", baseline=2))
    other = record(client, tmp_path, spec(4, name="other-service"))

    ids = [r.release_id for r in ledger.list_releases(client)]
    assert ids == [other.release_id, third.release_id, second.release_id, first.release_id]
    assert [r.release_id for r in ledger.list_releases(client, limit=2)] == ids[:2]
    mine = ledger.list_releases(client, name="demo-classifier")
    assert [r.kind for r in mine] == ["rollback", "hotfix", "model"]
    assert third.mode == "direct" and first.mode == "direct" and second.mode == "canary"


def test_latest_and_previous_successful(client: MlflowClient, tmp_path: Path) -> None:
    assert ledger.latest_successful(client) is None
    model = record(client, tmp_path, spec(1))
    failed = record(client, tmp_path, spec(2, baseline=1), status="failed")
    hotfix = record(client, tmp_path, spec(3, kind="hotfix", baseline=1))

    assert failed.status == "failed"
    assert client.get_run(failed.release_id).info.status == "FAILED"
    assert ledger.latest_successful(client) == hotfix
    assert ledger.latest_successful(client, kinds=("model",)) == model
    # A rollback goes back past the failed release to the last one that succeeded.
    assert ledger.previous_successful(client) == model
    assert ledger.previous_successful(client, hotfix.release_id[:10]) == model
    assert ledger.previous_successful(client, failed.release_id) == model
    assert ledger.previous_successful(client, model.release_id) is None


def test_unknown_id_is_a_clear_error(client: MlflowClient, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="no releases are recorded"):
        ledger.get_release(client, "0123abcd")
    record(client, tmp_path, spec(1))
    with pytest.raises(ReleaseError) as info:
        ledger.get_release(client, "zzzz-not-an-id")
    assert "no release with id 'zzzz-not-an-id'" in str(info.value)
    assert "bentoship releases list" in str(info.value)


def test_an_ambiguous_prefix_is_refused(sqlite_store: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=_emptied(sqlite_store))
    files = render_release(spec(1), ReleaseConfig(), tmp_path / "render")
    # 17 run ids over 16 hex digits: at least two share their first character.
    artifacts = tmp_path / "artifacts"
    ids = [
        ledger.record_release(client, spec(1), files, artifact_root=artifacts).release_id
        for _ in range(17)
    ]
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    with pytest.raises(ReleaseError, match=f"prefix '{shared}' is ambiguous"):
        ledger.get_release(client, shared)


def test_nothing_is_recorded_without_the_rendered_files(
    client: MlflowClient, tmp_path: Path
) -> None:
    files = render_release(spec(1), ReleaseConfig(), tmp_path / "render")
    files["pipeline.json"].unlink()
    with pytest.raises(ReleaseError, match="rendered files are missing"):
        ledger.record_release(client, spec(1), files)
    assert ledger.list_releases(client) == []


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_lists_and_shows_releases(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "BENTOSHIP_HOME": str(tmp_path / "home")}
    runner = CliRunner(env=env)

    empty = runner.invoke(cli, ["releases", "list"], catch_exceptions=False)
    assert empty.exit_code == 0 and "No releases recorded" in empty.stdout

    old = record(client, tmp_path, spec(1))
    new = record(client, tmp_path, spec(2, kind="hotfix", baseline=1))

    table = runner.invoke(cli, ["releases", "list"], catch_exceptions=False)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "(UTC)"]
    assert lines[1].startswith(new.short_id) and lines[2].startswith(old.short_id)
    assert "hotfix" in lines[1] and "ctl-v2.code-1a2b3c4" in lines[1]
    assert "control=demo-classifier/2" in lines[1]

    listed = runner.invoke(cli, ["releases", "list", "--output", "json"], catch_exceptions=False)
    report = json.loads(listed.stdout)
    assert [r["release_id"] for r in report["releases"]] == [new.release_id, old.release_id]

    shown = runner.invoke(cli, ["releases", "show", new.release_id[:8]], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert new.release_id in shown.stdout and f"{REPO}@{digest(2)}" in shown.stdout
    assert "release/pipeline.json" in shown.stdout and "openapi.json" in shown.stdout

    as_json = runner.invoke(
        cli, ["releases", "show", new.release_id, "-o", "json"], catch_exceptions=False
    )
    shown_report = json.loads(as_json.stdout)
    assert shown_report["release"]["image"] == f"{REPO}@{digest(2)}"
    assert "release/k8s/deployment.yaml" in shown_report["files"]

    missing = runner.invoke(cli, ["releases", "show", "nope"])
    assert missing.exit_code == 1
    assert "no release with id 'nope'" in missing.output


def test_a_release_planned_against_an_older_production_is_not_recorded(
    client: MlflowClient, tmp_path: Path
) -> None:
    from pipeline.errors import ReleaseConflict

    first = record(client, tmp_path, spec(1))
    ledger.check_production(client, "demo-classifier", first)  # still production: fine
    # Another release recorded a successor of `first` meanwhile; one planned from nothing (or
    # from `first`) must not become a second successor.
    second = record(client, tmp_path, spec(2, baseline=1))
    with pytest.raises(ReleaseConflict) as refused:
        ledger.check_production(client, "demo-classifier", first)
    message = str(refused.value)
    assert f"it was release {first.short_id}" in message
    assert f"now says release {second.short_id}" in message
    assert "Nothing was submitted or recorded" in message and "run it again" in message
    with pytest.raises(ReleaseConflict, match="it was no release yet"):
        ledger.check_production(client, "demo-classifier", None)
