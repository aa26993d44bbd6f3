"""After training: which build a newly registered version asks for, and when nothing happens."""

from __future__ import annotations

from pathlib import Path

from pipeline import flows
from pipeline.config import CiConfig, ReleaseConfig
from pipeline.settings import load_settings
from tests.unit.pipeline.flows.support import record


def test_first_release_makes_the_new_version_the_control() -> None:
    request, why = flows.plan_model_release("demo-classifier", "1", None, CiConfig(),
                                            "demo-classifier")
    assert request is not None
    assert (request.control, request.treatment) == ("demo-classifier/1", None)
    assert "first release" in why


def test_new_version_is_the_treatment_beside_productions_control() -> None:
    production = record(1, control="1", treatment="2")
    request, why = flows.plan_model_release("demo-classifier", "3", production,
                                            CiConfig(treatment_weight=20), "demo-classifier")
    assert request is not None
    assert (request.control, request.treatment) == ("demo-classifier/1", "demo-classifier/3")
    assert request.treatment_weight == 20
    assert why.startswith("demo-classifier/3 is the treatment (20%) beside production's control")


def test_new_version_replaces_the_control_by_configuration() -> None:
    request, _ = flows.plan_model_release("demo-classifier", "3", record(1),
                                          CiConfig(new_version_as="control"),
                                          "demo-classifier")
    assert request is not None
    assert (request.control, request.treatment) == ("demo-classifier/3", None)


def test_productions_own_control_is_nothing_to_release() -> None:
    production = record(7)
    request, why = flows.plan_model_release("demo-classifier", "1", production, CiConfig(),
                                            "demo-classifier")
    assert request is None
    assert why == f"demo-classifier/1 is already production's control (release {production.short_id})"


def test_unfollowed_model_is_skipped_before_mlflow_is_asked(tmp_path: Path) -> None:
    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path / "home")})
    result = flows.on_model_registered("other-model", "1", settings, ReleaseConfig(),
                                       CiConfig(models=("demo-classifier",)),
                                       tmp_path / "out", print)
    assert result.action == "skipped"
    assert result.reason == "other-model is not among the models [ci] follows (demo-classifier)"
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()

