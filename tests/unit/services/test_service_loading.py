"""services/loading.py: native loaders, parity with mlflow.pyfunc, and refusing pickles."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import PythonModel

from services.errors import ModelLoadError, UnsafeModelError
from services.loading import load_model
from tests import servicekit

FEATURES = servicekit.FEATURES
Data = tuple[pd.DataFrame, pd.Series]


@pytest.fixture
def pyfunc_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow 3.17 refuses to deserialise any sklearn model (skops included) without this.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")


def scores_of(model_dir: Path, X: pd.DataFrame) -> np.ndarray:
    """The positive class's probability (the kit's models are binary classifiers of 0/1)."""
    loaded = load_model(model_dir, FEATURES)
    return loaded.predict(X[list(FEATURES)].to_numpy())[:, 1]


def test_sklearn_skops_is_loaded_natively(sklearn_dir: Path, training_data: Data) -> None:
    X, _ = training_data
    loaded = load_model(sklearn_dir, FEATURES)
    assert loaded.flavor == "sklearn"
    assert loaded.loader == "sklearn Pipeline (skops, predict_proba)"
    assert loaded.columns == FEATURES
    assert (loaded.output.task, loaded.output.classes) == ("classification", (0, 1))
    answer = loaded.predict(X.to_numpy())
    assert answer.shape == (len(X), 2) and answer.dtype == np.float64
    np.testing.assert_allclose(answer.sum(axis=1), 1.0)


def test_sklearn_parity_with_pyfunc(
    sklearn_dir: Path, training_data: Data, pyfunc_allowed: None
) -> None:
    X, _ = training_data
    ours = scores_of(sklearn_dir, X)
    reference = mlflow.pyfunc.load_model(str(sklearn_dir))
    np.testing.assert_allclose(
        ours, reference.get_raw_model().predict_proba(X)[:, 1], rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal((ours >= 0.5).astype(int), reference.predict(X))


def test_xgboost_classifier_parity_with_pyfunc(
    xgb_classifier_dir: Path, training_data: Data
) -> None:
    X, _ = training_data
    loaded = load_model(xgb_classifier_dir, FEATURES)
    assert (
        loaded.loader == "xgboost.Booster native (xgboost.sklearn.XGBClassifier, binary:logistic)"
    )
    assert (loaded.output.task, loaded.output.classes) == ("classification", (0, 1))
    answer = loaded.predict(X.to_numpy())
    reference = mlflow.pyfunc.load_model(str(xgb_classifier_dir))
    np.testing.assert_allclose(
        answer, reference.get_raw_model().predict_proba(X), rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(answer.argmax(axis=1), reference.predict(X))


def test_raw_booster_parity_with_pyfunc(xgb_booster_dir: Path, training_data: Data) -> None:
    X, _ = training_data
    loaded = load_model(xgb_booster_dir, FEATURES)
    assert loaded.loader == "xgboost.Booster native (xgboost.core.Booster, binary:logistic)"
    reference = mlflow.pyfunc.load_model(str(xgb_booster_dir))
    np.testing.assert_allclose(
        loaded.predict(X.to_numpy())[:, 1], reference.predict(X), rtol=0, atol=1e-6
    )


def test_columns_are_reordered_to_the_signature(
    xgb_classifier_dir: Path, training_data: Data
) -> None:
    X, _ = training_data
    shuffled = (FEATURES[2], FEATURES[0], FEATURES[3], FEATURES[1], "unused_by_this_model")
    loaded = load_model(xgb_classifier_dir, shuffled)
    assert loaded.take == (1, 3, 0, 2)
    matrix = X[list(shuffled[:4])].assign(unused_by_this_model=9.0).to_numpy()
    np.testing.assert_array_equal(loaded.predict(matrix)[:, 1], scores_of(xgb_classifier_dir, X))


def test_a_signature_column_missing_from_the_features(sklearn_dir: Path) -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"needs column\(s\) \['worst_area'\] that bentoship.json's features do not list",
    ):
        load_model(sklearn_dir, FEATURES[:3])


def test_pickled_sklearn_is_refused_by_default(sklearn_pickle_dir: Path) -> None:
    with pytest.raises(UnsafeModelError) as info:
        load_model(sklearn_pickle_dir, FEATURES)
    message = str(info.value)
    assert "refusing to load, its model is serialized with cloudpickle" in message
    assert "allow_pickle=true" in message
    assert info.value.code == "unsafe_model_refused"


def test_pickled_sklearn_loads_when_allowed_with_a_loud_warning(
    sklearn_pickle_dir: Path,
    training_data: Data,
    caplog: pytest.LogCaptureFixture,
    pyfunc_allowed: None,
) -> None:
    X, _ = training_data
    with caplog.at_level(logging.WARNING, logger="bentoship.service"):
        loaded = load_model(sklearn_pickle_dir, FEATURES, allow_pickle=True)
    assert "allow_pickle=true" in caplog.text and "arbitrary code" in caplog.text
    assert loaded.loader == "sklearn Pipeline (cloudpickle via mlflow, predict_proba)"
    reference = mlflow.pyfunc.load_model(str(sklearn_pickle_dir))
    np.testing.assert_allclose(
        loaded.predict(X.to_numpy()),
        reference.get_raw_model().predict_proba(X),
        rtol=0,
        atol=1e-6,
    )


def test_skops_with_foreign_types_is_refused_unless_allowed(
    tmp_path: Path, training_data: Data
) -> None:
    X, y = training_data
    model_dir = servicekit.save_sklearn(
        servicekit.train_sklearn_custom(X, y),
        X,
        tmp_path / "custom",
        skops_trusted_types=["tests.servicekit.clip_outliers"],  # the model vouching for itself
    )
    with pytest.raises(
        UnsafeModelError,
        match=r"contains types outside sklearn/numpy/scipy: \['tests.servicekit.clip_outliers'\]",
    ) as refused:
        load_model(model_dir, FEATURES)
    # The way in by name is offered; the author's own list is a hint, not a decision.
    assert "--trust-type tests.servicekit.clip_outliers" in str(refused.value)
    assert "author listed ['tests.servicekit.clip_outliers']" in str(refused.value)
    assert load_model(model_dir, FEATURES, allow_pickle=True).predict(
        X.to_numpy()
    ).shape == (len(X), 2)
    trusted = load_model(model_dir, FEATURES, trusted_types=["tests.servicekit.clip_outliers"])
    assert "trusting ['tests.servicekit.clip_outliers']" in trusted.loader
    with pytest.raises(UnsafeModelError):  # trusting another type is not trusting this one
        load_model(model_dir, FEATURES, trusted_types=["tests.servicekit.make_data"])


class Halver(PythonModel):
    """A pickled python model: only loadable through mlflow.pyfunc."""

    def predict(
        self, context: object, model_input: pd.DataFrame, params: object = None
    ) -> np.ndarray:
        return model_input.to_numpy().sum(axis=1) / 2


def test_pickled_pyfunc_is_refused_unless_allowed(
    tmp_path: Path, training_data: Data, pyfunc_allowed: None
) -> None:
    X, _ = training_data
    model_dir = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(model_dir), python_model=Halver(), input_example=X.head(2), pip_requirements=["mlflow"]
    )
    with pytest.raises(UnsafeModelError, match="no native flavor we load.*needs mlflow.pyfunc"):
        load_model(model_dir, FEATURES)
    loaded = load_model(model_dir, FEATURES, allow_pickle=True)
    assert loaded.flavor == "python_function"
    assert loaded.output.task == "regression"
    np.testing.assert_allclose(loaded.predict(X.to_numpy())[:, 0], X.to_numpy().sum(axis=1) / 2)


def test_missing_mlmodel_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"MLmodel: not found; the model folder must hold the MLflow model under mlflow_model/",
    ):
        load_model(tmp_path, FEATURES)


def test_broken_booster_file(tmp_path: Path, xgb_booster_dir: Path) -> None:
    broken = shutil.copytree(xgb_booster_dir, tmp_path / "broken")
    (broken / "model.ubj").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="model.ubj: XGBoost could not load it"):
        load_model(broken, FEATURES)


IMPORTS_PROBE = """
import json, sys
from services.loading import import_loaders, load_model
flavors, hooks, model_dir, features = json.loads(sys.argv[1])
import_loaders(set(flavors), hooks=hooks)
loaded = load_model(model_dir, features)
without = "sklearn" not in sys.modules
import sklearn.base  # still importable by whatever needs it later
print(json.dumps({"without_sklearn": without, "loader": loaded.loader}))
"""


@pytest.mark.parametrize(
    ("flavors", "hooks", "without_sklearn"),
    [
        (["xgboost"], False, True),
        (["xgboost", "onnx"], False, True),
        (["xgboost", "sklearn"], False, False),  # the sklearn variant needs it anyway
        (["xgboost", "lightgbm"], False, False),  # LightGBM's sklearn API may be served
        (["xgboost"], True, False),  # a team's hooks may use XGBoost's sklearn estimators
    ],
)
def test_an_xgboost_service_starts_without_importing_sklearn(
    xgb_classifier_dir: Path, flavors: list[str], hooks: bool, without_sklearn: bool
) -> None:
    # A fresh interpreter: this one imported scikit-learn long ago.
    arguments = json.dumps([flavors, hooks, str(xgb_classifier_dir), list(FEATURES)])
    result = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, arguments],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["without_sklearn"] is without_sklearn
    assert report["loader"].startswith("xgboost.Booster native")
