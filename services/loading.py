"""Loading an MLflow model directory into something that answers a numpy matrix.

The pipeline puts each MLflow model, unchanged, under ``<bento model path>/mlflow_model/``
(contract 1). :func:`load_model` reads its ``MLmodel`` file and picks a native loader from
``services/flavors/`` (each documents its format and how it finds the model's task), in this
order: ``xgboost``, ``lightgbm`` (a ``Booster`` in LightGBM's text format), ``onnx``
(onnxruntime on CPU), ``sklearn`` saved with skops (trusting sklearn/numpy/scipy types and the
types trusted by name). Anything needing pickle (sklearn ``pickle``/``cloudpickle``, a
LightGBM sklearn model saved with pickle, a model with only the ``python_function`` flavor)
is REFUSED (:class:`~services.errors.UnsafeModelError`) unless ``allow_pickle`` is true; then
a loud warning is logged and ``mlflow`` (imported only here, so it must be installed in the
image) loads it.

The result answers ``predict(matrix) -> (n, k)`` float64: for a classifier the probability of
each of ``output.classes``, for a regressor its ``output.targets`` values (see
``services/flavors/__init__.py``). With an ``example`` matrix the answer's width is checked,
and a regressor's number of targets taken from it.

Columns: the model's signature gives its input columns; each must be one of the configured
features, and the matrix (in feature order) is reordered to the model's order if needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from services.config import ServiceConfig
from services.errors import ModelLoadError, UnsafeModelError, describe
from services.flavors import Loaded, ModelOutput, Scorer
from services.flavors import lightgbm as lightgbm_flavor
from services.flavors import sklearn as sklearn_flavor
from services.flavors import xgboost as xgboost_flavor

logger = logging.getLogger("bentoship.service")

MODEL_SUBDIR = "mlflow_model"
TRUSTED_PACKAGES = sklearn_flavor.TRUSTED_PACKAGES
# Flavors whose loaders use neither scikit-learn nor XGBoost's estimators built on it (a
# LightGBM model may be its scikit-learn API, loaded with skops).
_WITHOUT_SKLEARN = frozenset({"xgboost", "onnx"})


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer: ``predict(matrix)`` -> ``(n, output.width)`` float64.

    ``matrix`` has the configured features as columns, in config order.
    """

    flavor: str
    loader: str
    columns: tuple[str, ...]
    output: ModelOutput
    scorer: Scorer = field(repr=False)
    take: tuple[int, ...] | None = None

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if self.take is not None:
            matrix = matrix[:, list(self.take)]
        out = np.asarray(self.scorer(matrix), dtype=np.float64)
        return out.reshape(out.shape[0], -1) if out.ndim != 2 else out


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
    trusted_types: Sequence[str] = (),
    example: np.ndarray | None = None,
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

    def numeric_only(family: str) -> None:
        if has_strings:
            raise ModelLoadError(
                f"{model_dir}: the native {family} loader needs numeric columns, got string ones"
            )

    lgb_conf = flavors.get("lightgbm") or {}
    if "xgboost" in flavors:
        numeric_only("XGBoost")
        loaded = xgboost_flavor.load(model_dir, flavors["xgboost"], len(columns))
        flavor = "xgboost"
    elif lgb_conf and lightgbm_flavor.handles(lgb_conf):
        numeric_only("LightGBM")
        loaded = lightgbm_flavor.load(model_dir, lgb_conf, columns, column_types)
        flavor = "lightgbm"
    elif "onnx" in flavors:
        from services.flavors import onnx as onnx_flavor

        loaded = onnx_flavor.load(model_dir, flavors["onnx"], columns, column_types)
        flavor = "onnx"
    elif "sklearn" in flavors or lgb_conf:
        conf = flavors.get("sklearn") or lgb_conf
        family = "sklearn" if "sklearn" in flavors else "lightgbm"
        loaded = _load_sklearn(model_dir, conf, family, allow_pickle, trusted_types)
        flavor = family
        if has_strings:
            loaded = replace(loaded, scorer=_via_frame(loaded.scorer, columns, column_types))
    elif "python_function" in flavors:
        what = ", ".join(sorted(flavors)) or "none"
        _refuse_unless(
            allow_pickle,
            model_dir,
            f"it has no native flavor we load (flavors: {what}) and needs mlflow.pyfunc",
        )
        loaded = _load_pyfunc(model_dir, columns, column_types)
        flavor = "python_function"
    else:
        raise ModelLoadError(
            f"{model_dir}/MLmodel: no flavor bentoship can load (flavors: {sorted(flavors)})"
        )
    model = LoadedModel(flavor=flavor, loader=loaded.loader, columns=columns,
                        output=loaded.output, scorer=loaded.scorer, take=take)
    return model if example is None else _checked_on(model, example, model_dir)


