"""The webhook receiver's HTTP side: a Starlette app, served by uvicorn on a socket we bind.

`app(receiver)` answers the routes of pipeline/flows/receiver.py, always with one JSON object
(errors as `{"error": ..., "detail": ...}`, Starlette's own 404/405/500 included). It guards
the receiver before anything is verified:

    411 length_required     no Content-Length (a chunked body of unknown size)
    413 too_large           Content-Length, or the bytes actually sent, over the limit
    408 request_timeout     the body did not arrive within the read timeout (a slow client)
    429 busy                `max_reading` bodies are being read already: buffered bodies,
                            forged ones included (a signature needs the whole body), stay
                            under `max_reading` x `max_body` bytes
    429 queue_full          the release queue is full (a forged delivery is refused before)

The same guards hold for `POST /outcome`, where a release's pipeline reports its outcome
(`Receiver.receive_outcome`).

Both 429s carry `Retry-After`; MLflow retries 429s.

`server(app, ...)` is the uvicorn server; `Receiver.start()` runs it in a thread of its own on
the socket the receiver bound, and `Receiver.stop()` shuts it down gracefully: no new
connections, requests in flight answered (up to the grace period), then the release worker
finishes the release in progress.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from pipeline.flows.receiver import Receiver

__all__ = ["app", "server"]


class _TooLarge(Exception):
    pass


def _answer(code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload, sort_keys=True).encode(), status_code=code,
                    media_type="application/json", headers=headers)


def app(receiver: Receiver) -> Starlette:
    """The receiver's routes: POST /webhook and /outcome, GET /healthz and /deliveries/<id>."""

    reading = 0  # bodies being read now; one event loop, so no lock

    async def deliver(request: Request) -> Response:
        return await _receive(request, receiver.receive)

    async def outcome(request: Request) -> Response:
        return await _receive(request, receiver.receive_outcome)

    async def _receive(
        request: Request, handle: Callable[[dict[str, str], bytes], tuple[int, dict[str, Any]]]
    ) -> Response:
        nonlocal reading
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            return _answer(411, {"error": "length_required",
                                 "detail": "send the body with a Content-Length"})
        too_large = {"error": "too_large",
                     "detail": f"bodies are limited to {receiver.max_body} bytes"}
        # The connection is closed after an answer given before the whole body was read.
        if int(length) > receiver.max_body:
            return _answer(413, too_large, {"Connection": "close"})
        if reading >= receiver.max_reading:
            receiver.count("busy")
            return _answer(429, {"error": "busy",
                                 "detail": f"{reading} deliveries are being received; retry "
                                           f"after {receiver.retry_after_s}s"},
                           {"Retry-After": str(receiver.retry_after_s), "Connection": "close"})
        reading += 1  # until answered: the body is held while it is verified too
        try:
            with anyio.fail_after(receiver.read_timeout_s):
                body = await _read(request, receiver.max_body)
            # Verifying and journaling block (HMAC, a file append under a lock): off the loop.
            code, payload = await run_in_threadpool(handle, dict(request.headers), body)
        except TimeoutError:
            receiver.count("timed_out")
            return _answer(408, {"error": "request_timeout",
                                 "detail": f"the body did not arrive within "
                                           f"{receiver.read_timeout_s:g}s"},
                           {"Connection": "close"})
        except _TooLarge:
            return _answer(413, too_large, {"Connection": "close"})
        except ClientDisconnect:  # gone before its body arrived: nobody to answer
            receiver.count("disconnected")
            return _answer(400, {"error": "disconnected", "detail": "the client went away"})
        finally:
            reading -= 1
        headers = {"Retry-After": str(receiver.retry_after_s)} if code in (429, 503) else None
        return _answer(code, payload, headers)

    async def healthz(request: Request) -> Response:
        return _answer(200, {"status": "ok", "pending": receiver.pending(),
                            "counts": receiver.snapshot()})

    async def delivery(request: Request) -> Response:
        entry = receiver.journal.get(request.path_params["delivery_id"])
        if entry is None:
            return _answer(404, {"error": "not_found", "detail": "no such delivery"})
        return _answer(200, entry)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return _answer(405, {"error": "method_not_allowed",
                                "detail": "POST /webhook or /outcome; GET /healthz or "
                                          "/deliveries/<id>"},
                          dict(exc.headers or {}))
        if exc.status_code == 404:
            where = ("deliveries go to /webhook, outcomes to /outcome"
                     if request.method == "POST"
                     else "GET /healthz or /deliveries/<id>")
            return _answer(404, {"error": "not_found", "detail": where})
        return _answer(exc.status_code, {"error": "http_error", "detail": str(exc.detail)})

    async def internal_error(request: Request, exc: Exception) -> Response:
        receiver.echo("".join(traceback.format_exception(exc)))
        return _answer(500, {"error": "internal_error",
                            "detail": f"{type(exc).__name__}: {exc}"})

    return Starlette(
        routes=[
            Route("/webhook", deliver, methods=["POST"]),
            Route("/webhook/", deliver, methods=["POST"]),
            Route("/outcome", outcome, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/deliveries/{delivery_id:str}", delivery, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )


def server(application: Starlette, *, grace_s: float) -> uvicorn.Server:
    """uvicorn for the app: HTTP/1.1 (h11), no lifespan, no access log of its own.

    `grace_s` is how long a shutdown waits for requests in flight before cancelling them.
    """
    config = uvicorn.Config(application, http="h11", loop="asyncio", lifespan="off",
                            access_log=False, log_config=None, server_header=False,
                            timeout_graceful_shutdown=max(1, round(grace_s)))
    return uvicorn.Server(config)


async def _read(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)
