"""LightGBM's own text model file (``model.lgb``), scored with ``Booster.predict``.

This loader is for the ``lightgbm`` flavor with ``model_class: lightgbm.basic.Booster`` (a
model trained with ``lightgbm.train``): ``lightgbm.Booster(model_file=...)`` on the flavor's
``data`` file, scored on the float matrix with ``num_threads=1`` (one-row calls are the
common case, and threads on a shared 2-core machine only cost). The scikit-learn API models
(``model_class: lightgbm.sklearn.LGBMClassifier`` and friends) are not LightGBM's text format:
``mlflow.lightgbm`` serializes them with skops or pickle under the same flavor, so
``services/loading.py`` sends them down the scikit-learn path (:func:`handles` says which).

The task comes from the booster's objective: ``binary`` is a classifier with classes
``(0, 1)`` (``[1 - p, p]``), ``multiclass``/``multiclassova`` a classifier with classes
``0..num_class-1`` (``multiclassova``'s independent sigmoids are normalized so each row sums
to 1, which keeps their order), and everything else (``regression*``, ``huber``, ``fair``,
``poisson``, ``quantile``, ``mape``, ``gamma``, ``tweedie``, ``cross_entropy``, the ranking
objectives, a custom objective's raw score) a regressor with one value per row. A custom
objective with several trees per iteration gives raw margins, not probabilities, and is refused.

Models trained on pandas ``category`` columns are refused: LightGBM maps category values to
codes from the DataFrame's dtype, and a numeric matrix carries no dtype to map from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError, describe
from services.flavors import Loaded, ModelOutput

BOOSTER_CLASS = "lightgbm.basic.Booster"

_CLASSIFIERS = ("binary", "multiclass", "multiclassova")


def handles(conf: dict[str, Any]) -> bool:
    """Whether a ``lightgbm`` flavor's model is a raw Booster in LightGBM's text format (this
    loader), rather than a scikit-learn API model serialized with skops or pickle."""
    return str(conf.get("model_class", BOOSTER_CLASS)) == BOOSTER_CLASS


def load(
    model_dir: Path,
    conf: dict[str, Any],
    columns: tuple[str, ...],
    column_types: tuple[str, ...],
) -> Loaded:
    """Load the ``lightgbm`` flavor's Booster from ``model_dir`` for ``columns`` (in order)."""
    model_file = model_dir / str(conf.get("data", "model.lgb"))
    if not handles(conf):
        raise ModelLoadError(
            f"{model_dir}/MLmodel: {conf.get('model_class')} is a scikit-learn API model "
            f"({conf.get('serialization_format', 'pickle')}), not a Booster file: it loads "
            "through the scikit-learn loader"
        )
    strings = [c for c, t in zip(columns, column_types) if t == "string"]
    if strings:
        raise ModelLoadError(
            f"{model_file}: the native LightGBM loader needs numeric columns, "
            f"got string ones {strings}"
        )
    lightgbm = _import_lightgbm(model_file)
    if not model_file.is_file():
        raise ModelLoadError(f"{model_file}: not found (the lightgbm flavor's data file)")
    try:
        booster = lightgbm.Booster(model_file=str(model_file))
        # One iteration is enough for the header fields; dumping every tree costs seconds.
        header = booster.dump_model(num_iteration=1)
    except Exception as exc:
        raise ModelLoadError(f"{model_file}: LightGBM could not load it ({describe(exc)})") from exc

    num_feature = booster.num_feature()
    if num_feature != len(columns):
        raise ModelLoadError(
            f"{model_file}: the booster expects {num_feature} features, "
            f"the signature lists {len(columns)} ({list(columns)})"
        )
    if booster.pandas_categorical:
        raise ModelLoadError(
            f"{model_file}: the booster was trained on pandas category columns, whose values "
            "LightGBM maps to codes from the DataFrame's dtype; the native loader scores numbers "
            "only. Train on numeric codes (and send those), or log an ONNX conversion"
        )
    take = _feature_order(booster.feature_name(), columns)

    objective = str(header.get("objective", "")).split(" ", 1)[0] or "custom"
    num_class = int(header.get("num_tree_per_iteration", 1) or 1)
    how = f"lightgbm.Booster native ({model_file.name}, {objective})"

    def predict(matrix: np.ndarray) -> np.ndarray:
        if take is not None:
            matrix = matrix[:, take]
        return np.asarray(booster.predict(matrix, num_threads=1))

    if objective == "binary":

        def binary(matrix: np.ndarray) -> np.ndarray:
            p = predict(matrix).reshape(-1)
            return np.column_stack((1.0 - p, p))

        return Loaded(binary, ModelOutput("classification", (0, 1)), how)
    if objective in _CLASSIFIERS:
        ova = objective == "multiclassova"

        def multiclass(matrix: np.ndarray) -> np.ndarray:
            p = predict(matrix).reshape(matrix.shape[0], num_class)
            return p / p.sum(axis=1, keepdims=True) if ova else p

        return Loaded(multiclass, ModelOutput("classification", tuple(range(num_class))), how)
    if num_class > 1:
        raise ModelLoadError(
            f"{model_file}: objective {objective} with {num_class} trees per iteration answers "
            "raw margins, not probabilities; train with multiclass to serve it"
        )

    def values(matrix: np.ndarray) -> np.ndarray:
        return predict(matrix).reshape(matrix.shape[0], 1)

    return Loaded(values, ModelOutput("regression", targets=1), how)


def _import_lightgbm(model_file: Path) -> Any:
    try:
        import lightgbm
    except (ImportError, OSError) as exc:
        # OSError: lib_lightgbm.so links the system's libgomp.so.1, which wheels do not carry.
        raise ModelLoadError(
            f"{model_file}: lightgbm cannot be imported in this image ({describe(exc)})"
        ) from exc
    return lightgbm


def _feature_order(names: list[str], columns: tuple[str, ...]) -> list[int] | None:
    """The matrix column for each booster feature, when the booster knows the signature's
    names in another order.

    A booster trained on a DataFrame records its column names; a signature lists the same
    columns, normally in the same order. Names LightGBM made up (``Column_0``...) or changed
    (it replaces characters JSON cannot hold) say nothing, and the signature's order stands.
    """
    if list(columns) == names or sorted(columns) != sorted(names):
        return None
    return [columns.index(name) for name in names]
