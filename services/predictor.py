"""One prediction request, start to finish, without HTTP or BentoML.

bytes --parse_body--> JSON --validate--> Batch(matrix, keys)
      --preprocess--> matrix --assign--> variant per row
      --model.predict_scores (per variant)--> scores --postprocess--> rows, in input order
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.config import ServiceConfig
from services.errors import ModelError, ServiceError, describe, problem
from services.hooks import Postprocess, Preprocess, resolve_hook, run_postprocess, run_preprocess
from services.loading import LoadedModel
from services.routing import Router, assign
from services.schema import RowSchema, compile_schema, example_row, parse_body, validate


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
            rows, scores = self._score_variant(names[first], matrix)
            return Prediction(rows=rows, scores_by_variant={names[first]: scores})
        out: list[dict[str, Any]] = [{}] * len(batch)
        scores_by_variant: dict[str, np.ndarray] = {}
        for index, name in enumerate(names):
            positions = np.flatnonzero(assignment == index)
            if positions.size == 0:
                continue
            rows, scores = self._score_variant(name, matrix[positions])
            for position, row in zip(positions.tolist(), rows):
                out[position] = row
            scores_by_variant[name] = scores
        return Prediction(rows=out, scores_by_variant=scores_by_variant)

    def _score_variant(
        self, name: str, matrix: np.ndarray
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        variant = self.config.variant(name)
        try:
            try:
                scores = self.models[name].predict_scores(matrix)
            except Exception as exc:
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

    def warm_up(self) -> None:
        """Score the configured examples once through every variant (raises on failure)."""
        body = {"rows": [example_row(self.config)]}
        for variant in self.config.variants:
            self.predict_parsed(body, override=variant.name)
