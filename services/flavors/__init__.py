"""Native loaders, one module per model family, and what every loader returns.

A loader reads one MLflow model directory with its family's own library (never pickle) and
returns a :class:`Loaded`: a scorer and a :class:`ModelOutput` found from the model itself
(its estimator type and ``classes_``, its objective, its graph), never from configuration.

The scorer contract, for every family: ``scorer(matrix) -> ndarray`` of shape ``(n, k)``,
``float64``-convertible, where ``matrix`` has one row per input row and the model's columns
in its signature's order (``float64``, or ``object`` when a column is a string), and

- classification: ``k == len(output.classes)``, the probability of each class in the order
  of ``output.classes`` (each row sums to 1);
- regression: ``k == output.targets``, the predicted values.

``services/loading.py`` picks the family from the ``MLmodel`` file and calls its loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Task = Literal["classification", "regression"]
Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelOutput:
    """What a model answers: its task and, for a classifier, its labels in score order."""

    task: Task
    classes: tuple[int | str, ...] = ()
    targets: int = 1  # regression: number of values per row

    @property
    def width(self) -> int:
        """Columns of the scorer's output."""
        return len(self.classes) if self.task == "classification" else self.targets


@dataclass(frozen=True)
class Loaded:
    """A loader's result: the scorer, the output it produces, and how it was loaded."""

    scorer: Scorer
    output: ModelOutput
    loader: str  # e.g. "lightgbm.Booster native (model.lgb, binary)"


def class_labels(values: object) -> tuple[int | str, ...]:
    """A model's class labels as JSON-ready values: integers stay integers (integral floats
    too), everything else becomes its string."""
    out: list[int | str] = []
    for value in np.asarray(values).tolist():
        if isinstance(value, bool):
            out.append(str(value).lower())
        elif isinstance(value, int):
            out.append(value)
        elif isinstance(value, float) and value.is_integer():
            out.append(int(value))
        else:
            out.append(str(value))
    return tuple(out)
