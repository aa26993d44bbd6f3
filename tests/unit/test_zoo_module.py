"""The model zoo (tests/zoo.py) registers what it says, and its answers follow the contract.

The container test compares a built image's answers with `ZooCase.expected`; these checks make
sure a mismatch there is the service's, not the zoo's: every version is READY in a real SQLite
store, rows carry exactly the signature's columns, answers have the contract's shape and are
what the logged artifact itself predicts, and skops refusals match what skops reports.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.models import registry
from pipeline.settings import Settings
from tests.stores import store_settings
from tests.zoo import CASES, ZooCase, foreign_skops_types, nested_artifact, register_zoo

pytestmark = pytest.mark.slow

_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "double": float, "float": float, "long": int, "integer": int, "string": str, "boolean": bool,
}  # fmt: skip
SKOPS_CASES = [
    "sklearn-binary", "sklearn-multiclass", "sklearn-regressor", "sklearn-multioutput",
    "sklearn-columns", "xgboost-in-skops-pipeline",
]  # fmt: skip
FLAVORS = {
    **dict.fromkeys(SKOPS_CASES, ("sklearn", "skops")),
    "xgboost-classifier": ("xgboost", "ubj"),
    "xgboost-regressor": ("xgboost", "ubj"),
    "lightgbm": ("lightgbm", "model.lgb"),
    "onnx": ("onnx", "model.onnx"),
    "cloudpickle": ("sklearn", "cloudpickle"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return store_settings(tmp_path_factory.mktemp("zoo-store"))


@pytest.fixture(scope="module")
def zoo(store: Settings) -> dict[str, ZooCase]:
    import mlflow

    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"),
              os.environ.get("MLFLOW_REGISTRY_URI"))  # fmt: skip
    cases = register_zoo(store.tracking_uri)
    after = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"),
             os.environ.get("MLFLOW_REGISTRY_URI"))  # fmt: skip
    assert after == before, "register_zoo left MLflow pointing elsewhere"
    return cases


@pytest.fixture(scope="module")
def artifacts(
    zoo: dict[str, ZooCase], store: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    client = registry.settings_client(store)
    root = tmp_path_factory.mktemp("zoo-download")
    return {
        key: registry.download(
            client, registry.resolve(client, f"{c.registered_name}/{c.version}"), root / key
        )
        for key, c in zoo.items()
    }


def mlmodel(path: Path) -> Any:
    from mlflow.models import Model

    return Model.load(str(path / "MLmodel"))


def test_every_case_is_registered_ready_with_its_artifacts_in_the_store(
    zoo: dict[str, ZooCase], store: Settings
) -> None:
    assert list(zoo) == list(CASES)
    client = registry.settings_client(store)
    for key, case in zoo.items():
        assert case.key == key and case.registered_name == f"zoo-{key}"
        mv = client.get_model_version(case.registered_name, case.version)
        assert (mv.status, case.version) == ("READY", "1"), key
        # Artifacts where the project's settings put them, not in ./mlruns of the cwd.
        location = client.get_model_version_download_uri(case.registered_name, case.version)
        assert location.startswith(store.artifact_root.as_uri()), (key, location)


@pytest.mark.parametrize("key", list(CASES))
def test_flavor_and_serialization_are_what_the_case_is_for(
    key: str, artifacts: dict[str, Path]
) -> None:
    flavor, form = FLAVORS[key]
    flavors = mlmodel(artifacts[key]).flavors
    assert flavor in flavors
    conf = flavors[flavor]
    if flavor == "sklearn":
        assert conf["serialization_format"] == form
    elif flavor == "xgboost":
        assert conf["model_format"] == form
    else:
        assert conf["data"] == form
    assert (artifacts[key] / conf.get("data", conf.get("pickled_model", ""))).is_file()


@pytest.mark.parametrize("key", list(CASES))
def test_rows_have_the_signature_columns_as_json_values(
    key: str, zoo: dict[str, ZooCase], artifacts: dict[str, Path]
) -> None:
    case = zoo[key]
    specs = mlmodel(artifacts[key]).signature.inputs.to_dict()
    names = [spec["name"] for spec in specs]
    types = [spec["type"] for spec in specs]
    assert len(case.rows) == 20
    for row in case.rows:
        assert list(row) == names
        for name, kind in zip(names, types):
            assert type(row[name]) is _JSON_TYPES[kind], (name, kind, row[name])
    assert json.loads(json.dumps(case.rows)) == case.rows


def test_the_columns_case_has_string_and_long_columns(artifacts: dict[str, Path]) -> None:
    specs = mlmodel(artifacts["sklearn-columns"]).signature.inputs.to_dict()
    kinds = {spec["name"]: spec["type"] for spec in specs}
    assert kinds == {"color": "string", "size": "string", "count": "long", "age": "long"}


@pytest.mark.parametrize("key", list(CASES))
def test_expected_follows_the_response_contract(key: str, zoo: dict[str, ZooCase]) -> None:
    case = zoo[key]
    assert len(case.expected) == len(case.rows)
    assert json.loads(json.dumps(case.expected)) == case.expected  # plain JSON values
    if case.task == "regression":
        assert case.classes == ()
        for answer in case.expected:
            assert list(answer) == ["prediction"]
            prediction = answer["prediction"]
            values = prediction.values() if isinstance(prediction, dict) else [prediction]
            assert all(type(v) is float and math.isfinite(v) for v in values)
        return

    assert case.task == "classification" and len(case.classes) >= 2
    keys = [str(c) for c in case.classes]
    binary = len(case.classes) == 2
    for answer in case.expected:
        assert set(answer) == ({"prediction", "probabilities", "score"} if binary
                               else {"prediction", "probabilities"})  # fmt: skip
        probabilities = answer["probabilities"]
        assert list(probabilities) == keys
        assert abs(sum(probabilities.values()) - 1.0) < 1e-6
        assert answer["prediction"] in case.classes
        assert type(answer["prediction"]) is type(case.classes[0])
        p = list(probabilities.values())
        if binary:
            assert answer["score"] == p[1]
            assert answer["prediction"] == case.classes[1 if p[1] >= 0.5 else 0]
        else:
            assert answer["prediction"] == case.classes[int(np.argmax(p))]
    # A model that answers one class for every row would make a weak comparison.
    assert len({a["prediction"] for a in case.expected}) >= 2


def test_labels_and_targets_are_the_ones_each_case_is_about(zoo: dict[str, ZooCase]) -> None:
    assert zoo["sklearn-binary"].classes == (0, 1)
    assert zoo["sklearn-multiclass"].classes == ("setosa", "versicolor", "virginica")
    assert zoo["sklearn-columns"].classes == ("no", "yes")
    assert zoo["xgboost-classifier"].classes == (0, 1, 2)
    assert zoo["onnx"].classes == (0, 1, 2)
    assert all(set(a["prediction"]) == {"weight", "waist"}
               for a in zoo["sklearn-multioutput"].expected)  # fmt: skip


@pytest.mark.parametrize("key", SKOPS_CASES)
def test_skops_refusal_matches_what_skops_reports(
    key: str, zoo: dict[str, ZooCase], artifacts: dict[str, Path]
) -> None:
    case = zoo[key]
    foreign = foreign_skops_types(artifacts[key] / "model.skops")
    assert case.refused_without_needs == bool(foreign)
    assert case.needs == ({"trusted_types": foreign} if foreign else {})


def test_the_xgboost_pipeline_needs_its_xgboost_types_trusted(zoo: dict[str, ZooCase]) -> None:
    case = zoo["xgboost-in-skops-pipeline"]
    assert case.refused_without_needs
    assert "xgboost.sklearn.XGBClassifier" in case.needs["trusted_types"]


def test_only_the_pickle_and_foreign_type_cases_are_refused(zoo: dict[str, ZooCase]) -> None:
    refused = {key for key, case in zoo.items() if case.refused_without_needs}
    assert refused == {"xgboost-in-skops-pipeline", "cloudpickle"}
    assert zoo["cloudpickle"].needs == {"allow_pickle": True}
    assert all(case.needs == {} for key, case in zoo.items() if key not in refused)


def test_nested_artifacts_exist(zoo: dict[str, ZooCase], artifacts: dict[str, Path]) -> None:
    nested = {key: nested_artifact(case) for key, case in zoo.items()}
    assert {k for k, v in nested.items() if v is not None} == {"cloudpickle"}
    for key, relative in nested.items():
        if relative is not None:
            assert "/" in relative and (artifacts[key] / relative).is_file()


@pytest.mark.parametrize("key", [k for k in CASES if k != "cloudpickle"])
def test_expected_is_what_the_logged_artifact_predicts(
    key: str, zoo: dict[str, ZooCase], artifacts: dict[str, Path]
) -> None:
    """Reloading the registered files (no pickle) gives the same answers."""
    import pandas as pd

    case = zoo[key]
    path = artifacts[key]
    conf = mlmodel(path).flavors
    frame = pd.DataFrame(case.rows)
    if "sklearn" in conf:
        import skops.io

        model_file = path / "model.skops"
        model = skops.io.load(model_file, trusted=skops.io.get_untrusted_types(file=model_file))
        got = model.predict_proba(frame) if case.task == "classification" else model.predict(frame)
    elif "xgboost" in conf:
        import xgboost

        booster = xgboost.Booster(model_file=str(path / conf["xgboost"]["data"]))
        got = booster.inplace_predict(frame.to_numpy())
    elif "lightgbm" in conf:
        import lightgbm

        lgb = lightgbm.Booster(model_file=str(path / "model.lgb"))
        p1 = np.asarray(lgb.predict(frame), dtype=np.float64)
        got = np.column_stack([1 - p1, p1])
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path / "model.onnx"),
                                               providers=["CPUExecutionProvider"])  # fmt: skip
        got = session.run(["probabilities"], {"input": frame.to_numpy(dtype=np.float32)})[0]
    want = [
        list(a["probabilities"].values()) if case.task == "classification"
        else (list(a["prediction"].values()) if isinstance(a["prediction"], dict)
              else a["prediction"])
        for a in case.expected
    ]  # fmt: skip
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64).reshape(np.shape(want)), want,
                               rtol=1e-6, atol=1e-7)  # fmt: skip


def test_a_subset_registers_only_those_cases(tmp_path: Path) -> None:
    settings = store_settings(tmp_path)
    cases = register_zoo(settings.tracking_uri, ["sklearn-regressor"])
    assert list(cases) == ["sklearn-regressor"]
    with pytest.raises(ValueError, match="unknown zoo case"):
        register_zoo(settings.tracking_uri, ["no-such-case"])
