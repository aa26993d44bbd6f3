"""scikit-learn estimators: read from skops files without pickle, scored with their own methods.

``skops.io.load`` trusts only what ``skops.io.get_untrusted_types`` reports from the
``sklearn``, ``numpy`` and ``scipy`` packages, plus the types the build trusted by name
(``--trust-type``, ``[build] trusted_types``); anything else is refused, naming every type.
The types the model's author listed when logging (the flavor's ``skops_trusted_types``) are
shown as a hint, never trusted by themselves.

A classifier (``is_classifier``) answers ``predict_proba`` in the order of its ``classes_``;
anything else answers ``predict`` (one column per target).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError, describe
from services.flavors import Loaded, ModelOutput, class_labels

TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")


def untrusted_types(
    model_file: Path, trusted_types: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(every type skops would ask to trust, those outside the safe set and `trusted_types`)."""
    import skops.io

    try:
        untrusted = list(skops.io.get_untrusted_types(file=model_file))
    except Exception as exc:
        raise ModelLoadError(f"{model_file}: not a readable skops file ({describe(exc)})") from exc
    trusted = set(trusted_types)
    foreign = [
        t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_PACKAGES and t not in trusted
    ]
    return untrusted, foreign


def refusal(model_file: Path, foreign: Sequence[str], author_listed: Sequence[str]) -> str:
    """Why a skops file is refused, and the ways in."""
    flags = " ".join(f"--trust-type {t}" for t in foreign)
    hint = ""
    if author_listed:
        hint = (
            f" The model's author listed {sorted(author_listed)} as trusted when logging it; "
            "that is a hint, not a decision."
        )
    return (
        f"{model_file.name} contains types outside {'/'.join(TRUSTED_PACKAGES)}: {list(foreign)}. "
        f"Loading a type runs its code: trust each by name if you know it ({flags}, or "
        f"[build] trusted_types in bentoship.toml).{hint}"
    )


def load_skops(model_file: Path, trusted: Sequence[str]) -> Any:
    """The estimator in a skops file, trusting exactly `trusted` (decided by the caller)."""
    import skops.io

    try:
        return skops.io.load(model_file, trusted=list(trusted))
    except Exception as exc:
        raise ModelLoadError(f"{model_file}: skops could not load it ({describe(exc)})") from exc


def scorer(estimator: Any, model_dir: Path, how: str) -> Loaded:
    """Score `estimator` with its own methods: ``predict_proba`` or ``predict``."""
    from sklearn.base import is_classifier

    # Fitted on a DataFrame, sklearn warns on every numpy call; we pass the columns in the
    # signature's order, which is what the warning guards against, and DataFrames cost ~4x.
    warnings.filterwarnings(
        "ignore", message="X does not have valid feature names", category=UserWarning
    )
    name = type(estimator).__name__
    if is_classifier(estimator):
        classes = getattr(estimator, "classes_", None)
        if classes is None or not hasattr(estimator, "predict_proba"):
            raise ModelLoadError(
                f"{model_dir}: {name} is a classifier without predict_proba/classes_; "
                "bentoship serves a classifier's label with its probabilities"
            )
        if isinstance(classes, list) or np.asarray(classes).ndim != 1:
            raise ModelLoadError(
                f"{model_dir}: {name} predicts several label columns (multi-output "
                "classification), which bentoship does not serve; register one model per label"
            )
        labels = class_labels(classes)
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ModelLoadError(f"{model_dir}: {name} has classes {list(labels)}; "
                                 "a served classifier needs two or more distinct labels")
        predict_proba = estimator.predict_proba
        return Loaded(
            lambda matrix: predict_proba(matrix),
            ModelOutput("classification", labels),
            f"sklearn {name} ({how}, predict_proba)",
        )
    predict = estimator.predict
    targets = int(getattr(estimator, "n_outputs_", 0) or 0) or _coef_targets(estimator)

    def values(matrix: np.ndarray) -> np.ndarray:
        out = np.asarray(predict(matrix))
        return out.reshape(out.shape[0], -1)

    return Loaded(values, ModelOutput("regression", targets=targets),
                  f"sklearn {name} ({how}, predict)")


def _coef_targets(estimator: Any) -> int:
    final = estimator[-1] if hasattr(estimator, "steps") else estimator
    coef = getattr(final, "coef_", None)
    if coef is not None and np.ndim(coef) == 2:
        return int(np.shape(coef)[0])
    return 1  # loading.py checks it against the model's answer to its example
