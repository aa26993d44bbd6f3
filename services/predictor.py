"""One prediction request, start to finish, without HTTP or BentoML.

bytes --parse_body--> JSON --validate--> Batch(matrix, keys)
      [--preprocess hook (DataFrames)-->] features matrix --assign--> variant per row
      --model.predict (per variant)--> (n, k) --decide--> answer rows
      [--postprocess hook (DataFrames)-->] rows, in input order

Without hooks the request is the model's features and no pandas runs (``services/frames.py``
is the hook path). When a model raises or answers NaN/infinity, the rows it cannot score are
looked for: if the model still scores the configured example row and some rows fail on their
own, those rows are outside what the model can compute with (e.g. magnitudes that overflow
its arithmetic) and the request is refused as ``invalid_input`` (422) naming them; otherwise
it is ``model_failed``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services import frames
from services.answers import VariantAnswer, answer_rows, decide
from services.config import ServiceConfig
from services.errors import (
    ConfigError,
    ModelError,
    Problem,
    ServiceError,
    UnscorableRowsError,
    describe,
    problem,
)
from services.hooks import Hooks, load_hooks
from services.json_schema import example_request_row, example_row
from services.loading import LoadedModel
from services.routing import Router, assign
from services.schema import MAX_PROBLEMS, RowSchema, compile_schema, parse_body, validate


@dataclass(frozen=True)
class Prediction:
    """Response rows in input order, and each variant's answer (for metrics)."""

    rows: list[dict[str, Any]]
    answers: dict[str, VariantAnswer]


@dataclass(frozen=True)
class Part:
    """The rows of one request that one variant scores: its matrix and their positions."""

    variant: str
    matrix: np.ndarray
    positions: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])


@dataclass(frozen=True)
class Scoring:
    """A validated, routed (and preprocessed) request: what each variant has to score."""

    size: int
    parts: list[Part]
    request: Any = None  # the request DataFrame when hooks run, for postprocess


