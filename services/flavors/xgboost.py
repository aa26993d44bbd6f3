"""XGBoost's own model file (json/ubj), scored with ``Booster.inplace_predict``.

Works for a raw ``Booster`` and for the sklearn wrappers that ``mlflow.xgboost`` saves (their
booster's output *is* ``predict_proba``; ``best_iteration`` is honoured as the wrappers do).
``nthread=1``: more threads made one-row calls 20x slower on a shared 2-core machine.

The task comes from the booster's objective: ``binary:logistic``/``binary:logitraw`` are
classifiers with classes ``(0, 1)``, ``multi:softprob``/``multi:softmax`` classifiers with
classes ``0..num_class-1`` (softmax answers labels only, so its margins are turned into
probabilities the way softprob would), everything else (``reg:*``, ``count:*``, ``rank:*``,
``survival:*``) a regressor with ``num_target`` values. ``binary:hinge`` answers 0/1 only and
is refused: it has no probabilities to serve.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError, describe
from services.flavors import Loaded, ModelOutput

_SKLEARN_WRAPPERS = ("xgboost.sklearn.", "xgboost.XGB")


def import_without_sklearn() -> None:
    """Import XGBoost as if scikit-learn were not installed, unless either is imported already.

    At import XGBoost imports scikit-learn, when it is installed, to give the estimators of
    ``xgboost.sklearn`` their base classes, and scikit-learn brings pandas and scipy.stats:
    1.1-1.4 s of XGBoost's 1.6 s import in the image, in every worker start, for a loader that
    only uses the ``Booster``. A ``None`` in ``sys.modules`` makes an import fail as if the
    package were absent (the import system's documented behaviour): XGBoost then falls back to
    plain base classes, and scikit-learn is importable again right after. Only for a process in
    which nothing uses XGBoost's scikit-learn estimators (``loading.import_loaders`` decides).
    """
    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    try:
        import xgboost  # noqa: F401
    finally:
        del sys.modules["sklearn"]


def load(model_dir: Path, conf: dict[str, Any], width: int) -> Loaded:
    import xgboost

    model_file = model_dir / str(conf.get("data", "model.xgb"))
    model_class = str(conf.get("model_class", "xgboost.core.Booster"))
    try:
        booster = xgboost.Booster(model_file=str(model_file))
    except Exception as exc:
        raise ModelLoadError(f"{model_file}: XGBoost could not load it ({describe(exc)})") from exc
    booster.set_param({"nthread": 1})
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    params = learner.get("learner_model_param", {})
    num_class = int(params.get("num_class", "0") or 0)
    num_target = int(params.get("num_target", "1") or 1)
    num_feature = int(params.get("num_feature", width) or width)
    if num_feature != width:
        raise ModelLoadError(
            f"{model_file}: the booster expects {num_feature} features, the signature lists {width}"
        )
    iteration_range = (0, 0)
    best = booster.attr("best_iteration")
    if best is not None and model_class.startswith(_SKLEARN_WRAPPERS):
        iteration_range = (0, int(best) + 1)  # what XGBClassifier.predict_proba does

    def predict(matrix: np.ndarray, kind: str = "value") -> np.ndarray:
        return np.asarray(  # type: ignore[no-any-return]
            booster.inplace_predict(matrix, iteration_range=iteration_range, predict_type=kind)
        )

    how = f"xgboost.Booster native ({model_class}, {objective})"
    if objective in ("binary:logistic", "binary:logitraw"):
        logistic = objective == "binary:logistic"

        def binary(matrix: np.ndarray) -> np.ndarray:
            p = predict(matrix).reshape(-1)
            if not logistic:
                p = 1.0 / (1.0 + np.exp(-p))
            return np.column_stack((1.0 - p, p))

        return Loaded(binary, ModelOutput("classification", (0, 1)), how)
    if objective == "multi:softprob":

        def softprob(matrix: np.ndarray) -> np.ndarray:
            return predict(matrix).reshape(matrix.shape[0], num_class)

        return Loaded(softprob, ModelOutput("classification", tuple(range(num_class))), how)
    if objective == "multi:softmax":

        def softmax(matrix: np.ndarray) -> np.ndarray:
            margin = predict(matrix, "margin").reshape(matrix.shape[0], num_class)
            exp = np.exp(margin - margin.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

        return Loaded(softmax, ModelOutput("classification", tuple(range(num_class))), how)
    if objective.startswith(("binary:", "multi:")):
        raise ModelLoadError(
            f"{model_file}: objective {objective} answers class labels without probabilities; "
            "train with binary:logistic or multi:softprob to serve it"
        )

    def values(matrix: np.ndarray) -> np.ndarray:
        return predict(matrix).reshape(matrix.shape[0], num_target)

    return Loaded(values, ModelOutput("regression", targets=num_target), how)
