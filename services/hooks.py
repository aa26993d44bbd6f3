"""Pre- and post-processing hooks: the built-ins, loading custom ones, running them safely.

A hook is named in ``bentoship.json`` as ``"package.module:function"`` and must be importable
inside the image (ship it inside ``services/``). The contracts:

``preprocess(matrix: np.ndarray, features: tuple[str, ...]) -> np.ndarray``
    Called once per request on the validated matrix (one row per input row, columns in
    feature order) before routing splits it. Must return a 2-D array with the same number
    of rows and columns; the built-in returns its input unchanged.

``postprocess(scores: np.ndarray, threshold: float) -> list[dict]``
    Called per variant with that variant's 1-D float scores. Returns one JSON-serialisable
    dict per score; the service adds ``variant`` and ``model_version`` to each. The built-in
    returns ``{"prediction": int(score >= threshold), "score": score}``.

Whatever a hook raises, or a wrong shape it returns, becomes ``preprocess_failed`` /
``postprocess_failed`` (500) with the reason in ``detail``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from services.errors import ConfigError, PostprocessError, PreprocessError, describe, problem

Preprocess = Callable[[np.ndarray, tuple[str, ...]], np.ndarray]
Postprocess = Callable[[np.ndarray, float], list[dict[str, Any]]]


def preprocess(matrix: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """Built-in pre-processing: identity."""
    return matrix


def postprocess(scores: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Built-in post-processing: a 0/1 prediction at ``threshold`` plus the raw score."""
    predictions = (scores >= threshold).tolist()
    return [
        {"prediction": int(label), "score": score}
        for label, score in zip(predictions, scores.tolist())
    ]


def resolve_hook(spec: str, key: str) -> Callable[..., Any]:
    """Import ``"module:function"``; ``key`` names the config key for messages."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a config problem
        raise ConfigError(
            f"bentoship.json {key}: cannot import {module_name!r} ({describe(exc)})"
        ) from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"bentoship.json {key}: {module_name!r} has no callable {attr!r}")
    return function  # type: ignore[no-any-return]


def run_preprocess(hook: Preprocess, matrix: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    try:
        out = hook(matrix, features)
    except Exception as exc:
        raise PreprocessError(
            "preprocess hook raised", [problem(None, None, describe(exc))]
        ) from exc
    if not isinstance(out, np.ndarray) or out.ndim != 2 or out.shape != matrix.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise PreprocessError(
            "preprocess hook returned the wrong shape",
            [problem(None, None, f"expected an array of shape {matrix.shape}, got {shape}")],
        )
    return out


def run_postprocess(
    hook: Postprocess, scores: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    try:
        out = hook(scores, threshold)
    except Exception as exc:
        raise PostprocessError(
            "postprocess hook raised", [problem(None, None, describe(exc))]
        ) from exc
    if not isinstance(out, list) or len(out) != len(scores):
        got = len(out) if isinstance(out, list) else type(out).__name__
        raise PostprocessError(
            "postprocess hook returned the wrong shape",
            [problem(None, None, f"expected a list of {len(scores)} objects, got {got}")],
        )
    for i, row in enumerate(out):
        if not isinstance(row, dict):
            raise PostprocessError(
                "postprocess hook returned a non-object row",
                [problem(None, None, f"item {i}: expected an object, got {type(row).__name__}")],
            )
    return out
