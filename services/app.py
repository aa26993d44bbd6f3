"""The HTTP layer: a small Starlette app with orjson, mounted into BentoML at ``/``.

Routes (contract 4): ``POST /predict``, ``GET /metadata``, ``GET /metrics``, ``GET /docs.json``
and ``GET /openapi.json``. BentoML itself serves ``/livez`` and ``/readyz``; its own routes are
matched before a mounted app, while a mounted app is matched before BentoML's ``/docs.json``,
so ours (which documents ``/predict``) is the one served. ``/metrics`` is ours because
BentoML's own metrics are off (``service.py``), which takes its ``/metrics`` route with them.

Every error is ``{"error": code, "detail": [...]}`` with the status of the
:class:`~services.errors.ServiceError` raised; 404/405 use the same shape. Any other
exception is logged and answered ``internal_error`` (500): a bug, never the caller's input.

The app holds an :class:`AppState` that the BentoML service fills in once its models are
loaded and warmed up; until then ``/predict`` answers ``not_ready`` (503).

A request that runs a team's hooks, or whose body is larger than :data:`INLINE_BODY_BYTES`, is
scored in the worker's bounded model-call pool (:mod:`services.calls`): within
``serving.model_timeout_s`` or a 503 ``model_timeout``, and a 503 ``overloaded`` when every slot
is taken. A small request without hooks is scored inline on the event loop: a native model
answers it in well under a millisecond, and the thread hop would cost more than the call.
With ``batching.enabled`` every request goes through :mod:`services.batching` instead, whose
batched model calls always run in that pool.

``POST /predict`` is a bare ASGI endpoint (:class:`PredictEndpoint`) that :class:`ServiceApp`
calls before Starlette's stack (its two middlewares, the router, a ``Request`` and a
``Response``): the answer, its headers and its errors are the ones Starlette gave it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.calls import ModelCalls
from services.config import ServiceConfig
from services.errors import (
    MalformedBodyError,
    NotReadyError,
    PayloadTooLargeError,
    PostprocessError,
    ServiceError,
    describe,
    problem,
)
from services.openapi import build_spec

if TYPE_CHECKING:  # numpy comes with them: imported by the worker, not by BentoML's supervisor
    from services.metrics import Metrics
    from services.predictor import Prediction, Predictor

logger = logging.getLogger("bentoship.service")

JSON = "application/json"
# Bodies above this size are scored in the model-call pool so probes are not held up. A 100-row
# request of the demo model is ~76 kB; scoring it inline saved ~1.5 ms p50 (benchmarks/serving).
INLINE_BODY_BYTES = 256 * 1024


@dataclass
class AppState:
    """What the running service plugs into the app; ``None`` until warm-up is done."""

    predictor: Predictor | None = None
    metrics: Metrics | None = None

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def activate(self, predictor: Predictor, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self.predictor = predictor


def max_body_bytes(config: ServiceConfig) -> int:
    """Generous upper bound on a valid body: 64 KiB plus 128 B + 256 B per feature per row."""
    return 64 * 1024 + config.max_rows * (128 + 256 * len(config.features))


def create_app(config: ServiceConfig, state: AppState) -> Starlette:
    spec = orjson.dumps(build_spec(config))
    predict = PredictEndpoint(config, state)

    async def metadata(request: Request) -> Response:
        return Response(orjson.dumps(_metadata(config, state)), media_type=JSON)

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type=JSON)

    async def metrics(request: Request) -> Response:
        from services.metrics import exposition

        # Reading every worker's files takes milliseconds: off the event loop, as BentoML did.
        content, media_type = await run_in_threadpool(exposition)
        return Response(content, media_type=media_type)

    return ServiceApp(
        predict,
        routes=[
            # Still routed: BentoML matches the mounted app route by route, and this route
            # answers what the fast path leaves to Starlette (405 for GET, a root_path).
            Route("/predict", predict, methods=["POST"]),
            Route("/metadata", metadata, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )


class ServiceApp(Starlette):
    """The app, with ``POST /predict`` handed to its endpoint before Starlette's stack.

    Starlette's middlewares, router, ``Request`` (an async generator for the body) and
    ``Response`` cost 26-40 us of CPU of the ~200 us our app spent on a one-row request, 44-54
    us at 100 rows (in-process, interleaved A/B, the demo XGBoost model). Every other request (and ``/predict``
    under a ``root_path`` it does not start with) goes through Starlette as before. It stays a
    ``Starlette``: BentoML matches a mounted Starlette app route by route (so its own ``/``
    and static files stay reachable) and runs its lifespan.
    """

    def __init__(self, predict: PredictEndpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._predict = predict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Exactly the requests Starlette routes to /predict's endpoint (bar odd root_paths).
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == scope.get("root_path", "") + "/predict"
        ):
            scope["app"] = self  # as Starlette.__call__ does
            await self._predict(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class PredictEndpoint:
    """``POST /predict`` as an ASGI app: the body from ``receive``, the answer with ``send``."""

    def __init__(self, config: ServiceConfig, state: AppState) -> None:
        self.config = config
        self.state = state
        self.limit = max_body_bytes(config)
        self.key_header = _header_key(config.routing.key_header)
        self.override_header = _header_key(config.routing.override_header)
        # Hooks are the team's code: they may call out or take long, so they always get the
        # deadline.
        self.inline_limit = -1 if config.hooks is not None else INLINE_BODY_BYTES
        self.calls = ModelCalls(config.serving.max_model_calls, config.serving.model_timeout_s)
        self.batcher = None
        if config.batching.enabled:
            from services.batching import Batcher

            self.batcher = Batcher(config.batching, self.calls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, content = await self.answer(scope, receive)
        except Exception:
            # What Starlette's ServerErrorMiddleware answers when a handler raises (here only
            # recording metrics can) before the response started; it re-raises too.
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
            raise
        await send({"type": "http.response.start", "status": status,
                    "headers": _json_headers(content)})
        await send({"type": "http.response.body", "body": content})

    async def answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        """The status and JSON body of one ``/predict`` request."""
        started = time.perf_counter()
        state = self.state
        predictor = state.predictor
        try:
            if predictor is None:
                raise NotReadyError("models are still loading")
            headers = scope["headers"] = list(scope["headers"])  # as Starlette's Headers does
            raw = await _read_body(receive, _header(headers, b"content-length"), self.limit)
            # An empty header counts as absent.
            header_key = override = None
            if self.key_header is not None:
                header_key = _header(headers, self.key_header) or None
            if self.override_header is not None:
                override = (_header(headers, self.override_header) or "").strip() or None
            result = await self._predict(predictor, raw, header_key, override)
            content = _dump_rows(result)
        except ServiceError as exc:
            if exc.status >= 500:
                logger.error("predict failed: %s %s", exc.code, exc.detail)
            return _failed(state.metrics, started, exc)
        except Exception as exc:  # a bug: log it, answer in our shape, never a bare 500
            logger.exception("predict failed unexpectedly")
            internal = ServiceError("internal error", [problem(None, None, describe(exc))])
            return _failed(state.metrics, started, internal)
        metrics = state.metrics
        if metrics is not None:
            metrics.record_success(time.perf_counter() - started, result.answers,
                                   self.config.output)
        return 200, content

    async def _predict(
        self, predictor: Predictor, raw: bytes, header_key: str | None, override: str | None
    ) -> Prediction:
        if self.batcher is not None:
            return await self.batcher.predict(
                predictor, raw, header_key=header_key, override=override,
                offload=len(raw) > self.inline_limit, metrics=self.state.metrics,
            )
        if len(raw) <= self.inline_limit:
            return predictor.predict_body(raw, header_key=header_key, override=override)
        return await self.calls.run(
            predictor.predict_body, raw, header_key=header_key, override=override
        )


def _dump_rows(result: Prediction) -> bytes:
    try:
        return orjson.dumps({"rows": result.rows}, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:  # orjson.JSONEncodeError: a postprocess hook returned odd values
        raise PostprocessError(
            "postprocess output is not JSON", [problem(None, None, describe(exc))]
        ) from exc


def _failed(metrics: Metrics | None, started: float, exc: ServiceError) -> tuple[int, bytes]:
    if metrics is not None:
        metrics.record_failure(time.perf_counter() - started, exc.status, exc.variant, exc.cause)
    return exc.status, orjson.dumps(exc.to_body())


def _json_headers(content: bytes) -> list[tuple[bytes, bytes]]:
    """The headers ``Response(content, media_type=JSON)`` sends, in its order."""
    return [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]


def _header_key(name: str | None) -> bytes | None:
    """A header name as ASGI carries it (config names are lowercase already)."""
    return None if name is None else name.lower().encode("latin-1")


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header `name`, as Starlette's ``Headers.get`` finds it."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, as Starlette's ``Request.stream`` reads it, within `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(size, limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif kind == "http.disconnect":
            raise MalformedBodyError(
                "client disconnected",
                [problem(None, None, "client disconnected while sending the body")],
            )


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        "body too large",
        [problem(None, None, f"body has at least {size} bytes; the limit is {limit}")],
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    body = {
        "error": code,
        "detail": [problem(None, None, f"{request.method} {request.url.path}: {exc.detail}")],
    }
    return Response(
        orjson.dumps(body), status_code=exc.status_code, media_type=JSON, headers=exc.headers
    )


def _metadata(config: ServiceConfig, state: AppState) -> dict[str, Any]:
    models = state.predictor.models if state.predictor is not None else {}
    return {
        "name": config.name,
        "code_version": config.code_version,
        "image_tag": config.image_tag,
        "ready": state.ready,
        "variants": [
            {
                "name": v.name,
                "model_tag": v.model_tag,
                "registered_name": v.registered_name,
                "version": v.version,
                "run_id": v.run_id,
                "flavor": v.flavor,
                "weight": v.weight,
                "loader": models[v.name].loader if v.name in models else None,
            }
            for v in config.variants
        ],
        "features": [f.model_dump() for f in config.features],
        "routing": config.routing.model_dump(),
        "max_rows": config.max_rows,
        "threshold": config.threshold,
        "allow_pickle": config.allow_pickle,
        "trusted_types": list(config.trusted_types),
        "output": config.output.model_dump(),
        "hooks": config.hooks.model_dump() if config.hooks is not None else None,
    }
