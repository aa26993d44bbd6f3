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
from pipeline.errors import BadTransition, ReleaseError, ReleaseNotFound
from pipeline.release import ledger, marking, recording
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
    client: MlflowClient, tmp_path: Path, s: ReleaseSpec, status: str = "promoted"
) -> ledger.ReleaseRecord:
    """Record a release with `status` (default: promoted, what production is)."""
    files = render_release(s, ReleaseConfig(), tmp_path / f"render-{s.digest[-6:]}")
    return recording.record_release(client, s, files, status, artifact_root=tmp_path / "artifacts")


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
    recorded = recording.record_release(client, s, files, artifact_root=tmp_path / "artifacts")

    assert ledger.get_release(client, recorded.release_id) == recorded
    assert ledger.get_release(client, recorded.release_id[:8]) == recorded
    assert recorded.name == "demo-classifier"
    assert recorded.kind == "model" and recorded.status == "handed-off" and recorded.mode == "canary"
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
        recording.record_release(client, spec(1), files, artifact_root=artifacts).release_id
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
        recording.record_release(client, spec(1), files)
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


# --- outcomes -------------------------------------------------------------------------------------


def test_a_release_is_production_only_once_promoted(client: MlflowClient, tmp_path: Path) -> None:
    first = record(client, tmp_path, spec(1), status="handed-off")
    # Handed off but never reported: production is unknown, and a next release must not go
    # straight to production as if it were the first.
    with pytest.raises(ReleaseError) as unknown:
        ledger.latest_successful(client, name="demo-classifier")
    assert f"release {first.short_id}" in str(unknown.value)
    assert f"bentoship releases mark {first.short_id} --status promoted" in str(unknown.value)

    done = marking.mark_release(client, first.release_id[:8], "promoted", by="alice@laptop",
                               reason="canary passed")
    assert (done.changed, done.previous, done.record.status) == (True, "handed-off", "promoted")
    assert ledger.latest_successful(client, name="demo-classifier") == done.record

    # Newer releases that are not promoted are never production, whatever became of them.
    for n, status in ((2, "handed-off"), (3, "failed"), (4, "rehearsal_failed"), (5, "rendered")):
        record(client, tmp_path, spec(n, baseline=1), status=status)
    assert ledger.latest_successful(client, name="demo-classifier") == done.record
    assert [r.status for r in ledger.list_releases(client)] == [
        "rendered", "rehearsal_failed", "failed", "handed-off", "promoted"]
    assert client.get_run(ledger.list_releases(client)[1].release_id).info.status == "FAILED"


def test_a_canary_that_failed_is_not_what_rollback_returns_to(
    client: MlflowClient, tmp_path: Path
) -> None:
    one = record(client, tmp_path, spec(1))
    two = record(client, tmp_path, spec(2, baseline=1), status="handed-off")
    marking.mark_release(client, two.release_id, "failed", by="pipeline")
    three = record(client, tmp_path, spec(3, baseline=1), status="handed-off")
    marking.mark_release(client, three.release_id, "promoted", by="pipeline")
    # Production is three; the one promoted before it is one, not the failed canary two.
    assert ledger.latest_successful(client, name="demo-classifier").release_id == three.release_id
    assert ledger.previous_successful(client, name="demo-classifier").release_id == one.release_id


