"""services/app.py's fast path: ``POST /predict`` answered before Starlette's stack, exactly as
the stack answers it (status, headers, body, metrics, errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette

from services.app import AppState, ServiceApp, create_app, max_body_bytes
from services.config import ServiceConfig
from services.loading import load_model
from services.metrics import create_metrics
from services.predictor import Predictor
from tests import servicekit

FEATURES = servicekit.FEATURES
ROW = dict(zip(FEATURES, (1.0, 0.2, 0.1, 3.0)))
BODY = orjson.dumps({"rows": [ROW]})
Message = dict[str, Any]


@pytest.fixture(scope="module")
def config() -> ServiceConfig:
    variants = [
        {"name": "control", "model_tag": "demo-classifier:v1", "registered_name": "demo",
         "version": "1", "run_id": "r1", "flavor": "sklearn", "weight": 50},
        {"name": "treatment", "model_tag": "demo-classifier:v2", "registered_name": "demo",
         "version": "2", "run_id": "r2", "flavor": "xgboost", "weight": 50},
    ]
    return servicekit.make_config(variants, max_rows=50)


@pytest.fixture(scope="module")
def predictor(config: ServiceConfig, sklearn_dir: Path, xgb_classifier_dir: Path) -> Predictor:
    models = {"control": load_model(sklearn_dir, FEATURES),
              "treatment": load_model(xgb_classifier_dir, FEATURES)}
    return Predictor.from_config(config, models)


def make_app(config: ServiceConfig, predictor: Predictor | None) -> tuple[Starlette, Any]:
    registry = CollectorRegistry()
    state = AppState()
    if predictor is not None:
        state.activate(predictor, create_metrics(registry))
    return create_app(config, state), registry


def call(
    app: Any,
    messages: Sequence[Message],
    *,
    method: str = "POST",
    path: str = "/predict",
    headers: Sequence[tuple[bytes, bytes]] = (),
    root_path: str = "",
    sent: list[Message] | None = None,
) -> list[Message]:
    """What `app` sends for one request whose body arrives as `messages` (into `sent`)."""
    sent = [] if sent is None else sent

    async def run() -> None:
        pending = list(messages)

        async def receive() -> Message:
            if pending:
                return pending.pop(0)
            await asyncio.sleep(3600)
            raise AssertionError("read past the body")

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": root_path, "query_string": b"", "headers": list(headers),
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 3000)}
        await app(scope, receive, send)

    asyncio.run(run())
    return sent


def counted(registry: CollectorRegistry) -> list[str]:
    """The metrics' samples, but for timings (durations, creation times)."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if not line.startswith("bentoship_request_duration_seconds") and "_created" not in line]


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


def length(data: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(data)).encode())


OVERRIDE = (b"x-bentoship-variant", b"treatment")
CASES: dict[str, tuple[list[Message], list[tuple[bytes, bytes]]]] = {
    "one row": ([body(BODY)], [length(BODY), OVERRIDE]),
    "keyed rows": ([body(orjson.dumps({"rows": [{**ROW, "request_id": f"k{i}"} for i in
                                                range(5)]}))], []),
    "key header": ([body(BODY)], [(b"x-bentoship-key", b"user-1")]),
    "empty headers count as absent": ([body(BODY)], [(b"x-bentoship-key", b""), OVERRIDE,
                                                     (b"x-bentoship-variant", b"control")]),
    "chunked": ([body(BODY[:5], True), body(b"", True), body(BODY[5:])], [OVERRIDE]),
    "not json": ([body(b"{")], []),
    "empty": ([body(b"")], []),
    "unknown variant": ([body(BODY)], [(b"x-bentoship-variant", b" nope ")]),
    "declared too large": ([body(BODY)], [(b"content-length", b"99999999")]),
    "streamed too large": ([body(b" " * 70_000, True)] * 10, []),
    "client disconnected": ([body(BODY[:5], True), {"type": "http.disconnect"}], []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_path_answers_as_starlettes_stack(
    config: ServiceConfig, predictor: Predictor, case: str
) -> None:
    messages, headers = CASES[case]
    fast, fast_registry = make_app(config, predictor)
    routed, routed_registry = make_app(config, predictor)
    assert isinstance(fast, ServiceApp)
    answer = call(fast, messages, headers=headers)
    assert answer == call(lambda *args: Starlette.__call__(routed, *args), messages,
                          headers=headers)
    assert counted(fast_registry) == counted(routed_registry)
    start, sent = answer
    assert start["headers"] == [(b"content-length", str(len(sent["body"])).encode()),
                                (b"content-type", b"application/json")]


def test_a_client_that_disconnects_is_answered_invalid_json(
    config: ServiceConfig, predictor: Predictor
) -> None:
    app, _ = make_app(config, predictor)
    start, sent = call(app, CASES["client disconnected"][0])
    assert start["status"] == 400
    assert orjson.loads(sent["body"]) == {"error": "invalid_json", "detail": [
        {"row": None, "field": None, "problem": "client disconnected while sending the body"}]}


def test_a_streamed_body_over_the_limit_is_413(config: ServiceConfig, predictor: Predictor) -> None:
    app, _ = make_app(config, predictor)
    start, sent = call(app, CASES["streamed too large"][0])
    limit = max_body_bytes(config)
    assert (start["status"], orjson.loads(sent["body"])["detail"][0]["problem"]) == (
        413, f"body has at least {70_000 * 2} bytes; the limit is {limit}")


def test_not_ready_on_the_fast_path(config: ServiceConfig) -> None:
    app, _ = make_app(config, None)
    start, sent = call(app, [body(BODY)])
    assert (start["status"], orjson.loads(sent["body"])["error"]) == (503, "not_ready")


def test_a_handler_that_raises_gets_starlettes_plain_500(
    config: ServiceConfig, predictor: Predictor
) -> None:
    class Broken:
        def record_success(self, *args: Any) -> None:
            raise OSError("disk full")

    state = AppState()
    state.activate(predictor, Broken())  # type: ignore[arg-type]
    app = create_app(config, state)
    answers = []
    for route in (app, lambda *args: Starlette.__call__(app, *args)):
        sent: list[Message] = []
        with pytest.raises(OSError, match="disk full"):  # re-raised, for the server's log
            call(route, [body(BODY)], headers=[OVERRIDE], sent=sent)
        answers.append(sent)
    assert answers[0] == answers[1] == [
        {"type": "http.response.start", "status": 500, "headers": [
            (b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")]},
        {"type": "http.response.body", "body": b"Internal Server Error"},
    ]


def test_other_requests_still_go_through_starlette(
    config: ServiceConfig, predictor: Predictor
) -> None:
    app, _ = make_app(config, predictor)
    start, sent = call(app, [body(b"")], method="GET")
    assert (start["status"], orjson.loads(sent["body"])["error"]) == (405, "method_not_allowed")
    assert call(app, [body(BODY)], path="/predict/")[0]["status"] == 307  # Starlette's redirect
    # Under a root_path it does not start with, /predict is routed by Starlette, same answer.
    start, sent = call(app, [body(BODY)], path="/predict", root_path="/x", headers=[OVERRIDE])
    assert start["status"] == 200 and orjson.loads(sent["body"])["rows"][0]["variant"] == (
        "treatment")
    assert call(app, [body(BODY)], path="/x/predict", root_path="/x")[0]["status"] == 200
