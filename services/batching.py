"""Adaptive micro-batching: concurrent requests for one variant share one model call.

A model with a high fixed cost per call (a random forest of hundreds of trees walks every tree
in Python whatever the row count) answers 16 one-row requests in one call almost as fast as
one. With ``batching.enabled`` each worker keeps one queue per variant:

    request --prepare (validate, route, preprocess)--> one part per variant --> its queue
    queue --max_rows rows, or max_wait_ms after its first request--> one model call
          --> each request's rows back, in order --finish (answers, postprocess)--> response

- **Bounds.** A batch is closed when it holds ``batching.max_rows`` rows (a request that would
  overflow it starts the next one; a request at least that big is scored alone, at once) or
  ``batching.max_wait_ms`` after its first request arrived, whichever comes first.
- **Deadline and bound.** Every batched call runs in the worker's model-call pool
  (:mod:`services.calls`): one slot per batch, answered within ``serving.model_timeout_s`` or
  each of its requests gets its own 503 ``model_timeout``; with every slot taken, each gets
  ``overloaded``. So a request waits at most ``max_wait_ms`` plus the deadline. Requests with
  hooks or large bodies are also prepared and finished in the pool, as without batching.
- **Errors stay per request.** Validation, routing and the hooks run per request before it
  joins a batch, so a bad request is answered on its own and never reaches a batch. When the
  batched call raises or answers the wrong shape, each request of the batch is scored alone
  (in the same pool call) and gets its own answer or its own error; when only some rows come
  back NaN or infinite, only the requests holding them are scored alone. That is exactly what
  each request would have got without batching (unscorable rows named by their position in
  the request, ``model_failed`` otherwise).
- **Metrics.** ``bentoship_batch_rows{variant}`` (rows per model call) and
  ``bentoship_batch_requests{variant}`` (requests per model call), observed once per call.

BentoML's own ``@bentoml.api(batchable=True)`` is not used: its dispatcher lives in the handler
of ``@bentoml.api`` endpoints (``_bentoml_impl``), out of reach of this service's mounted
Starlette routes through public API, and it fails every request of a batch together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.calls import ModelCalls
from services.config import Batching
from services.errors import ServiceError
from services.metrics import Metrics
from services.predictor import Part, Prediction, Predictor, Scoring
from services.schema import parse_body

Result = np.ndarray | BaseException


class Batcher:
    """One queue per variant; :meth:`predict` answers one request through them."""

    def __init__(self, settings: Batching, calls: ModelCalls) -> None:
        self.max_rows = settings.max_rows
        self.max_wait_s = settings.max_wait_ms / 1000
        self.calls = calls
        self._queues: dict[str, _Queue] = {}

    async def predict(
        self,
        predictor: Predictor,
        raw: bytes,
        *,
        header_key: str | None = None,
        override: str | None = None,
        offload: bool = False,
        metrics: Metrics | None = None,
    ) -> Prediction:
        """Like ``predictor.predict_body``, with each variant's rows scored in a shared call.
        ``offload``: prepare and finish in the model-call pool too (hooks, large bodies)."""
        if offload:
            scoring = await self.calls.run(_prepare, predictor, raw, header_key, override)
        else:
            scoring = _prepare(predictor, raw, header_key, override)
        futures = [self._queue(part.variant).submit(predictor, part, metrics)
                   for part in scoring.parts]
        results = await asyncio.gather(*futures, return_exceptions=True)
        values: list[np.ndarray] = []
        for result in results:  # the first variant's error, as without batching
            if isinstance(result, BaseException):
                raise result
            values.append(result)
        if offload:
            return await self.calls.run(predictor.finish, scoring, values)
        return predictor.finish(scoring, values)

    def _queue(self, variant: str) -> _Queue:
        queue = self._queues.get(variant)
        if queue is None:
            queue = self._queues[variant] = _Queue(variant, self)
        return queue


def _prepare(
    predictor: Predictor, raw: bytes, header_key: str | None, override: str | None
) -> Scoring:
    return predictor.prepare(parse_body(raw), header_key=header_key, override=override)


@dataclass
class _Member:
    part: Part
    future: asyncio.Future[np.ndarray]


@dataclass
class _Queue:
    """The batch a variant is filling, and the calls of the batches it has closed."""

    variant: str
    batcher: Batcher
    pending: list[_Member] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None
    predictor: Predictor | None = None
    metrics: Metrics | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set)

    def submit(
        self, predictor: Predictor, part: Part, metrics: Metrics | None
    ) -> asyncio.Future[np.ndarray]:
        loop = asyncio.get_running_loop()
        self.predictor, self.metrics = predictor, metrics
        member = _Member(part, loop.create_future())
        limit = self.batcher.max_rows
        if part.rows >= limit:  # fills a batch on its own: no reason to wait
            self._start([member])
            return member.future
        if self.rows + part.rows > limit:
            self._close()
        self.pending.append(member)
        self.rows += part.rows
        if self.rows >= limit:
            self._close()
        elif self.timer is None:
            self.timer = loop.call_later(self.batcher.max_wait_s, self._close)
        return member.future

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        members, self.pending, self.rows = self.pending, [], 0
        if members:
            self._start(members)

    def _start(self, members: list[_Member]) -> None:
        task = asyncio.get_running_loop().create_task(self._call(members))
        self.running.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.running.discard)

    async def _call(self, members: list[_Member]) -> None:
        predictor = self.predictor
        assert predictor is not None
        if self.metrics is not None:
            self.metrics.record_batch(self.variant, sum(m.part.rows for m in members),
                                      len(members))
        parts = [m.part for m in members]
        results: Sequence[Result]
        try:
            results = await self.batcher.calls.run(score_together, predictor, self.variant, parts)
        except ServiceError as exc:  # overloaded, past the deadline: each request its own copy
            results = [_copy(exc) for _ in members]
        except Exception as exc:  # noqa: BLE001 - a bug; every request answers internal_error
            results = [exc] * len(members)
        for member, result in zip(members, results):
            if member.future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)


def score_together(predictor: Predictor, variant: str, parts: Sequence[Part]) -> list[Result]:
    """Each part's checked answer from one model call of all their rows, or, where that call
    failed for it, from a call of its own rows (its answer or its own error)."""
    if len(parts) == 1:
        return [_alone(predictor, variant, parts[0])]
    total = sum(part.rows for part in parts)
    try:
        values = predictor.models[variant].predict(np.concatenate([p.matrix for p in parts]))
        fits = values.shape == (total, predictor.config.output_width)
    except Exception:  # noqa: BLE001 - which request is to blame is found by scoring each alone
        fits = False
    if not fits:
        return [_alone(predictor, variant, part) for part in parts]
    results: list[Result] = []
    start = 0
    for part in parts:
        chunk = values[start : start + part.rows]
        start += part.rows
        results.append(chunk if np.isfinite(chunk).all() else _alone(predictor, variant, part))
    return results


def _alone(predictor: Predictor, variant: str, part: Part) -> Result:
    try:
        return predictor.score(variant, part.matrix, part.positions)
    except Exception as exc:  # noqa: BLE001 - delivered to its own request, raised there
        return exc


def _copy(exc: ServiceError) -> ServiceError:
    # One exception object raised in many request tasks would share (and grow) a traceback.
    return type(exc)(exc.message, exc.detail)