@dataclass(frozen=True)
class Predictor:
    config: ServiceConfig
    models: Mapping[str, LoadedModel]
    hooks: Hooks = field(repr=False)
    schema: RowSchema = field(repr=False)  # what a caller sends
    features: RowSchema = field(repr=False)  # what the models take
    router: Router = field(repr=False)

    @classmethod
    def from_config(cls, config: ServiceConfig, models: Mapping[str, LoadedModel]) -> Predictor:
        missing = [v.name for v in config.variants if v.name not in models]
        if missing:
            raise ServiceError(f"no loaded model for variant(s) {missing}")
        for name, model in models.items():
            check_output(config, name, model)
        hooks = load_hooks(config.hooks.module if config.hooks is not None else None)
        _check_declarations(config, hooks)
        return cls(
            config=config,
            models=dict(models),
            hooks=hooks,
            schema=compile_schema(config),
            features=compile_schema(config, config.features),
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
        scoring = self.prepare(body, header_key=header_key, override=override, draw=draw)
        values = [self.score(part.variant, part.matrix, part.positions) for part in scoring.parts]
        return self.finish(scoring, values)

    def prepare(
        self,
        body: Any,
        *,
        header_key: str | None = None,
        override: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> Scoring:
        """Validate a parsed body, route its rows and run the preprocess hook: what each
        variant has to score (``services/batching.py`` scores the parts of many requests in
        one model call, then :meth:`finish` answers each)."""
        batch = validate(body, self.schema)
        assignment = assign(self.router, batch.keys, header_key, override, draw)
        request = None
        matrix = batch.matrix
        if self.hooks.preprocess is not None or self.hooks.postprocess is not None:
            fields = self.config.request_fields
            request = frames.request_frame(batch, fields, self.config.routing.key_field)
            if self.hooks.preprocess is not None:
                matrix = frames.run_preprocess(self.hooks.preprocess, request,
                                               self.config.features)
        names = self.router.names
        first = int(assignment[0])
        if len(names) == 1 or not np.any(assignment != first):
            parts = [Part(names[first], matrix, np.arange(len(batch)))]
        else:
            parts = []
            for index, name in enumerate(names):
                positions = np.flatnonzero(assignment == index)
                if positions.size:
                    parts.append(Part(name, matrix[positions], positions))
        return Scoring(len(batch), parts, request)

    def score(self, name: str, matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One variant's checked ``(n, k)`` answer for `matrix` (the request's rows at
        `positions`); a ``ServiceError`` carries the variant."""
        try:
            return self._predict(name, matrix, positions)
        except ServiceError as exc:
            exc.variant = name
            raise

    def finish(self, scoring: Scoring, values: Sequence[np.ndarray]) -> Prediction:
        """Response rows in input order from each part's answer (``values``, in part order)."""
        answers: dict[str, VariantAnswer] = {}
        if len(scoring.parts) == 1:
            rows, answers[scoring.parts[0].variant] = self._answer(scoring.parts[0], values[0])
        else:
            rows = [{}] * scoring.size
            for part, value in zip(scoring.parts, values):
                part_rows, answers[part.variant] = self._answer(part, value)
                for position, row in zip(part.positions.tolist(), part_rows):
                    rows[position] = row
        if self.hooks.postprocess is not None:
            assert self.config.hooks is not None
            rows = frames.run_postprocess(self.hooks.postprocess, scoring.request, rows,
                                          self.config.hooks.response)
        return Prediction(rows=rows, answers=answers)

    def _answer(
        self, part: Part, values: np.ndarray
    ) -> tuple[list[dict[str, Any]], VariantAnswer]:
        version = self.config.variant(part.variant).version
        try:
            answer = decide(self.config.output, values, self.config.threshold)
            rows = answer_rows(self.config.output, answer, part.variant, version)
        except ServiceError as exc:
            exc.variant = part.variant
            raise
        return rows, answer

    def _predict(self, name: str, matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
        expected = (matrix.shape[0], self.config.output_width)
        try:
            values = self.models[name].predict(matrix)
        except Exception as exc:
            self._refuse_unscorable_rows(name, matrix, positions)
            raise ModelError("model raised", [problem(None, None, describe(exc))]) from exc
        if values.shape != expected:
            raise ModelError("model returned the wrong shape", [
                problem(None, None, f"expected an answer of shape {expected}, got {values.shape}")
            ])
        if not np.all(np.isfinite(values)):
            self._refuse_unscorable_rows(name, matrix, positions)
            bad = np.flatnonzero(~np.isfinite(values).all(axis=1))[:5].tolist()
            raise ModelError("model returned non-finite scores", [
                problem(None, None,
                        f"model returned NaN or infinite scores (first at variant rows {bad})")
            ])
        return values

    def _refuse_unscorable_rows(self, name: str, matrix: np.ndarray, positions: np.ndarray) -> None:
        """Raise ``invalid_input`` naming the rows a sound model cannot score; else return.

        Sound: it still scores the configured example row. Each row is then scored on its own
        (only on this failure path); the first MAX_PROBLEMS that fail are named.
        """
        model = self.models[name]
        try:
            example = self.example_matrix()
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
            raise UnscorableRowsError(f"{len(problems)} row(s) the model cannot score", problems)

    def example_matrix(self) -> np.ndarray:
        """The configured example row of the models' features, as a matrix."""
        return validate({"rows": [example_row(self.config)]}, self.features).matrix

    def warm_up(self) -> None:
        """Answer the configured example request once through every variant (raises on failure)."""
        body = {"rows": [example_request_row(self.config)]}
        for variant in self.config.variants:
            self.predict_parsed(body, override=variant.name)


def check_output(config: ServiceConfig, name: str, model: LoadedModel) -> None:
    """A variant's model answers what the service was built to answer; else ``ConfigError``."""
    got = model.output
    want = config.output
    if (got.task, tuple(got.classes)) != (want.task, tuple(want.classes)) or (
        want.task == "regression" and got.targets != want.targets
    ):
        raise ConfigError(
            f"variant {name}: the model answers {describe_output(got)}, the service was built "
            f"for {describe_output(want)}"
        )


def describe_output(output: Any) -> str:
    """``classification with classes [...]`` / ``regression with 1 target``, for messages."""
    if output.task == "classification":
        return f"classification with classes {list(output.classes)}"
    return f"regression with {output.targets} target(s)"


def _check_declarations(config: ServiceConfig, hooks: Hooks) -> None:
    declared = config.hooks
    if declared is None:
        return
    found = (hooks.preprocess is not None, hooks.postprocess is not None, hooks.request,
             hooks.response)
    built = (declared.preprocess, declared.postprocess, declared.request, declared.response)
    if found != built:
        raise ConfigError(
            f"hooks {declared.module!r} differ from what this service was built with "
            "(functions or declared columns changed): rebuild the image"
        )


def _score_failure(model: LoadedModel, matrix: np.ndarray) -> str | None:
    """Why `model` cannot score `matrix` (raises, wrong shape, NaN/infinity), or None."""
    try:
        values = model.predict(matrix)
    except Exception as exc:  # noqa: BLE001 - whatever the model's code raises is the answer
        return describe(exc)
    if values.shape[0] != matrix.shape[0]:
        return f"expected {matrix.shape[0]} answers, got shape {values.shape}"
    if not np.all(np.isfinite(values)):
        return "it returned NaN or infinity"
    return None
