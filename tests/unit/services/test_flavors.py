"""services/flavors/lightgbm.py and onnx.py: real models, saved by MLflow, scored natively.

Every model is trained here on a toy data set and saved with ``mlflow.lightgbm.save_model`` /
``mlflow.onnx.save_model``; the loader's scores are compared with the model's own answers
(``Booster.predict``, an onnxruntime run of the same file, and the scikit-learn model it was
converted from: ONNX computes in float32, hence the tolerances).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import mlflow.lightgbm
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from services.errors import ModelLoadError
from services.flavors import Loaded
from services.flavors import lightgbm as lightgbm_flavor
from services.flavors import onnx as onnx_flavor

IRIS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]


def save_lightgbm(model: Any, path: Path, **kwargs: Any) -> Path:
    # Given requirements, MLflow skips inferring them (seconds: it reloads the model in a
    # subprocess to see what it imports).
    mlflow.lightgbm.save_model(model, str(path), pip_requirements=["lightgbm"], **kwargs)
    return path


def flavor_conf(model_dir: Path, flavor: str) -> dict[str, Any]:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    return mlmodel["flavors"][flavor]  # type: ignore[no-any-return]


def numeric(columns: tuple[str, ...]) -> tuple[str, ...]:
    return ("double",) * len(columns)


def names(width: int) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(width))


# --- LightGBM ------------------------------------------------------------------------------


def train_booster(X: np.ndarray, y: np.ndarray, params: dict[str, Any]) -> lightgbm.Booster:
    data = lightgbm.Dataset(X, y)
    base = {"verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5, "num_threads": 1}
    return lightgbm.train({**base, **params}, data, num_boost_round=10)


def load_booster(
    booster: lightgbm.Booster, path: Path, columns: tuple[str, ...], **kwargs: Any
) -> Loaded:
    conf = flavor_conf(save_lightgbm(booster, path, **kwargs), "lightgbm")
    assert conf["model_class"] == "lightgbm.basic.Booster" and conf["data"] == "model.lgb"
    assert lightgbm_flavor.handles(conf)
    return lightgbm_flavor.load(path, conf, columns, numeric(columns))


def test_lightgbm_binary_answers_both_class_probabilities(tmp_path: Path) -> None:
    X, y = load_breast_cancer(return_X_y=True)
    booster = train_booster(X, y, {"objective": "binary"})
    loaded = load_booster(booster, tmp_path / "m", names(X.shape[1]))
    assert loaded.output.task == "classification" and loaded.output.classes == (0, 1)
    assert loaded.loader == "lightgbm.Booster native (model.lgb, binary)"
    scores = loaded.scorer(X)
    p = np.asarray(booster.predict(X))
    np.testing.assert_allclose(scores, np.column_stack((1 - p, p)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)


def test_lightgbm_multiclass_answers_one_column_per_class(tmp_path: Path) -> None:
    booster = train_booster(IRIS_X, IRIS_Y, {"objective": "multiclass", "num_class": 3})
    loaded = load_booster(booster, tmp_path / "m", IRIS)
    assert loaded.output.classes == (0, 1, 2) and loaded.output.width == 3
    np.testing.assert_allclose(loaded.scorer(IRIS_X), booster.predict(IRIS_X), atol=1e-12)


def test_lightgbm_one_vs_all_is_normalized_in_the_same_order(tmp_path: Path) -> None:
    booster = train_booster(IRIS_X, IRIS_Y, {"objective": "multiclassova", "num_class": 3})
    loaded = load_booster(booster, tmp_path / "m", IRIS)
    scores, own = loaded.scorer(IRIS_X), np.asarray(booster.predict(IRIS_X))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    np.testing.assert_allclose(scores, own / own.sum(axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_array_equal(scores.argmax(axis=1), own.argmax(axis=1))


@pytest.mark.parametrize("objective", ["regression", "poisson", "quantile"])
def test_lightgbm_regressors_answer_their_predictions(tmp_path: Path, objective: str) -> None:
    X, y = load_diabetes(return_X_y=True)
    booster = train_booster(X, y, {"objective": objective})
    loaded = load_booster(booster, tmp_path / "m", names(X.shape[1]))
    assert loaded.output.task == "regression" and loaded.output.targets == 1
    assert loaded.scorer(X[:1]).shape == (1, 1)
    np.testing.assert_allclose(loaded.scorer(X)[:, 0], booster.predict(X), atol=1e-12)


def test_lightgbm_follows_the_boosters_own_column_names(tmp_path: Path) -> None:
    frame = pd.DataFrame(IRIS_X, columns=list(IRIS))
    booster = train_booster(frame, IRIS_Y, {"objective": "multiclass", "num_class": 3})
    shuffled = ("petal_width", "sepal_length", "petal_length", "sepal_width")
    loaded = load_booster(booster, tmp_path / "m", shuffled)
    np.testing.assert_allclose(
        loaded.scorer(frame[list(shuffled)].to_numpy()), booster.predict(frame), atol=1e-12
    )


def test_lightgbm_refuses_a_different_number_of_features(tmp_path: Path) -> None:
    booster = train_booster(IRIS_X, IRIS_Y, {"objective": "multiclass", "num_class": 3})
    with pytest.raises(ModelLoadError, match=r"expects 4 features, the signature lists 3"):
        load_booster(booster, tmp_path / "m", IRIS[:3])


def test_lightgbm_refuses_string_columns(tmp_path: Path) -> None:
    booster = train_booster(IRIS_X, IRIS_Y, {"objective": "multiclass", "num_class": 3})
    save_lightgbm(booster, tmp_path / "m")
    types = ("double", "double", "string", "double")
    with pytest.raises(ModelLoadError, match=r"needs numeric columns.*petal_length"):
        lightgbm_flavor.load(tmp_path / "m", flavor_conf(tmp_path / "m", "lightgbm"), IRIS, types)


def test_lightgbm_refuses_pandas_category_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(IRIS_X, columns=list(IRIS))
    frame["petal_length"] = pd.cut(frame["petal_length"], 3, labels=["s", "m", "l"])
    booster = train_booster(frame, IRIS_Y, {"objective": "multiclass", "num_class": 3})
    with pytest.raises(ModelLoadError, match="pandas category columns"):
        load_booster(booster, tmp_path / "m", IRIS)


def test_lightgbm_corrupt_file_is_named(tmp_path: Path) -> None:
    booster = train_booster(IRIS_X, IRIS_Y, {"objective": "multiclass", "num_class": 3})
    path = save_lightgbm(booster, tmp_path / "m")
    (path / "model.lgb").write_text("tree\nversion=v4\nnum_class=banana\n")
    with pytest.raises(ModelLoadError, match=rf"{path / 'model.lgb'}: LightGBM could not load it"):
        lightgbm_flavor.load(path, flavor_conf(path, "lightgbm"), IRIS, numeric(IRIS))


def test_lightgbm_sklearn_api_models_are_not_boosters(tmp_path: Path) -> None:
    model = lightgbm.LGBMClassifier(n_estimators=3, verbose=-1).fit(IRIS_X, IRIS_Y)
    save_lightgbm(model, tmp_path / "m", serialization_format="skops")
    conf = flavor_conf(tmp_path / "m", "lightgbm")
    assert conf["model_class"] == "lightgbm.sklearn.LGBMClassifier"
    assert conf["data"] == "model.skops" and conf["serialization_format"] == "skops"
    assert not lightgbm_flavor.handles(conf)


# --- ONNX: classifiers ---------------------------------------------------------------------


def save_onnx(model: Any, path: Path, **kwargs: Any) -> Path:
    mlflow.onnx.save_model(model, str(path), pip_requirements=["onnxruntime"], **kwargs)
    assert flavor_conf(path, "onnx")["data"] == "model.onnx"
    return path


def load_onnx(path: Path, columns: tuple[str, ...], types: tuple[str, ...] | None = None) -> Loaded:
    conf = flavor_conf(path, "onnx")
    return onnx_flavor.load(path, conf, columns, types or numeric(columns))


def convert(estimator: Any, X: np.ndarray, zipmap: bool | None = None) -> Any:
    options = {} if zipmap is None else {"zipmap": zipmap}
    return to_onnx(estimator, X[:1].astype(np.float32), options=options)


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_onnx_binary_classifier(tmp_path: Path, zipmap: bool) -> None:
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    path = save_onnx(convert(model, X, zipmap), tmp_path / "m")
    loaded = load_onnx(path, names(X.shape[1]))
    assert loaded.output.task == "classification"
    assert loaded.output.classes == tuple(model.classes_.tolist()) == (0, 1)
    source = "ZipMap" if zipmap else "LinearClassifier"
    assert loaded.loader.startswith(
        f"onnxruntime CPU (model.onnx, classifier, 2 classes from {source}"
    )
    np.testing.assert_allclose(loaded.scorer(X), model.predict_proba(X), rtol=0, atol=1e-5)


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_onnx_string_labels_come_from_the_graph(tmp_path: Path, zipmap: bool) -> None:
    model = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_NAMES)
    path = save_onnx(convert(model, IRIS_X, zipmap), tmp_path / "m")
    loaded = load_onnx(path, IRIS)
    assert loaded.output.classes == ("setosa", "versicolor", "virginica")
    assert loaded.output.classes == tuple(model.classes_)
    scores = loaded.scorer(IRIS_X)
    np.testing.assert_allclose(scores, model.predict_proba(IRIS_X), rtol=0, atol=1e-5)
    session = onnxruntime.InferenceSession(str(path / "model.onnx"))
    label, _ = session.run(None, {"X": IRIS_X.astype(np.float32)})
    np.testing.assert_array_equal(np.array(loaded.output.classes)[scores.argmax(axis=1)], label)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_onnx_labels_picked_from_a_classes_array(tmp_path: Path) -> None:
    # skl2onnx's MLPClassifier picks its label out of a constant array (ArrayFeatureExtractor).
    model = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, random_state=0)
    ).fit(IRIS_X, IRIS_NAMES)
    loaded = load_onnx(save_onnx(convert(model, IRIS_X, zipmap=False), tmp_path / "m"), IRIS)
    assert loaded.output.classes == tuple(model.classes_)
    assert "3 classes from the array classes" in loaded.loader
    np.testing.assert_allclose(loaded.scorer(IRIS_X), model.predict_proba(IRIS_X), atol=1e-5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_onnx_external_data_beside_the_graph(tmp_path: Path) -> None:
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, random_state=0)
    model.fit(IRIS_X, IRIS_Y + 10)
    graph = convert(model, IRIS_X, zipmap=False)
    # skl2onnx writes float_data/int32_data; only raw_data tensors can be stored outside, and
    # onnxruntime wants Reshape's shape inline.
    for i, tensor in enumerate(graph.graph.initializer):
        if tensor.name == "shape_tensor":
            continue
        raw = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        graph.graph.initializer[i].CopyFrom(raw)
    path = save_onnx(graph, tmp_path / "m", size_threshold=0, location="model.onnx.data")
    stored = onnx.load(str(path / "model.onnx"), load_external_data=False).graph.initializer
    assert {t.name for t in stored if t.data_location == TensorProto.EXTERNAL} >= {"classes"}
    loaded = load_onnx(path, IRIS)
    assert loaded.output.classes == (10, 11, 12) == tuple(model.classes_.tolist())
    np.testing.assert_allclose(loaded.scorer(IRIS_X), model.predict_proba(IRIS_X), atol=1e-5)


def test_onnx_one_input_per_column_with_strings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"color": rng.choice(["red", "green", "blue"], 200), "size": rng.normal(size=200)}
    )
    y = ((frame["color"] == "red") ^ (frame["size"] > 0)).astype(int)
    model = make_pipeline(
        ColumnTransformer(
            [("onehot", OneHotEncoder(), ["color"]), ("keep", "passthrough", ["size"])]
        ),
        LogisticRegression(),
    ).fit(frame, y)
    graph = to_onnx(
        model,
        initial_types=[
            ("color", StringTensorType([None, 1])),
            ("size", FloatTensorType([None, 1])),
        ],
        options={"zipmap": False},
    )
    path = save_onnx(graph, tmp_path / "m")
    columns, types = ("size", "color"), ("double", "string")  # not the graph's input order
    loaded = load_onnx(path, columns, types)
    matrix = frame[list(columns)].to_numpy(dtype=object)
    np.testing.assert_allclose(loaded.scorer(matrix), model.predict_proba(frame), atol=1e-5)
    with pytest.raises(ModelLoadError, match=r"input color takes strings.*column color is double"):
        load_onnx(path, columns, ("double", "double"))


def test_onnx_fixed_batch_of_one_runs_row_by_row(tmp_path: Path) -> None:
    model = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)
    graph = to_onnx(
        model, initial_types=[("X", FloatTensorType([1, 4]))], options={"zipmap": False}
    )
    loaded = load_onnx(save_onnx(graph, tmp_path / "m"), IRIS)
    assert loaded.loader.endswith(", one row per run)")
    np.testing.assert_allclose(
        loaded.scorer(IRIS_X[:7]), model.predict_proba(IRIS_X[:7]), atol=1e-5
    )


# --- ONNX: regressors ----------------------------------------------------------------------


def test_onnx_random_forest_regressor(tmp_path: Path) -> None:
    X, y = load_diabetes(return_X_y=True)
    model = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(X, y)
    path = save_onnx(convert(model, X), tmp_path / "m")
    loaded = load_onnx(path, names(X.shape[1]))
    assert loaded.output.task == "regression" and loaded.output.targets == 1
    scores = loaded.scorer(X)
    assert scores.shape == (len(X), 1)
    np.testing.assert_allclose(scores[:, 0], model.predict(X), rtol=1e-5)
    session = onnxruntime.InferenceSession(str(path / "model.onnx"))
    (own,) = session.run(None, {"X": X.astype(np.float32)})
    np.testing.assert_allclose(scores, own, rtol=1e-6)  # one thread sums in another order


def test_onnx_two_target_regressor(tmp_path: Path) -> None:
    targets = np.column_stack((IRIS_X[:, 0] * 2, IRIS_X[:, 1] - IRIS_X[:, 3]))
    model = LinearRegression().fit(IRIS_X[:, 2:], targets)
    loaded = load_onnx(save_onnx(convert(model, IRIS_X[:, 2:]), tmp_path / "m"), IRIS[2:])
    assert loaded.output.task == "regression" and loaded.output.targets == 2
    np.testing.assert_allclose(
        loaded.scorer(IRIS_X[:, 2:]), model.predict(IRIS_X[:, 2:]), atol=1e-5
    )


# --- ONNX: what is refused -----------------------------------------------------------------


def test_onnx_corrupt_file_is_named(tmp_path: Path) -> None:
    model = LinearRegression().fit(IRIS_X, IRIS_Y)
    path = save_onnx(convert(model, IRIS_X), tmp_path / "m")
    (path / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf")
    with pytest.raises(ModelLoadError, match=rf"{path / 'model.onnx'}: onnxruntime could not"):
        load_onnx(path, IRIS)


def test_onnx_refuses_a_different_number_of_columns(tmp_path: Path) -> None:
    model = LinearRegression().fit(IRIS_X, IRIS_Y)
    path = save_onnx(convert(model, IRIS_X), tmp_path / "m")
    with pytest.raises(
        ModelLoadError,
        match=r"input X takes 4 columns \(tensor\(float\) \[None, 4\]\), the signature lists 3",
    ):
        load_onnx(path, IRIS[:3])
    with pytest.raises(
        ModelLoadError, match=r"needs numeric columns, got string ones \['petal_width'\]"
    ):
        load_onnx(path, IRIS, ("double", "double", "double", "string"))


def graph_model(nodes: list[Any], outputs: list[Any]) -> Any:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph(nodes, "g", [x], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_refuses_a_label_it_cannot_trace_to_classes(tmp_path: Path) -> None:
    model = graph_model(
        [
            helper.make_node("Softmax", ["X"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 4]),
        ],
    )
    onnx.checker.check_model(model)
    path = save_onnx(model, tmp_path / "m")
    with pytest.raises(ModelLoadError, match=r"class labels of .* label: it comes from a ArgMax"):
        load_onnx(path, IRIS)


def test_onnx_refuses_outputs_it_cannot_map(tmp_path: Path) -> None:
    model = graph_model(
        [helper.make_node("Identity", ["X"], ["a"]), helper.make_node("Relu", ["X"], ["b"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 4]),
        ],
    )
    path = save_onnx(model, tmp_path / "m")
    with pytest.raises(
        ModelLoadError,
        match=r"cannot tell what the graph answers from its outputs \(a tensor\(float\) \[None, 4\], b ",
    ):
        load_onnx(path, IRIS)