def import_loaders(flavors: Collection[str], *, hooks: bool) -> None:
    """Before a service's models load: import XGBoost without scikit-learn when nothing in the
    process needs scikit-learn, i.e. every variant is XGBoost (or ONNX) and no team hooks run
    (they may use XGBoost's scikit-learn estimators). A second or a worker's start saved."""
    if "xgboost" in flavors and set(flavors) <= _WITHOUT_SKLEARN and not hooks:
        xgboost_flavor.import_without_sklearn()


def load_variant(config: ServiceConfig, model_dir: str | Path) -> LoadedModel:
    """Load one variant's model as the service built from `config` does: with its features,
    pickle decision and trusted types, checked on the features' example row."""
    from services.json_schema import example_row
    from services.schema import compile_schema, validate

    example = validate({"rows": [example_row(config)]}, compile_schema(config, config.features))
    return load_model(
        model_dir,
        config.feature_names,
        tuple(f.type for f in config.features),
        allow_pickle=config.allow_pickle,
        trusted_types=config.trusted_types,
        example=example.matrix,
    )


def _checked_on(model: LoadedModel, example: np.ndarray, model_dir: Path) -> LoadedModel:
    """The model's answer to `example` has the width its output promises (a regressor's
    number of targets is taken from it); raises ``ModelLoadError`` otherwise."""
    try:
        answer = model.predict(example)
    except Exception as exc:
        raise ModelLoadError(
            f"{model_dir}: loaded, but cannot answer its input example ({describe(exc)})"
        ) from exc
    width = answer.shape[1] if answer.ndim == 2 else 1
    if model.output.task == "regression" and width != model.output.targets:
        return replace(model, output=ModelOutput("regression", targets=width))
    if width != model.output.width:
        raise ModelLoadError(
            f"{model_dir}: {model.loader} answered {width} columns for classes "
            f"{list(model.output.classes)}"
        )
    return model


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


# --- scikit-learn (and LightGBM's sklearn API) ---------------------------------------------


def _load_sklearn(
    model_dir: Path, conf: dict[str, Any], family: str, allow_pickle: bool,
    trusted_types: Sequence[str],
) -> Loaded:
    fmt = str(conf.get("serialization_format", "pickle"))
    model_file = model_dir / str(conf.get("pickled_model") or conf.get("data") or "model.pkl")
    if fmt == "skops":
        untrusted, foreign = sklearn_flavor.untrusted_types(model_file, trusted_types)
        if foreign:
            author = conf.get("skops_trusted_types") or ()
            _refuse_unless(allow_pickle, model_dir,
                           sklearn_flavor.refusal(model_file, foreign, author), skops=True)
        estimator = sklearn_flavor.load_skops(model_file, untrusted)
        how = "skops" + (f", trusting {sorted(trusted_types)}" if trusted_types else "")
    elif fmt in ("pickle", "cloudpickle"):
        _refuse_unless(allow_pickle, model_dir, f"its model is serialized with {fmt}")
        estimator = _with_mlflow(
            lambda mlflow: getattr(mlflow, family).load_model(str(model_dir)), model_dir
        )
        how = f"{fmt} via mlflow"
    else:
        raise ModelLoadError(f"{model_dir}/MLmodel: unknown serialization_format {fmt!r}")
    return sklearn_flavor.scorer(estimator, model_dir, how)


# --- pickle fallbacks ----------------------------------------------------------------------


def _refuse_unless(allow_pickle: bool, model_dir: Path, why: str, *, skops: bool = False) -> None:
    if not allow_pickle:
        todo = (
            "Or build with allow_pickle=true (--allow-pickle), which trusts every type, only if "
            "you trust its origin." if skops else
            "Loading it can run arbitrary code. Re-save the model with a native format "
            "(mlflow.xgboost, mlflow.lightgbm, mlflow.onnx, or mlflow.sklearn with skops), or "
            "build with allow_pickle=true (--allow-pickle) if you trust its origin."
        )
        raise UnsafeModelError(f"{model_dir}: refusing to load, {why.rstrip('.')}. {todo}")
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


def _load_pyfunc(model_dir: Path, columns: tuple[str, ...], types: tuple[str, ...]) -> Loaded:
    """A pickled ``PythonModel``: served as a regressor of the numbers its ``predict`` answers
    (it names no classes to serve as labels)."""
    model = _with_mlflow(lambda mlflow: mlflow.pyfunc.load_model(str(model_dir)), model_dir)

    def scorer(matrix: np.ndarray) -> np.ndarray:
        out = model.predict(_frame(matrix, columns, types))
        try:
            values = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelLoadError(
                f"{model_dir}: its pyfunc predict answered non-numbers; a python_function model "
                "is served as a regressor (log a classifier with a native flavor)"
            ) from None
        return values.reshape(values.shape[0], -1)

    loader_module = model.metadata.flavors.get("python_function", {}).get("loader_module")
    return Loaded(scorer, ModelOutput("regression"),
                  f"mlflow.pyfunc (pickle allowed, {loader_module})")


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
