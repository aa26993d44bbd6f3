"""Loading an MLflow model directory into something that scores a numpy matrix.

The pipeline puts each MLflow model, unchanged, under ``<bento model path>/mlflow_model/``
(contract 1). :func:`load_model` reads its ``MLmodel`` file and picks, in this order:

``xgboost`` flavor
    ``xgboost.Booster(model_file=...)`` on the saved json/ubj file, scored with
    ``inplace_predict`` on the float matrix with ``nthread=1`` (more threads made one-row
    calls 20x slower on a shared 2-core machine). Works for a raw ``Booster`` and for the
    sklearn wrappers (``XGBClassifier``: its booster's ``binary:logistic`` output *is*
    ``predict_proba[:, 1]``; ``best_iteration`` is honoured like the wrapper does).
``sklearn`` flavor, ``serialization_format: skops``
    ``skops.io.load`` trusting only the types ``skops.io.get_untrusted_types`` reports from
    the ``sklearn``, ``numpy`` and ``scipy`` packages; anything else is refused.
    Score: ``predict_proba[:, 1]`` for a binary classifier, ``predict`` for a regressor.
anything needing pickle
    sklearn ``pickle``/``cloudpickle``, skops files with other types, or a model with only the
    ``python_function`` flavor (a pickled ``PythonModel``, or a flavor we have no native
    loader for) is REFUSED (:class:`~services.errors.UnsafeModelError`) unless
    ``allow_pickle`` is true; then a loud warning is logged and ``mlflow`` (imported only
    here, so it must be installed in the image) loads it.

Columns: the model's signature gives its input columns; each must be one of the configured
features, and the matrix (in feature order) is reordered to the model's order if needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError, UnsafeModelError, describe

logger = logging.getLogger("bentoship.service")

MODEL_SUBDIR = "mlflow_model"
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score: ``predict_scores(matrix)`` -> one float per row.

    ``matrix`` has the configured features as columns, in config order.
    """

    flavor: str
    loader: str
    columns: tuple[str, ...]
    scorer: Scorer = field(repr=False)
    take: tuple[int, ...] | None = None

    def predict_scores(self, matrix: np.ndarray) -> np.ndarray:
        if self.take is not None:
            matrix = matrix[:, list(self.take)]
        return np.asarray(self.scorer(matrix), dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class _Signature:
    columns: tuple[str, ...] | None
    types: tuple[str, ...] | None


def load_model(
    model_dir: str | Path,
    feature_names: Sequence[str],
    feature_types: Sequence[str] | None = None,
    *,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the MLflow model in ``model_dir`` (the folder holding ``MLmodel``)."""
    model_dir = Path(model_dir)
    mlmodel = read_mlmodel(model_dir)
    flavors = mlmodel.get("flavors") or {}
    signature = _signature(mlmodel)
    features = tuple(feature_names)
    types = tuple(feature_types) if feature_types is not None else ("double",) * len(features)
    columns, take = _column_mapping(model_dir, signature, features)
    column_types = tuple(types[features.index(c)] for c in columns)
    has_strings = "string" in column_types

    if "xgboost" in flavors:
        if has_strings:
            raise ModelLoadError(
                f"{model_dir}: the native XGBoost loader needs numeric columns, got string ones"
            )
        scorer, loader = _load_xgboost(model_dir, flavors["xgboost"], len(columns))
        flavor = "xgboost"
    elif "sklearn" in flavors:
        scorer, loader = _load_sklearn(model_dir, flavors["sklearn"], allow_pickle)
        flavor = "sklearn"
        if has_strings:
            scorer = _via_frame(scorer, columns, column_types)
    elif "python_function" in flavors:
        what = ", ".join(sorted(flavors)) or "none"
        _refuse_unless(
            allow_pickle,
            model_dir,
            f"it has no native flavor we load (flavors: {what}) and needs mlflow.pyfunc",
        )
        scorer, loader = _load_pyfunc(model_dir, columns, column_types)
        flavor = "python_function"
    else:
        raise ModelLoadError(
            f"{model_dir}/MLmodel: no flavor bentoship can load (flavors: {sorted(flavors)})"
        )
    return LoadedModel(flavor=flavor, loader=loader, columns=columns, scorer=scorer, take=take)


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    import yaml

    path = model_dir / "MLmodel"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{path}: not found; the model folder must hold the MLflow model under {MODEL_SUBDIR}/"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"{path}: unreadable ({describe(exc)})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: not an MLmodel file (top level is not a mapping)")
    return data


def _signature(mlmodel: dict[str, Any]) -> _Signature:
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        return _Signature(None, None)
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if not all(isinstance(s, dict) and "name" in s for s in specs):
        return _Signature(None, None)  # tensor-based signature: no column names
    return _Signature(tuple(s["name"] for s in specs), tuple(s.get("type", "") for s in specs))


def _column_mapping(
    model_dir: Path, signature: _Signature, features: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    if signature.columns is None:
        return features, None
    missing = [c for c in signature.columns if c not in features]
    if missing:
        raise ModelLoadError(
            f"{model_dir}/MLmodel: the model's signature needs column(s) {missing} that "
            f"bentoship.json's features do not list ({list(features)})"
        )
    take = tuple(features.index(c) for c in signature.columns)
    if take == tuple(range(len(features))):
        return signature.columns, None
    return signature.columns, take


# --- XGBoost -----------------------------------------------------------------------------

_SKLEARN_WRAPPERS = ("xgboost.sklearn.", "xgboost.XGB")


def _load_xgboost(model_dir: Path, conf: dict[str, Any], width: int) -> tuple[Scorer, str]:
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
    if num_target > 1:
        raise ModelLoadError(
            f"{model_file}: multi-target models ({num_target} targets) give no single score"
        )

    iteration_range = (0, 0)
    best = booster.attr("best_iteration")
    if best is not None and model_class.startswith(_SKLEARN_WRAPPERS):
        iteration_range = (0, int(best) + 1)  # what XGBClassifier.predict_proba does

    def predict(matrix: np.ndarray) -> np.ndarray:
        return booster.inplace_predict(matrix, iteration_range=iteration_range)  # type: ignore[no-any-return]

    if objective.startswith("multi:"):
        if num_class != 2 or objective != "multi:softprob":
            raise ModelLoadError(
                f"{model_file}: objective {objective} with {num_class} classes has no single score; "
                "bentoship serves binary classifiers and regressors"
            )

        def scorer(matrix: np.ndarray) -> np.ndarray:
            return predict(matrix)[:, 1]

    elif objective == "binary:logitraw":

        def scorer(matrix: np.ndarray) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-predict(matrix)))

    else:
        scorer = predict
    return scorer, f"xgboost.Booster native ({model_class}, {objective})"


# --- scikit-learn ------------------------------------------------------------------------


def _load_sklearn(model_dir: Path, conf: dict[str, Any], allow_pickle: bool) -> tuple[Scorer, str]:
    fmt = str(conf.get("serialization_format", "pickle"))
    model_file = model_dir / str(conf.get("pickled_model", "model.pkl"))
    if fmt == "skops":
        estimator = _load_skops(model_file, allow_pickle)
        how = "skops"
    elif fmt in ("pickle", "cloudpickle"):
        _refuse_unless(allow_pickle, model_dir, f"its scikit-learn model is serialized with {fmt}")
        estimator = _with_mlflow(
            lambda mlflow: mlflow.sklearn.load_model(str(model_dir)), model_dir
        )
        how = f"{fmt} via mlflow.sklearn"
    else:
        raise ModelLoadError(f"{model_dir}/MLmodel: unknown sklearn serialization_format {fmt!r}")
    scorer, kind = _sklearn_scorer(estimator, model_dir)
    return scorer, f"sklearn {type(estimator).__name__} ({how}, {kind})"


def _load_skops(model_file: Path, allow_pickle: bool) -> Any:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=model_file)
    except Exception as exc:
        raise ModelLoadError(f"{model_file}: not a readable skops file ({describe(exc)})") from exc
    foreign = [t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_PACKAGES]
    if foreign:
        _refuse_unless(
            allow_pickle,
            model_file.parent,
            f"{model_file.name} contains types outside {'/'.join(TRUSTED_PACKAGES)}: {foreign}",
        )
    try:
        return skops.io.load(model_file, trusted=list(untrusted))
    except Exception as exc:
        raise ModelLoadError(f"{model_file}: skops could not load it ({describe(exc)})") from exc


def _sklearn_scorer(estimator: Any, model_dir: Path) -> tuple[Scorer, str]:
    import warnings

    from sklearn.base import is_classifier

    # Fitted on a DataFrame, sklearn warns on every numpy call; we pass the columns in the
    # signature's order, which is what the warning guards against, and DataFrames cost ~4x.
    warnings.filterwarnings(
        "ignore", message="X does not have valid feature names", category=UserWarning
    )
    if is_classifier(estimator):
        classes = getattr(estimator, "classes_", None)
        if classes is None or len(classes) != 2 or not hasattr(estimator, "predict_proba"):
            raise ModelLoadError(
                f"{model_dir}: {type(estimator).__name__} is not a binary classifier with predict_proba "
                "(bentoship serves binary classifiers and regressors)"
            )
        predict_proba = estimator.predict_proba

        def proba(matrix: np.ndarray) -> np.ndarray:
            return predict_proba(matrix)[:, 1]  # type: ignore[no-any-return]

        return proba, "predict_proba[:, 1]"
    return estimator.predict, "predict"


# --- pickle fallbacks ----------------------------------------------------------------------


def _refuse_unless(allow_pickle: bool, model_dir: Path, why: str) -> None:
    if not allow_pickle:
        raise UnsafeModelError(
            f"{model_dir}: refusing to load, {why}. Loading it can run arbitrary code. Re-save the "
            "model with a native format (mlflow.xgboost, or mlflow.sklearn with skops), or build "
            "with allow_pickle=true if you trust its origin."
        )
    logger.warning(
        "!!! allow_pickle=true: loading %s although %s. This can execute arbitrary code from the "
        "model artifact. Only do this for models from a trusted source. !!!",
        model_dir,
        why,
    )


def _with_mlflow(load: Callable[[Any], Any], model_dir: Path) -> Any:
    try:
        import mlflow.pyfunc
        import mlflow.sklearn
    except ImportError as exc:
        raise ModelLoadError(
            f"{model_dir}: allow_pickle loads through mlflow, which is not installed in this image"
        ) from exc
    try:
        with _mlflow_pickle_allowed():
            return load(mlflow)
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: mlflow could not load it ({describe(exc)})") from exc


@contextlib.contextmanager
def _mlflow_pickle_allowed() -> Iterator[None]:
    # MLflow has its own opt-in for deserialising models; allow_pickle is that decision.
    name = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    before = os.environ.get(name)
    os.environ[name] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _load_pyfunc(
    model_dir: Path, columns: tuple[str, ...], types: tuple[str, ...]
) -> tuple[Scorer, str]:
    model = _with_mlflow(lambda mlflow: mlflow.pyfunc.load_model(str(model_dir)), model_dir)

    def scorer(matrix: np.ndarray) -> np.ndarray:
        out = np.asarray(model.predict(_frame(matrix, columns, types)), dtype=np.float64)
        if out.ndim == 2 and out.shape[1] == 2:
            return out[:, 1]  # two columns: class probabilities of a binary classifier
        if out.ndim == 2 and out.shape[1] == 1:
            return out[:, 0]
        return out

    loader_module = model.metadata.flavors.get("python_function", {}).get("loader_module")
    return scorer, f"mlflow.pyfunc (pickle allowed, {loader_module})"


_PANDAS_DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "object",
}


def _frame(matrix: np.ndarray, columns: tuple[str, ...], types: tuple[str, ...]) -> Any:
    import pandas as pd

    data = {}
    for j, (name, column_type) in enumerate(zip(columns, types)):
        column = matrix[:, j]
        dtype = _PANDAS_DTYPES.get(column_type, "float64")
        if dtype != "object" and not (
            dtype.startswith("int") and np.isnan(column.astype(float)).any()
        ):
            column = column.astype(dtype)
        data[name] = column
    return pd.DataFrame(data, columns=list(columns))


def _via_frame(scorer: Scorer, columns: tuple[str, ...], types: tuple[str, ...]) -> Scorer:
    def framed(matrix: np.ndarray) -> np.ndarray:
        return scorer(_frame(matrix, columns, types))

    return framed
