"""A model zoo trained at test time: one small model per flavor and serialization format.

:func:`register_zoo` trains each case on data that ships with scikit-learn (or a small
synthetic frame), logs it with ``mlflow.<flavor>.log_model`` (signature, input example,
registered model name) into a caller's store and returns a :class:`ZooCase` per key: the
request rows and what the service must answer for them, computed from the model's own
``predict``/``predict_proba`` (for ONNX: from onnxruntime on the logged file).

========================== ============================ =========================================
key                        flavor (serialization)       model
========================== ============================ =========================================
sklearn-binary             sklearn (skops)              scaler + LogisticRegression, labels 0/1
sklearn-multiclass         sklearn (skops)              LogisticRegression, string labels
sklearn-regressor          sklearn (skops)              RandomForestRegressor
sklearn-multioutput        sklearn (skops)              LinearRegression, y = DataFrame of 2
                                                        named columns -> {"prediction": {col: v}}
sklearn-columns            sklearn (skops)              ColumnTransformer(one-hot strings, scaled
                                                        int64s) + LogisticRegression, "no"/"yes"
xgboost-classifier         xgboost (ubj)                XGBClassifier, 3 classes 0/1/2
xgboost-regressor          xgboost (ubj)                XGBRegressor
xgboost-in-skops-pipeline  sklearn (skops)              scaler + XGBClassifier: xgboost types in
                                                        the skops file, refused unless trusted
lightgbm                   lightgbm (model.lgb, text)   lightgbm.train Booster, binary
onnx                       onnx (model.onnx)            skl2onnx LogisticRegression, 3 classes
cloudpickle                sklearn (cloudpickle)        FunctionTransformer(custom fn in code/) +
                                                        Ridge: refused unless allow_pickle
========================== ============================ =========================================

Requirements are MLflow's pinned defaults for each flavor (plus ``mlflow``), as in
``tests/servicekit.py``: inferring them loads every model again in a subprocess (seconds per
model) and records whatever the test session imported (pytest, ...).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.models.registry import client_for, download, ensure_experiment, fluent_uris, resolve

if TYPE_CHECKING:
    from mlflow import MlflowClient

ZOO_EXPERIMENT = "bentoship-zoo"
N_ROWS = 20
# What the service's skops loader trusts without being told (services/loading.py).
SKOPS_TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")


@dataclass(frozen=True)
class ZooCase:
    """One registered model version and what the service must answer for its rows."""

    key: str
    registered_name: str
    version: str
    task: str  # "classification" | "regression"
    classes: tuple[Any, ...]  # JSON labels in classes_ order; () for regression
    rows: list[dict[str, Any]]  # N_ROWS JSON-ready request rows, the signature's columns
    expected: list[dict[str, Any]]  # per row, without variant/model_version
    needs: dict[str, Any]  # build options the case needs; {} normally
    refused_without_needs: bool  # a build without `needs` must be refused


def register_zoo(
    tracking_uri: str,
    keys: Sequence[str] | None = None,
    *,
    artifact_root: Path | None = None,
) -> dict[str, ZooCase]:
    """Train, log and register the zoo (or the cases in ``keys``) in ``tracking_uri``.

    ``tracking_uri`` is also the registry URI. Artifacts go under ``artifact_root``, by default
    ``mlartifacts/`` next to a ``sqlite:///`` database, which is where the project's settings
    put them for the embedded store (``tests.stores.store_settings``). MLflow's process-wide
    URIs are put back afterwards.
    """
    selected = list(CASES) if keys is None else list(keys)
    unknown = [k for k in selected if k not in CASES]
    if unknown:
        raise ValueError(f"unknown zoo case(s) {unknown}; known: {list(CASES)}")
    if artifact_root is None and tracking_uri.startswith("sqlite:///"):
        artifact_root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"

    cases: dict[str, ZooCase] = {}
    with fluent_uris(tracking_uri, tracking_uri), tempfile.TemporaryDirectory() as scratch:
        client = client_for(tracking_uri)
        store = _Store(client, ensure_experiment(client, ZOO_EXPERIMENT, artifact_root),
                       Path(scratch))  # fmt: skip
        for key in selected:
            cases[key] = CASES[key](store)
    return cases


def nested_artifact(case: ZooCase) -> str | None:
    """A file in a subfolder of the case's MLflow model directory (relative path), or None.

    Only ``cloudpickle`` has one (``code/``). ONNX external data would be another, but
    ``onnx.save_model`` cannot put it in a subfolder of the folder MLflow creates (it does not
    make the folder), and a LogisticRegression keeps its weights in node attributes anyway.
    """
    return _NESTED.get(case.key)


# --- logging ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Logged:
    name: str
    version: str
    path: Path  # the version's artifacts, downloaded from the store


@dataclass(frozen=True)
class _Store:
    client: MlflowClient
    experiment_id: str
    scratch: Path

    def log(
        self,
        key: str,
        flavor: ModuleType,
        model: Any,
        X: pd.DataFrame,
        output: Any,
        requirements: Sequence[str],
        **options: Any,
    ) -> _Logged:
        import mlflow
        from mlflow.models import infer_signature

        name = f"zoo-{key}"
        with warnings.catch_warnings():
            # int64 columns are the point of sklearn-columns; the rows never miss a value.
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
            signature = infer_signature(X, output)
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=key):
            info = flavor.log_model(
                model,
                name="model",
                signature=signature,
                input_example=X.head(3),
                registered_model_name=name,
                pip_requirements=[f"mlflow=={mlflow.__version__}", *requirements],
                **options,
            )
        version = str(info.registered_model_version)
        path = download(self.client, resolve(self.client, f"{name}/{version}"), self.scratch / key)
        return _Logged(name, version, path)


def _sklearn_requirements(serialization_format: str = "skops") -> list[str]:
    import mlflow.sklearn

    return list(
        mlflow.sklearn.get_default_pip_requirements(
            include_cloudpickle=serialization_format == "cloudpickle",
            include_skops=serialization_format == "skops",
        )
    )


def _log_skops(store: _Store, key: str, model: Any, X: pd.DataFrame, output: Any,
               requirements: Sequence[str] = ()) -> tuple[_Logged, list[str]]:  # fmt: skip
    """Log with skops, trusting every type in the file (what a user must do for
    ``mlflow.sklearn.load_model``); returns the types outside sklearn/numpy/scipy."""
    import mlflow.sklearn
    import skops.io

    logged = store.log(
        key, mlflow.sklearn, model, X, output, [*_sklearn_requirements(), *requirements],
        serialization_format="skops",
        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
    )  # fmt: skip
    return logged, foreign_skops_types(logged.path / "model.skops")


def foreign_skops_types(model_file: Path) -> list[str]:
    """The types ``skops.io.get_untrusted_types`` reports for a file, outside sklearn/numpy/scipy."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=model_file)
    return sorted(t for t in untrusted if t.split(".", 1)[0] not in SKOPS_TRUSTED_PACKAGES)


