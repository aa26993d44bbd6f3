"""What a variant answers, row by row, from its model's ``(n, k)`` output (pure, no pandas).

``config.output`` (decided at build time from the models) says what the numbers are:

classification
    ``{"prediction": label, "probabilities": {"<label>": p, ...}}`` with every class label as a
    key; a binary classifier answers ``classes[1]`` when its probability is at least
    ``threshold`` and adds ``"score"``: that probability. A multi-class one answers the label
    of the highest probability (the first one on a tie, as ``numpy.argmax``).
regression
    ``{"prediction": value}``; with several targets, an object keyed by the output signature's
    column names, or an array when the signature names none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.config import Output


@dataclass(frozen=True)
class VariantAnswer:
    """One variant's model output for its rows, and the index of each row's label."""

    values: np.ndarray  # (n, k): probabilities per class, or values per target
    label_index: np.ndarray | None  # (n,) classification only

    def top_probability(self) -> np.ndarray:
        return self.values.max(axis=1)  # type: ignore[no-any-return]


def decide(output: Output, values: np.ndarray, threshold: float) -> VariantAnswer:
    if output.task != "classification":
        return VariantAnswer(values, None)
    if output.binary:
        index = (values[:, 1] >= threshold).astype(np.intp)
    else:
        index = values.argmax(axis=1)
    return VariantAnswer(values, index)


def answer_rows(
    output: Output, answer: VariantAnswer, variant: str, version: str
) -> list[dict[str, Any]]:
    """The JSON rows of one variant's answer, each naming ``variant`` and its model
    ``version``.

    Every row is built whole, in one dict display: adding keys afterwards, or ``dict(zip())``
    for a binary classifier's two probabilities, cost a third of the answer's time again.
    """
    values = answer.values.tolist()
    if answer.label_index is not None:
        classes = output.classes
        keys = output.keys
        labels = [classes[i] for i in answer.label_index.tolist()]
        if output.binary:
            negative, positive = keys
            return [
                {"prediction": label, "probabilities": {negative: p0, positive: p1},
                 "score": p1, "variant": variant, "model_version": version}
                for label, (p0, p1) in zip(labels, values)
            ]
        return [
            {"prediction": label, "probabilities": dict(zip(keys, row)), "variant": variant,
             "model_version": version}
            for label, row in zip(labels, values)
        ]
    if output.targets == 1:
        return [
            {"prediction": row[0], "variant": variant, "model_version": version}
            for row in values
        ]
    if output.target_names:
        names = output.target_names
        return [
            {"prediction": dict(zip(names, row)), "variant": variant, "model_version": version}
            for row in values
        ]
    return [{"prediction": row, "variant": variant, "model_version": version} for row in values]
