"""MLflow registry webhook deliveries: the signature check and the event reader.

Deliveries are signed by MLflow's own code: `_generate_hmac_signature` for the table of
tampered requests, and a whole delivery sent by `mlflow.webhooks.delivery.test_webhook` to a
local HTTP server for the end-to-end check.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import mlflow.webhooks.constants as mlflow_constants
import pytest
from mlflow.entities.webhook import Webhook, WebhookEvent
from mlflow.webhooks import delivery as mlflow_delivery

from pipeline.errors import ConfigError
from pipeline.flows.webhook import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RegistryEvent,
    WebhookRejected,
    parse_event,
    verify_signature,
)

SECRET = "s3cr3t-webhook-key"
NOW = 1_760_000_000
BODY = json.dumps(
    {
        "entity": "model_version",
        "action": "created",
        "timestamp": "2025-10-09T08:53:20+00:00",
        "data": {
            "name": "demo-classifier",
            "version": "3",
            "source": "models:/m-123",
            "run_id": "abc",
            "tags": {},
            "description": None,
        },
    }
)

Headers = dict[str, str]


def signed(body: str = BODY, *, secret: str = SECRET, timestamp: int = NOW) -> Headers:
    """Headers for `body` exactly as MLflow computes them."""
    delivery_id = str(uuid.uuid4())
    signature = mlflow_delivery._generate_hmac_signature(secret, delivery_id, str(timestamp), body)
    return {
        "Content-Type": "application/json",
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature,
    }


def test_header_names_are_mlflows() -> None:
    assert SIGNATURE_HEADER == mlflow_constants.WEBHOOK_SIGNATURE_HEADER
    assert TIMESTAMP_HEADER == mlflow_constants.WEBHOOK_TIMESTAMP_HEADER
    assert DELIVERY_ID_HEADER == mlflow_constants.WEBHOOK_DELIVERY_ID_HEADER
    assert mlflow_constants.WEBHOOK_SIGNATURE_VERSION == "v1"


def test_accepts_a_delivery_signed_by_mlflow() -> None:
    verify_signature(SECRET, signed(), BODY.encode(), now=NOW)


def test_accepts_lower_case_headers_as_asgi_servers_pass_them() -> None:
    headers = {key.lower(): value for key, value in signed().items()}

    verify_signature(SECRET, headers, BODY.encode(), now=NOW)


def test_accepts_any_matching_signature_of_several() -> None:
    # Standard Webhooks: space-separated signatures, e.g. while a secret is rotated.
    headers = signed()
    other = signed(secret="the-old-secret")[SIGNATURE_HEADER]
    headers[SIGNATURE_HEADER] = f"{other} {headers[SIGNATURE_HEADER]}"

    verify_signature(SECRET, headers, BODY.encode(), now=NOW)


def test_accepts_a_timestamp_within_the_tolerance() -> None:
    verify_signature(SECRET, signed(), BODY.encode(), now=NOW + 300)
    verify_signature(SECRET, signed(), BODY.encode(), now=NOW - 300)
    verify_signature(SECRET, signed(), BODY.encode(), now=NOW + 899, tolerance_s=900)


def _without(name: str) -> Callable[[Headers, bytes], tuple[Headers, bytes]]:
    def change(headers: Headers, body: bytes) -> tuple[Headers, bytes]:
        return {k: v for k, v in headers.items() if k != name}, body

    return change


def _replace(name: str, value: str) -> Callable[[Headers, bytes], tuple[Headers, bytes]]:
    def change(headers: Headers, body: bytes) -> tuple[Headers, bytes]:
        return {**headers, name: value}, body

    return change


def _tamper_body(headers: Headers, body: bytes) -> tuple[Headers, bytes]:
    return headers, body.replace(b'"version": "3"', b'"version": "4"')


def _resigned_elsewhere(headers: Headers, body: bytes) -> tuple[Headers, bytes]:
    # A valid signature, replayed with another delivery id.
    return {**headers, DELIVERY_ID_HEADER: str(uuid.uuid4())}, body


def _wrong_secret(headers: Headers, body: bytes) -> tuple[Headers, bytes]:
    return {**headers, SIGNATURE_HEADER: signed(secret="not-the-secret")[SIGNATURE_HEADER]}, body


def _newer_timestamp(headers: Headers, body: bytes) -> tuple[Headers, bytes]:
    # An attacker refreshing an old delivery's timestamp breaks its signature.
    return {**headers, TIMESTAMP_HEADER: str(NOW + 1)}, body


Tamper = Callable[[Headers, bytes], tuple[Headers, bytes]]

REJECTIONS: dict[str, tuple[Tamper, int, str, str]] = {
    "tampered body": (_tamper_body, NOW, "bad_signature", "bad signature"),
    "wrong secret": (_wrong_secret, NOW, "bad_signature", "bad signature"),
    "other delivery id": (_resigned_elsewhere, NOW, "bad_signature", "bad signature"),
    "re-stamped timestamp": (_newer_timestamp, NOW, "bad_signature", "bad signature"),
    "unknown signature version": (
        _replace(SIGNATURE_HEADER, "v2,AAAA"),
        NOW,
        "bad_signature",
        "bad signature",
    ),
    "bare signature without version": (
        _replace(SIGNATURE_HEADER, "c2lnbmF0dXJl"),
        NOW,
        "bad_signature",
        "bad signature",
    ),
    "missing signature": (
        _without(SIGNATURE_HEADER),
        NOW,
        "missing_header",
        "missing header X-MLflow-Signature (is a secret set on the MLflow webhook?)",
    ),
    "missing timestamp": (
        _without(TIMESTAMP_HEADER),
        NOW,
        "missing_header",
        "missing header X-MLflow-Timestamp",
    ),
    "missing delivery id": (
        _without(DELIVERY_ID_HEADER),
        NOW,
        "missing_header",
        "missing header X-MLflow-Delivery-Id",
    ),
    "empty signature": (_replace(SIGNATURE_HEADER, " "), NOW, "missing_header", "missing header"),
    "timestamp in milliseconds-with-dot": (
        _replace(TIMESTAMP_HEADER, "1760000000.5"),
        NOW,
        "malformed_header",
        "X-MLflow-Timestamp is not Unix seconds: '1760000000.5'",
    ),
    "stale timestamp": (
        lambda h, b: (h, b),
        NOW + 301,
        "stale_timestamp",
        "stale timestamp: the delivery is 301s old, beyond the 300s tolerance",
    ),
    "timestamp from the future": (
        lambda h, b: (h, b),
        NOW - 600,
        "stale_timestamp",
        "stale timestamp: the delivery is 600s in the future, beyond the 300s tolerance",
    ),
}


@pytest.mark.parametrize(
    ("tamper", "now", "reason", "message"), REJECTIONS.values(), ids=REJECTIONS
)
def test_rejects_with_the_reason(tamper: Tamper, now: int, reason: str, message: str) -> None:
    headers, body = tamper(signed(), BODY.encode())

    with pytest.raises(WebhookRejected) as excinfo:
        verify_signature(SECRET, headers, body, now=now)

    assert excinfo.value.reason == reason
    assert str(excinfo.value).startswith(message)


def test_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="webhook secret is empty"):
        verify_signature("", signed(), BODY.encode(), now=NOW)


# --- a whole delivery, sent by MLflow over HTTP -------------------------------------------


Received = list[tuple[Headers, bytes]]


def _capturing(received: Received) -> type[BaseHTTPRequestHandler]:
    class Capture(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers.items()), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Capture


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Received]]:
    # MLflow only posts to public https URLs unless told otherwise; this is a local test.
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    received: Received = []
    handler = _capturing(received)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            "model_version.created",
            RegistryEvent("model_version.created", "example_model", "1", None, "", None),
        ),
        (
            "model_version_alias.created",
            RegistryEvent(
                "model_version_alias.created", "example_model", "1", "example_alias", "", None
            ),
        ),
        ("model_version_tag.set", None),
    ],
)
def test_a_delivery_sent_by_mlflow_verifies_and_parses(
    receiver: tuple[str, Received], event: str, expected: RegistryEvent | None
) -> None:
    url, received = receiver
    hook = Webhook(
        webhook_id="wh-1",
        name="bentoship",
        url=url,
        events=[WebhookEvent(*event.split("."))],
        creation_timestamp=0,
        last_updated_timestamp=0,
        secret=SECRET,
    )

    result = mlflow_delivery.test_webhook(hook)

    assert result.success, result.error_message
    [(headers, body)] = received
    verify_signature(SECRET, headers, body, now=time.time())
    delivery_id = headers[DELIVERY_ID_HEADER]
    parsed = parse_event(body, delivery_id=delivery_id)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert parsed.sent_at is not None  # MLflow stamps the body with an ISO time
        assert parsed == RegistryEvent(
            expected.event,
            expected.model_name,
            expected.version,
            expected.alias,
            delivery_id,
            parsed.sent_at,
        )
    with pytest.raises(WebhookRejected, match="bad signature"):
        verify_signature("another-secret", headers, body, now=time.time())


# --- reading events -------------------------------------------------------------------------


def _body(entity: str, action: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"entity": entity, "action": action, "timestamp": "2025-10-09T08:53:20+00:00", "data": data}
    ).encode()


def _event(name: str, model: str, version: str | None, alias: str | None) -> RegistryEvent:
    return RegistryEvent(name, model, version, alias, "d-1", "2025-10-09T08:53:20+00:00")


EVENTS: dict[str, tuple[bytes, RegistryEvent | None]] = {
    "version created": (
        BODY.encode(),
        _event("model_version.created", "demo-classifier", "3", None),
    ),
    "alias created": (
        _body("model_version_alias", "created", {"name": "m", "alias": "champion", "version": "2"}),
        _event("model_version_alias.created", "m", "2", "champion"),
    ),
    "alias deleted": (
        _body("model_version_alias", "deleted", {"name": "m", "alias": "challenger"}),
        _event("model_version_alias.deleted", "m", None, "challenger"),
    ),
    "tag set: ignored": (
        _body("model_version_tag", "set", {"name": "m", "version": "1", "key": "k", "value": "v"}),
        None,
    ),
    "registered model created: ignored": (
        _body("registered_model", "created", {"name": "m", "tags": {}}),
        None,
    ),
    "prompt alias: ignored": (
        _body("prompt_alias", "created", {"name": "p", "alias": "a", "version": "1"}),
        None,
    ),
    "unknown future event: ignored": (_body("model_version", "archived", {"name": "m"}), None),
}


@pytest.mark.parametrize(("body", "expected"), EVENTS.values(), ids=EVENTS)
def test_parse_event(body: bytes, expected: RegistryEvent | None) -> None:
    assert parse_event(body, delivery_id="d-1") == expected


MALFORMED: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"<html>", "the body is not JSON"),
    "not UTF-8": (b"\xff\xfe{", "the body is not JSON"),
    "a list": (b"[]", "the body is not a JSON object"),
    "no entity": (b'{"action": "created", "data": {}}', "lacks the `entity`, `action` and `data`"),
    "version without name": (
        _body("model_version", "created", {"version": "1"}),
        "model_version.created event without `name`",
    ),
    "alias without alias": (
        _body("model_version_alias", "created", {"name": "m", "version": ""}),
        "model_version_alias.created event without `alias`, `version`",
    ),
}


@pytest.mark.parametrize(("body", "message"), MALFORMED.values(), ids=MALFORMED)
def test_parse_event_rejects_what_is_not_an_mlflow_event(body: bytes, message: str) -> None:
    with pytest.raises(WebhookRejected) as excinfo:
        parse_event(body)

    assert excinfo.value.reason == "malformed_body"
    assert message in str(excinfo.value)
