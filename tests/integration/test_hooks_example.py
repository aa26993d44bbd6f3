"""The worked example of docs/hooks.md, end to end: the command it shows, a container, calls.

`bentoship build --model demo-classifier@champion --config docs/examples/bentoship.toml`
builds the demo classifier behind the team's own request (a patient id, a clinic, the
measurements without the derived areas) and answer (risk band, follow-up, referral); the
answers are compared with the model's own predict_proba on the features the test derives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from pipeline.build import smoke
from pipeline.cli import cli
from pipeline.settings import Settings
from tests.stores import demo_store  # noqa: F401 - fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples"


def example_hooks() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("triage_hooks_doc", EXAMPLE / "triage_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(demo_store: Settings, docker_client: Any, base_image: Any,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {"BENTOSHIP_HOME": str(demo_store.home), "MLFLOW_TRACKING_URI": demo_store.tracking_uri}
    result = CliRunner(env=env).invoke(
        cli, ["build", "--model", "demo-classifier@champion", "--name", "demo-triage",
              "--config", str(EXAMPLE / "bentoship.toml"), "--output", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def url(built: dict[str, Any], docker_client: Any) -> Any:
    running = smoke.start(docker_client, built["image"])
    try:
        yield running.url
    finally:
        smoke.stop(running.container)


def malignant_measurements(hooks: Any) -> dict[str, float]:
    """The measurements of the dataset's first malignant case (class 0), areas left out."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    first = data.data[list(data.target).index(0)]
    values = dict(zip(hooks.FEATURES, first.tolist()))
    return {k: v for k, v in values.items() if k not in hooks.DERIVED}


def own_probabilities(demo_store: Settings, frame: pd.DataFrame) -> Any:  # noqa: F811
    import os

    import mlflow.sklearn

    from pipeline.models import registry

    client = registry.settings_client(demo_store)
    version = client.get_model_version_by_alias("demo-classifier", "champion")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # skops, trusted: our demo
    try:
        mlflow.set_tracking_uri(demo_store.tracking_uri)
        model = mlflow.sklearn.load_model(f"models:/demo-classifier/{version.version}")
    finally:
        os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
    return model.predict_proba(frame)


def test_the_teams_request_and_answer_with_the_models_own_probabilities(
    url: str, demo_store: Settings  # noqa: F811
) -> None:
    hooks = example_hooks()
    base = {c.name: c.example for c in hooks.REQUEST}
    rows = [
        {**base, "patient_id": "p-1", "clinic": "north"},
        {**malignant_measurements(hooks), "patient_id": "p-2", "clinic": "south"},
        {k: v for k, v in base.items() if k != "clinic"} | {"patient_id": "p-3",
                                                            "mean_radius": 9.0},
    ]
    answer = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=10)
    assert answer.status_code == 200, answer.text
    out = answer.json()["rows"]
    features = pd.DataFrame(rows).drop(columns=["patient_id", "clinic"])
    features["mean_area"] = math.pi * features["mean_radius"] ** 2
    features["worst_area"] = math.pi * features["worst_radius"] ** 2
    expected = own_probabilities(demo_store, features[list(hooks.FEATURES)])
    for row, sent, p in zip(out, rows, expected.tolist()):
        assert row["probabilities"] == pytest.approx({"0": p[0], "1": p[1]}, abs=1e-6)
        band = "high" if p[0] >= hooks.HIGH else "medium" if p[0] >= hooks.MEDIUM else "low"
        assert (row["risk_band"], row["follow_up"]) == (band, band != "low")
        assert row["refer_to"] == (sent.get("clinic") if band == "high" else None)
        assert row["prediction"] == int(p[1] >= 0.5)
    assert {r["risk_band"] for r in out} >= {"low", "high"}  # the rows exercise both ends


def test_a_row_the_hook_refuses_is_a_422_naming_it(url: str) -> None:
    hooks = example_hooks()
    row = {c.name: c.example for c in hooks.REQUEST} | {"patient_id": "p-9"}
    bad = {**row, "worst_radius": 1.0}
    answer = httpx.post(f"{url}/predict", json={"rows": [row, bad]}, timeout=10)
    assert answer.status_code == 422
    assert answer.json() == {"error": "invalid_input", "detail": [
        {"row": 1, "field": "worst_radius", "problem": "must be at least mean_radius"}]}
    # A derived feature is not part of this API: sending it is the caller's mistake.
    answer = httpx.post(f"{url}/predict", json={"rows": [{**row, "mean_area": 3.0}]}, timeout=10)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == "mean_area"


def test_the_served_spec_is_the_teams_contract(url: str) -> None:
    spec = httpx.get(f"{url}/docs.json", timeout=10).json()
    row = spec["components"]["schemas"]["Row"]
    assert {"patient_id", "clinic", "mean_radius"} <= set(row["properties"])
    assert "mean_area" not in row["properties"] and "worst_area" not in row["properties"]
    assert "clinic" not in row["required"] and "patient_id" in row["required"]
    answer = spec["components"]["schemas"]["PredictionRow"]
    assert answer["properties"]["follow_up"]["type"] == "boolean"
    assert answer["properties"]["refer_to"]["nullable"] is True
    assert {"risk_band", "follow_up", "prediction", "probabilities"} <= set(answer["required"])


def test_the_hook_file_is_in_the_code_layer_and_the_key_is_the_patient(
    built: dict[str, Any], url: str
) -> None:
    meta = httpx.get(f"{url}/metadata", timeout=10).json()
    assert meta["hooks"]["module"] == "services.team_hooks"
    assert meta["routing"]["key_field"] == "patient_id"
    assert built["smoke_test_rows"][0]["risk_band"] in ("low", "medium", "high")
