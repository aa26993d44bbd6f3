"""The CLI's edge: exit codes, messages, machine-readable output. Real MLflow stores, no Docker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ModelNotFoundError
from pipeline.settings import Settings


def env_for(settings: Settings) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": settings.tracking_uri, "BENTOSHIP_HOME": str(settings.home)}


def test_help_teaches_the_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0
    for command in ("build", "release", "releases", "rollback", "run", "serve", "openapi", "demo"):
        assert command in result.output, command
    build_help = CliRunner().invoke(cli, ["build", "--help"], catch_exceptions=False).output
    assert "ctl-v<N>" in build_help and "--treatment-weight" in build_help


@pytest.mark.parametrize("ref", ["demo-classifier", "demo-classifier/latest", "a/b/c"])
def test_a_malformed_model_reference_is_a_usage_error(ref: str) -> None:
    result = CliRunner().invoke(cli, ["build", "--model", ref])
    assert result.exit_code == 2
    assert "NAME@ALIAS" in result.output or "must be a number" in result.output


def test_treatment_weight_without_treatment_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        cli, ["build", "--model", "demo-classifier@champion", "--treatment-weight", "20"]
    )
    assert result.exit_code == 2
    assert "--treatment-weight needs --treatment" in result.output


def test_unknown_model_in_an_empty_store_says_how_to_get_one(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "BENTOSHIP_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["build", "--model", "fraud@champion"], env=env)
    assert result.exit_code == 1
    assert "no registered model named 'fraud'" in result.output
    assert "bentoship demo train" in result.output


def test_unknown_version_exits_1_listing_versions(demo_store: Settings) -> None:
    result = CliRunner().invoke(cli, ["build", "--model", "demo-classifier/9"],
                                env=env_for(demo_store))
    assert result.exit_code == 1
    assert "Versions: 1, 2" in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_real_exception(demo_store: Settings) -> None:
    with pytest.raises(ModelNotFoundError):
        CliRunner().invoke(cli, ["--debug", "build", "--model", "demo-classifier/9"],
                           env=env_for(demo_store), catch_exceptions=False)


def test_demo_train_json_is_the_only_thing_on_stdout(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "BENTOSHIP_HOME": str(tmp_path)}
    runner = CliRunner()
    first = runner.invoke(cli, ["demo", "train", "--output", "json"], env=env,
                          catch_exceptions=False)
    report = json.loads(first.stdout)
    assert report["control"]["model"] == "demo-classifier/1"
    assert report["treatment"]["aliases"] == ["challenger"]
    again = runner.invoke(cli, ["demo", "train", "--if-missing", "--output", "json"], env=env,
                          catch_exceptions=False)
    assert json.loads(again.stdout)["trained"] is False


def test_base_without_an_engine_exits_1_and_prints_no_reference(tmp_path: Path) -> None:
    # What ci/setup.sh captures: stdout carries the base image reference alone, or nothing.
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "BENTOSHIP_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["base"], env=env)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "No Docker engine answers" in result.stderr