def test_only_the_allowed_transitions_are_recorded_with_their_history(
    client: MlflowClient, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    release = record(client, tmp_path, spec(1), status="handed-off")
    at = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    marking.mark_release(client, release.release_id, "promoted", by="spinnaker", now=at)
    again = marking.mark_release(client, release.release_id, "promoted", by="someone else")
    assert again.changed is False  # a retried report changes nothing, not even who marked it
    with pytest.raises(BadTransition) as refused:
        marking.mark_release(client, release.release_id, "failed", by="bob")
    assert "is promoted; it cannot be marked failed" in str(refused.value)
    assert "from promoted only rolled-back" in str(refused.value)
    marking.mark_release(client, release.release_id, "rolled-back", by="bob", reason="p99 spike")
    with pytest.raises(BadTransition, match="is rolled-back; it cannot be marked promoted: "
                                            "rolled-back is final"):
        marking.mark_release(client, release.release_id, "promoted", by="replayed webhook")

    shown = ledger.get_release(client, release.release_id)
    assert (shown.status, shown.outcome_by, shown.outcome_reason) == ("rolled-back", "bob",
                                                                      "p99 spike")
    history = marking.outcome_history(client, release.release_id)
    assert [(h["from"], h["to"], h["by"]) for h in history] == [
        ("handed-off", "promoted", "spinnaker"), ("promoted", "rolled-back", "bob")]
    assert history[0]["at"] == "2026-05-04T03:02:01+00:00"
    with pytest.raises(ReleaseNotFound, match="no release with id 'feedbeef'"):
        marking.mark_release(client, "feedbeef", "promoted", by="x")
    rendered = record(client, tmp_path, spec(2), status="rendered")
    with pytest.raises(BadTransition, match="rendered is final"):
        marking.mark_release(client, rendered.release_id, "promoted", by="x")


def test_releases_recorded_as_succeeded_read_as_handed_off(
    client: MlflowClient, tmp_path: Path
) -> None:
    old = record(client, tmp_path, spec(1), status="handed-off")
    client.set_tag(old.release_id, "bentoship.status", "succeeded")  # as releases before outcomes
    assert ledger.get_release(client, old.release_id).status == "handed-off"
    with pytest.raises(ReleaseError, match="production of demo-classifier is unknown"):
        ledger.latest_successful(client, name="demo-classifier")
    marked = marking.mark_release(client, old.release_id, "promoted", by="migration")
    assert marked.previous == "handed-off" and marked.record.status == "promoted"


def test_a_promoted_rollback_marks_the_release_it_replaced_rolled_back(
    client: MlflowClient, tmp_path: Path
) -> None:
    one = record(client, tmp_path, spec(1))
    two = record(client, tmp_path, spec(2, baseline=1))
    files = render_release(spec(1, kind="rollback", baseline=2), ReleaseConfig(), tmp_path / "rb")
    back = recording.record_release(client, spec(1, kind="rollback", baseline=2), files,
                                 artifact_root=tmp_path / "artifacts",
                                 predecessor=two.release_id)
    done = marking.mark_release(client, back.release_id, "promoted", by="pipeline")
    assert [r.release_id for r in done.also] == [two.release_id]
    assert ledger.get_release(client, two.release_id).status == "rolled-back"
    assert ledger.get_release(client, one.release_id).status == "promoted"
    assert ledger.latest_successful(client, name="demo-classifier").release_id == back.release_id


def test_an_opened_release_is_never_production_and_can_be_discarded(
    client: MlflowClient, tmp_path: Path
) -> None:
    one = record(client, tmp_path, spec(1))
    run_id = recording.open_release(client, spec(2, baseline=1), artifact_root=tmp_path / "a")
    assert ledger.get_release(client, run_id).status == "recording"
    assert ledger.latest_successful(client, name="demo-classifier") == one
    assert [r.release_id for r in ledger.list_releases(client)] == [one.release_id]
    recording.discard_release(client, run_id)
    assert [r.release_id for r in ledger.list_releases(client)] == [one.release_id]


def test_a_run_an_interrupted_release_left_is_not_listed_and_the_next_release_deletes_it(
    client: MlflowClient, tmp_path: Path
) -> None:
    one = record(client, tmp_path, spec(1))
    left = recording.open_release(client, spec(2, baseline=1), artifact_root=tmp_path / "a")
    # Killed after everything but the status tag, the commit point, was written.
    client.set_tag(left, "bentoship.kind", "model")
    assert [r.release_id for r in ledger.list_releases(client)] == [one.release_id]
    assert ledger.latest_successful(client, name="demo-classifier") == one
    assert recording.discard_unrecorded(client, "demo-classifier") == [left]
    assert recording.discard_unrecorded(client, "demo-classifier") == []
    assert ledger.get_release(client, one.release_id) == one


def test_cli_marks_a_release_and_explains_what_it_cannot(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "BENTOSHIP_HOME": str(tmp_path / "home"),
           "BENTOSHIP_CI_JOB": "spinnaker run job 42"}
    runner = CliRunner(env=env)
    release = record(client, tmp_path, spec(1), status="handed-off")

    helped = runner.invoke(cli, ["releases", "mark", "--help"], catch_exceptions=False)
    assert helped.exit_code == 0
    assert "handed-off -> promoted" in helped.output and "promoted   -> rolled-back" in helped.output

    marked = runner.invoke(cli, ["releases", "mark", release.short_id, "--status", "promoted",
                                 "--reason", "score 97", "-o", "json"], catch_exceptions=False)
    assert marked.exit_code == 0, marked.output
    answer = json.loads(marked.stdout)
    assert (answer["release_id"], answer["previous"], answer["status"], answer["changed"]) == (
        release.release_id, "handed-off", "promoted", True)
    assert "(CI job spinnaker run job 42)" in answer["release"]["outcome_by"]

    same = runner.invoke(cli, ["releases", "mark", release.short_id, "--status", "promoted"],
                         catch_exceptions=False)
    assert same.exit_code == 0 and "promoted already; nothing changed" in same.stdout

    bad = runner.invoke(cli, ["releases", "mark", release.short_id, "--status", "failed"])
    assert bad.exit_code == 1
    assert "is promoted; it cannot be marked failed" in bad.output

    unknown = runner.invoke(cli, ["releases", "mark", "abcdef12", "--status", "failed"])
    assert unknown.exit_code == 1 and "no release with id 'abcdef12'" in unknown.output
    usage = runner.invoke(cli, ["releases", "mark", release.short_id, "--status", "succeeded"])
    assert usage.exit_code == 2 and "'succeeded' is not one of" in usage.output

    shown = runner.invoke(cli, ["releases", "show", release.short_id], catch_exceptions=False)
    assert "Status    promoted (since " in shown.stdout and "score 97" in shown.stdout
    assert "History" in shown.stdout and "handed-off -> promoted" in shown.stdout
