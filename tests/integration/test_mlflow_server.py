"""The spine against a real `mlflow server` process over HTTP instead of the embedded SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from tests.stores import running_mlflow_server

pytestmark = [pytest.mark.mlflow_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("http-store")
    with running_mlflow_server(root) as url:
        env = {"MLFLOW_TRACKING_URI": url, "BENTOSHIP_HOME": str(root / "home")}
        trained = CliRunner().invoke(cli, ["demo", "train", "--output", "json"], env=env,
                                     catch_exceptions=False)
        assert trained.exit_code == 0, trained.output
        assert json.loads(trained.stdout)["tracking_uri"] == url
        yield env


def test_unknown_alias_over_http_lists_what_exists(server_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["build", "--model", "demo-classifier@prod"], env=server_env)
    assert result.exit_code == 1
    assert "no alias @prod" in result.output and "@champion -> 1" in result.output


@pytest.mark.docker
def test_build_from_an_mlflow_server(server_env: dict[str, str], docker_client, base_image) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        cli,
        ["build", "--model", "demo-classifier@challenger", "--name", "http-store", "--output", "json"],
        env=server_env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tag"].startswith("ctl-v2.code-")
    assert report["labels"]["io.bentoship.model.control.version"] == "2"
    assert [row["variant"] for row in report["smoke_test_rows"]] == ["control"] * 5


def test_a_rebuild_confirms_mlflow_s_answer_over_its_rest_api(
    server_env: dict[str, str],
) -> None:
    from pipeline.models import recall
    from pipeline.models.registry import client_for, parse_ref, resolve

    url = server_env["MLFLOW_TRACKING_URI"]
    client = client_for(url)
    kept: dict[str, dict[str, object]] = {}
    for text in ("demo-classifier@champion", "demo-classifier/2"):
        ref = parse_ref(text)
        mv = resolve(client, ref)
        kept[text] = recall.record(url, mv)
        assert recall.confirm(kept[text], url, ref) == mv
    champion = parse_ref("demo-classifier@champion")
    client.set_registered_model_alias("demo-classifier", "champion", "2")
    try:
        # moved: MLflow is asked
        assert recall.confirm(kept["demo-classifier@champion"], url, champion) is None
    finally:
        client.set_registered_model_alias("demo-classifier", "champion", "1")
    assert recall.confirm(kept["demo-classifier@champion"], url, champion) is not None