# --- data and answers -------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def _bundled(loader: Callable[..., Any], columns: Sequence[str] | None = None
             ) -> tuple[pd.DataFrame, pd.Series]:  # fmt: skip
    data = loader(as_frame=True)
    X = data.data.rename(columns=_snake)
    return (X if columns is None else X[list(columns)]), data.target


def _split(X: pd.DataFrame, y: Any) -> tuple[pd.DataFrame, pd.DataFrame, Any, Any]:
    """Train on the rest, ask about N_ROWS held-out rows."""
    from sklearn.model_selection import train_test_split

    x_train, x_rows, y_train, y_rows = train_test_split(X, y, test_size=N_ROWS, random_state=0)
    return x_train, x_rows, y_train, y_rows


def _json(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _rows(X: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as JSON values (the exact values the model was given)."""
    return [{str(k): _json(v) for k, v in row.items()} for row in X.to_dict(orient="records")]


def _labels(classes: Any) -> tuple[Any, ...]:
    return tuple(_json(c) for c in classes)


def _classified(classes: tuple[Any, ...], proba: Any) -> list[dict[str, Any]]:
    proba = np.asarray(proba, dtype=np.float64)
    answers = []
    for p in proba:
        answer: dict[str, Any] = {}
        if len(classes) == 2:
            answer["prediction"] = classes[1] if p[1] >= 0.5 else classes[0]
            answer["score"] = float(p[1])
        else:
            answer["prediction"] = classes[int(np.argmax(p))]
        answer["probabilities"] = {str(c): float(v) for c, v in zip(classes, p)}
        answers.append(answer)
    return answers


def _regressed(predictions: Any, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    values = np.asarray(predictions, dtype=np.float64)
    if columns is None:
        return [{"prediction": float(v)} for v in values.reshape(-1)]
    return [{"prediction": {c: float(v) for c, v in zip(columns, row)}} for row in values]


def _classification(key: str, logged: _Logged, classes: tuple[Any, ...], x_rows: pd.DataFrame,
                    proba: Any, **extra: Any) -> ZooCase:  # fmt: skip
    return ZooCase(key, logged.name, logged.version, "classification", classes, _rows(x_rows),
                   _classified(classes, proba), **_needs(**extra))  # fmt: skip


def _regression(key: str, logged: _Logged, x_rows: pd.DataFrame, predictions: Any,
                columns: Sequence[str] | None = None, **extra: Any) -> ZooCase:  # fmt: skip
    return ZooCase(key, logged.name, logged.version, "regression", (), _rows(x_rows),
                   _regressed(predictions, columns), **_needs(**extra))  # fmt: skip


def _needs(needs: dict[str, Any] | None = None, refused: bool = False) -> dict[str, Any]:
    return {"needs": needs or {}, "refused_without_needs": refused}


# --- the cases --------------------------------------------------------------------------------

_CANCER = ("mean_radius", "mean_texture", "mean_smoothness", "worst_area")


def _sklearn_binary(store: _Store) -> ZooCase:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_rows, y_train, _ = _split(*_bundled(load_breast_cancer, _CANCER))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    logged, _ = _log_skops(store, "sklearn-binary", model, x_train, model.predict(x_train))
    return _classification("sklearn-binary", logged, _labels(model.classes_), x_rows,
                           model.predict_proba(x_rows))  # fmt: skip


def _sklearn_multiclass(store: _Store) -> ZooCase:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, target = _bundled(load_iris)
    names = np.asarray(load_iris().target_names)[target.to_numpy()]  # "setosa", ... (<U10)
    x_train, x_rows, y_train, _ = _split(X, names)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    logged, _ = _log_skops(store, "sklearn-multiclass", model, x_train, model.predict(x_train))
    return _classification("sklearn-multiclass", logged, _labels(model.classes_), x_rows,
                           model.predict_proba(x_rows))  # fmt: skip


def _sklearn_regressor(store: _Store) -> ZooCase:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    x_train, x_rows, y_train, _ = _split(*_bundled(load_diabetes))
    model = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0, n_jobs=1)
    model.fit(x_train, y_train)
    logged, _ = _log_skops(store, "sklearn-regressor", model, x_train, model.predict(x_train))
    return _regression("sklearn-regressor", logged, x_rows, model.predict(x_rows))


def _sklearn_multioutput(store: _Store) -> ZooCase:
    """Two named targets: the signature's outputs are columns, so the answer is a mapping."""
    from sklearn.datasets import load_linnerud
    from sklearn.linear_model import LinearRegression

    data = load_linnerud(as_frame=True)  # 20 rows: train on them and ask about them
    X = data.data.rename(columns=_snake)
    y = data.target.rename(columns=_snake)[["weight", "waist"]]
    model = LinearRegression().fit(X, y)
    logged, _ = _log_skops(store, "sklearn-multioutput", model, X, y)
    return _regression("sklearn-multioutput", logged, X, model.predict(X), list(y.columns))


def _sklearn_columns(store: _Store) -> ZooCase:
    """String and int64 columns (signature types string and long) through a ColumnTransformer."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 220
    X = pd.DataFrame({
        "color": rng.choice(["red", "green", "blue"], n),
        "size": rng.choice(["s", "m", "l"], n),
        "count": rng.integers(0, 10, n).astype("int64"),
        "age": rng.integers(18, 80, n).astype("int64"),
    })  # fmt: skip
    logit = (X["color"] == "red") * 1.5 - (X["size"] == "s") + 0.3 * (X["count"] - 5)
    y = np.where(logit + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    x_train, x_rows, y_train, _ = _split(X, y)
    encode = ColumnTransformer([
        ("strings", OneHotEncoder(handle_unknown="ignore"), ["color", "size"]),
        ("integers", StandardScaler(), ["count", "age"]),
    ])  # fmt: skip
    model = make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    logged, _ = _log_skops(store, "sklearn-columns", model, x_train, model.predict(x_train))
    return _classification("sklearn-columns", logged, _labels(model.classes_), x_rows,
                           model.predict_proba(x_rows))  # fmt: skip


def _xgboost_classifier(store: _Store) -> ZooCase:
    import mlflow.xgboost
    import xgboost
    from sklearn.datasets import load_wine

    x_train, x_rows, y_train, _ = _split(*_bundled(load_wine))
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1, random_state=0)
    model.fit(x_train, y_train)
    requirements = mlflow.xgboost.get_default_pip_requirements()
    logged = store.log("xgboost-classifier", mlflow.xgboost, model, x_train, model.predict(x_train),
                       requirements)  # fmt: skip
    return _classification("xgboost-classifier", logged, _labels(model.classes_), x_rows,
                           model.predict_proba(x_rows))  # fmt: skip


def _xgboost_regressor(store: _Store) -> ZooCase:
    import mlflow.xgboost
    import xgboost
    from sklearn.datasets import load_diabetes

    x_train, x_rows, y_train, _ = _split(*_bundled(load_diabetes))
    model = xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1, random_state=0)
    model.fit(x_train, y_train)
    requirements = mlflow.xgboost.get_default_pip_requirements()
    logged = store.log("xgboost-regressor", mlflow.xgboost, model, x_train, model.predict(x_train),
                       requirements)  # fmt: skip
    return _regression("xgboost-regressor", logged, x_rows, model.predict(x_rows))


def _xgboost_in_skops_pipeline(store: _Store) -> ZooCase:
    import mlflow.xgboost
    import xgboost
    from sklearn.datasets import load_breast_cancer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_rows, y_train, _ = _split(*_bundled(load_breast_cancer, _CANCER))
    model = make_pipeline(
        StandardScaler(), xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1)
    ).fit(x_train, y_train)
    logged, foreign = _log_skops(store, "xgboost-in-skops-pipeline", model, x_train,
                                 model.predict(x_train),
                                 mlflow.xgboost.get_default_pip_requirements())  # fmt: skip
    if not foreign:
        raise AssertionError("the skops file of a Pipeline with XGBClassifier has no xgboost types")
    return _classification("xgboost-in-skops-pipeline", logged, _labels(model.classes_), x_rows,
                           model.predict_proba(x_rows), needs={"trusted_types": foreign},
                           refused=True)  # fmt: skip


def _lightgbm(store: _Store) -> ZooCase:
    import lightgbm
    import mlflow.lightgbm
    from sklearn.datasets import load_breast_cancer

    x_train, x_rows, y_train, _ = _split(*_bundled(load_breast_cancer))
    params = {"objective": "binary", "num_leaves": 7, "learning_rate": 0.3, "num_threads": 1,
              "seed": 0, "deterministic": True, "verbose": -1}  # fmt: skip
    booster = lightgbm.train(params, lightgbm.Dataset(x_train, label=y_train), num_boost_round=10)
    logged = store.log("lightgbm", mlflow.lightgbm, booster, x_train, booster.predict(x_train),
                       mlflow.lightgbm.get_default_pip_requirements())  # fmt: skip
    p1 = np.asarray(booster.predict(x_rows), dtype=np.float64)  # a Booster gives P(class 1)
    return _classification("lightgbm", logged, (0, 1), x_rows, np.column_stack([1 - p1, p1]))


def _onnx(store: _Store) -> ZooCase:
    """Answers come from onnxruntime on the logged model.onnx; the sklearn model it was
    converted from agrees within float32 precision (its probabilities are float32)."""
    import mlflow.onnx
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = _bundled(load_iris)
    x_train, x_rows, y_train, _ = _split(X.astype("float32"), y)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    # zipmap=False: outputs "label" (int64) and "probabilities" (float32, n x 3), not dicts.
    proto = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                            options={id(model): {"zipmap": False}})  # fmt: skip
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    train_proba = session.run(["probabilities"], {"input": x_train.to_numpy()})[0]
    logged = store.log("onnx", mlflow.onnx, proto, x_train, train_proba,
                       mlflow.onnx.get_default_pip_requirements())  # fmt: skip
    session = onnxruntime.InferenceSession(str(logged.path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    proba = session.run(["probabilities"], {"input": x_rows.to_numpy()})[0]
    return _classification("onnx", logged, _labels(model.classes_), x_rows, proba)


_FEATURES_MODULE = "bentoship_zoo_features"
_FEATURES_SOURCE = '''"""Feature code of the zoo's cloudpickle model, shipped in the model's code/ folder."""

import numpy as np


def with_squares(X):
    X = np.asarray(X, dtype=np.float64)
    return np.hstack([X, X**2])
'''


@contextmanager
def _features_module(folder: Path) -> Iterator[ModuleType]:
    """A module imported from a file, so cloudpickle pickles its function by reference (as
    for any user's own package) and the model needs the file, logged under ``code/``."""
    path = folder / f"{_FEATURES_MODULE}.py"
    path.write_text(_FEATURES_SOURCE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(_FEATURES_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[_FEATURES_MODULE] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        # log_model's input-example check loads the model, which puts its (temporary) code/
        # folder on sys.path and imports the module from there.
        sys.modules.pop(_FEATURES_MODULE, None)
        sys.path[:] = saved_path


def _cloudpickle(store: _Store) -> ZooCase:
    import mlflow.sklearn
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x_train, x_rows, y_train, _ = _split(*_bundled(load_diabetes))
    folder = store.scratch / "cloudpickle-code"
    folder.mkdir()
    with _features_module(folder) as features:
        model = make_pipeline(FunctionTransformer(features.with_squares), Ridge(alpha=0.1))
        model.fit(x_train, y_train)
        logged = store.log("cloudpickle", mlflow.sklearn, model, x_train, model.predict(x_train),
                           _sklearn_requirements("cloudpickle"),
                           serialization_format="cloudpickle",
                           code_paths=[str(folder / f"{_FEATURES_MODULE}.py")])  # fmt: skip
        predictions = model.predict(x_rows)
    return _regression("cloudpickle", logged, x_rows, predictions,
                       needs={"allow_pickle": True}, refused=True)  # fmt: skip


CASES: dict[str, Callable[[_Store], ZooCase]] = {
    "sklearn-binary": _sklearn_binary,
    "sklearn-multiclass": _sklearn_multiclass,
    "sklearn-regressor": _sklearn_regressor,
    "sklearn-multioutput": _sklearn_multioutput,
    "sklearn-columns": _sklearn_columns,
    "xgboost-classifier": _xgboost_classifier,
    "xgboost-regressor": _xgboost_regressor,
    "xgboost-in-skops-pipeline": _xgboost_in_skops_pipeline,
    "lightgbm": _lightgbm,
    "onnx": _onnx,
    "cloudpickle": _cloudpickle,
}
_NESTED = {"cloudpickle": f"code/{_FEATURES_MODULE}.py"}
