"""Shared fixtures for the service template's unit tests: real models, saved by MLflow."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests import servicekit

CONTRACT_CONFIG: dict[str, Any] = {
    "name": "demo-classifier",
    "code_version": "1a2b3c4",
    "image_tag": "ctl-v1.trt-v2.code-1a2b3c4",
    "features": [{"name": "mean_radius", "type": "double", "required": True, "example": 17.99}],
    "variants": [
        {
            "name": "control",
            "model_tag": "demo-classifier:v1",
            "registered_name": "demo-classifier",
            "version": "1",
            "run_id": "r1",
            "flavor": "sklearn",
            "weight": 90,
        },
        {
            "name": "treatment",
            "model_tag": "demo-classifier:v2",
            "registered_name": "demo-classifier",
            "version": "2",
            "run_id": "r2",
            "flavor": "xgboost",
            "weight": 10,
        },
    ],
    "routing": {
        "salt": "demo-classifier",
        "key_field": "request_id",
        "key_header": "x-bentoship-key",
        "override_header": "x-bentoship-variant",
    },
    "output": {"task": "classification", "classes": [0, 1]},
    "max_rows": 1000,
    "allow_pickle": False,
    "threshold": 0.5,
}


@pytest.fixture
def config_data() -> dict[str, Any]:
    """The example of docs/contracts.md section 2, as a mutable dict."""
    return copy.deepcopy(CONTRACT_CONFIG)


@pytest.fixture(scope="session")
def training_data() -> tuple[pd.DataFrame, pd.Series]:
    return servicekit.make_data()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow-models")


@pytest.fixture(scope="session")
def sklearn_dir(models_root: Path, training_data: tuple[pd.DataFrame, pd.Series]) -> Path:
    X, y = training_data
    return servicekit.save_sklearn(servicekit.train_sklearn(X, y), X, models_root / "sklearn-skops")


@pytest.fixture(scope="session")
def sklearn_pickle_dir(models_root: Path, training_data: tuple[pd.DataFrame, pd.Series]) -> Path:
    X, y = training_data
    return servicekit.save_sklearn(
        servicekit.train_sklearn(X, y),
        X,
        models_root / "sklearn-cloudpickle",
        serialization_format="cloudpickle",
    )


@pytest.fixture(scope="session")
def xgb_classifier_dir(models_root: Path, training_data: tuple[pd.DataFrame, pd.Series]) -> Path:
    X, y = training_data
    return servicekit.save_xgboost(
        servicekit.train_xgboost(X, y), X, models_root / "xgb-classifier"
    )


@pytest.fixture(scope="session")
def xgb_booster_dir(models_root: Path, training_data: tuple[pd.DataFrame, pd.Series]) -> Path:
    X, y = training_data
    return servicekit.save_xgboost(
        servicekit.train_xgboost(X, y, raw_booster=True), X, models_root / "xgb-booster"
    )
