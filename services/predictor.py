"""One prediction request, start to finish, without HTTP or BentoML.

bytes --parse_body--> JSON --validate--> Batch(matrix, keys)
      --preprocess--> matrix --assign--> variant per row
      --model.predict_scores (per variant)--> scores --postprocess--> rows, in input order

When a model raises or scores NaN/infinity, the rows it cannot score are looked for: if the
model still scores the configured example row and some rows fail on their own, those rows are
outside what the model can compute with (e.g. magnitudes that overflow its arithmetic) and the
request is refused as ``invalid_input`` (422) naming them; otherwise it is ``model_failed``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.config import ServiceConfig
from services.errors import InvalidInputError, ModelError, Problem, ServiceError, describe, problem
from services.hooks import Postprocess, Preprocess, resolve_hook, run_postprocess, run_preprocess
from services.json_schema import example_row
from services.loading import LoadedModel
from services.routing import Router, assign
from services.schema import MAX_PROBLEMS, RowSchema, compile_schema, parse_body, validate


@dataclass(frozen=True)
class Prediction:
    """Response rows in input order, and each variant's scores (for metrics)."""

    rows: list[dict[str, Any]]
    scores_by_variant: dict[str, np.ndarray]


@dataclass(frozen=True)
class Predictor:
    config: ServiceConfig
    models: Mapping[str, LoadedModel]
    preprocess: Preprocess
    postprocess: Postprocess
    schema: RowSchema = field(repr=False)
    router: Router = field(repr=False)

    @classmethod
    def from_config(cls, config: ServiceConfig, models: Mapping[str, LoadedModel]) -> Predictor:
        missing = [v.name for v in config.variants if v.name not in models]
        if missing:
            raise ServiceError(f"no loaded model for variant(s) {missing}")
        return cls(
            config=config,
            models=dict(models),
            preprocess=resolve_hook(config.preprocess, "preprocess"),
            postprocess=resolve_hook(config.postprocess, "postprocess"),
            schema=compile_schema(config),
            router=Router.from_config(config),
        )

    def predict_body(
        self,
        raw: bytes,
        *,
        header_key: str | None = None,
        override: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> Prediction:
        """Answer one ``/predict`` body; raises a :class:`ServiceError` on any failure."""
        return self.predict_parsed(
            parse_body(raw), header_key=header_key, override=override, draw=draw
        )

    def predict_parsed(
        self,
        body: Any,
        *,
        header_key: str | None = None,
        override: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> Prediction:
        batch = validate(body, self.schema)
        assignment = assign(self.router, batch.keys, header_key, override, draw)
        matrix = run_preprocess(self.preprocess, batch.matrix, self.schema.names)
        names = self.router.names
        first = int(assignment[0])
        if len(names) == 1 or not np.any(assignment != first):
            rows, scores = self._score_variant(names[first], matrix, np.arange(len(batch)))
            return Prediction(rows=rows, scores_by_variant={names[first]: scores})
        out: list[dict[str, Any]] = [{}] * len(batch)
        scores_by_variant: dict[str, np.ndarray] = {}
        for index, name in enumerate(names):
            positions = np.flatnonzero(assignment == index)
            if positions.size == 0:
                continue
            rows, scores = self._score_variant(name, matrix[positions], positions)
            for position, row in zip(positions.tolist(), rows):
                out[position] = row
            scores_by_variant[name] = scores
        return Prediction(rows=out, scores_by_variant=scores_by_variant)

    def _score_variant(
        self, name: str, matrix: np.ndarray, positions: np.ndarray
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Score `matrix` (the request's rows at `positions`) with one variant."""
        variant = self.config.variant(name)
        try:
            try:
                scores = self.models[name].predict_scores(matrix)
            except Exception as exc:
                self._refuse_unscorable_rows(name, matrix, positions)
                raise ModelError("model raised", [problem(None, None, describe(exc))]) from exc
            if scores.shape != (matrix.shape[0],):
                raise ModelError(
                    "model returned the wrong shape",
                    [
                        problem(
                            None,
                            None,
                            f"expected {matrix.shape[0]} scores, got shape {scores.shape}",
                        )
                    ],
                )
            if not np.all(np.isfinite(scores)):
                self._refuse_unscorable_rows(name, matrix, positions)
                bad = np.flatnonzero(~np.isfinite(scores))[:5].tolist()
                raise ModelError(
                    "model returned non-finite scores",
                    [
                        problem(
                            None,
                            None,
                            f"model returned NaN or infinite scores (first at variant rows {bad})",
                        )
                    ],
                )
            rows = run_postprocess(self.postprocess, scores, self.config.threshold)
        except ServiceError as exc:
            exc.variant = name
            raise
        for row in rows:
            row["variant"] = name
            row["model_version"] = variant.version
        return rows, scores

    def _refuse_unscorable_rows(self, name: str, matrix: np.ndarray, positions: np.ndarray) -> None:
        """Raise ``invalid_input`` naming the rows a sound model cannot score; else return.

        Sound: it still scores the configured example row. Each row is then scored on its own
        (only on this failure path); the first MAX_PROBLEMS that fail are named.
        """
        model = self.models[name]
        try:
            example = validate({"rows": [example_row(self.config)]}, self.schema).matrix
            example = run_preprocess(self.preprocess, example, self.schema.names)
        except ServiceError:
            return
        if _score_failure(model, example) is not None:
            return  # the model itself is broken: a model failure, not the caller's rows
        problems: list[Problem] = []
        for i in range(matrix.shape[0]):
            why = _score_failure(model, matrix[i : i + 1])
            if why is not None:
                text = f"the {name} model cannot score this row: {why}"
                problems.append(problem(int(positions[i]), None, text))
                if len(problems) == MAX_PROBLEMS:
                    break
        if problems:
            raise InvalidInputError(f"{len(problems)} row(s) the model cannot score", problems)

    def warm_up(self) -> None:
        """Score the configured examples once through every variant (raises on failure)."""
        body = {"rows": [example_row(self.config)]}
        for variant in self.config.variants:
            self.predict_parsed(body, override=variant.name)


def _score_failure(model: LoadedModel, matrix: np.ndarray) -> str | None:
    """Why `model` cannot score `matrix` (raises, wrong shape, NaN/infinity), or None."""
    try:
        scores = model.predict_scores(matrix)
    except Exception as exc:  # noqa: BLE001 - whatever the model's code raises is the answer
        return describe(exc)
    if scores.shape != (matrix.shape[0],):
        return f"expected {matrix.shape[0]} scores, got shape {scores.shape}"
    if not np.all(np.isfinite(scores)):
        return "it returned NaN or infinity"
    return None
