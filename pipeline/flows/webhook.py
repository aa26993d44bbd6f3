"""Check and read MLflow Model Registry webhook deliveries (MLflow 3.3+).

How MLflow sends one (mlflow 3.17.2, `mlflow/webhooks/delivery.py`, `_send_webhook_request`,
lines 142-204; header names in `mlflow/webhooks/constants.py`, lines 2-7):

- `POST` with `Content-Type: application/json` and the body
  `{"entity": ..., "action": ..., "timestamp": <ISO 8601 UTC>, "data": {...}}`
  (plus `"workspace"` when MLflow workspaces are enabled), serialised with `json.dumps`.
- `X-MLflow-Delivery-Id`: a fresh UUID4 per delivery (not the webhook's id, which is not sent).
- `X-MLflow-Timestamp`: Unix time in whole seconds, as a decimal string.
- `X-MLflow-Signature`: only when the webhook has a secret. `v1,` followed by the base64
  (standard alphabet, padded) HMAC-SHA256, keyed with the secret (UTF-8), of
  `f"{delivery_id}.{timestamp}.{body}"` (`_generate_hmac_signature`, lines 121-139). This is the
  Standard Webhooks scheme (https://www.standardwebhooks.com) with MLflow's header names.

MLflow itself enforces no timestamp tolerance on the receiving side; we reject deliveries more
than `tolerance_s` (default 300 s, the Standard Webhooks recommendation) away from our clock,
in either direction, which bounds replays. Deduplicating on the delivery id is the receiver's
job (MLflow retries with the same body but signs each attempt anew).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError, WebhookRejected
from pipeline.release.outcome import json_object

__all__ = [
    "DELIVERY_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "RegistryEvent",
    "WebhookRejected",
    "parse_event",
    "verify_signature",
]

# The same strings as mlflow.webhooks.constants (a test keeps them equal); kept here so the
# receiver does not import all of MLflow to read three headers.
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
_SIGNATURE_VERSION = "v1"


# The registry events a deploy can follow; everything else (tags, prompts, new registered
# models, budget alerts) is acknowledged and ignored.
MODEL_VERSION_CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"
ALIAS_DELETED = "model_version_alias.deleted"
_FIELDS = {  # the `data` fields each handled event must carry (mlflow/webhooks/types.py)
    MODEL_VERSION_CREATED: ("name", "version"),
    ALIAS_CREATED: ("name", "alias", "version"),
    ALIAS_DELETED: ("name", "alias"),
}



@dataclass(frozen=True)
class RegistryEvent:
    """A registry event a deploy can act on.

    `event` is `model_version.created`, `model_version_alias.created` or
    `model_version_alias.deleted`. `version` is None for a deleted alias (MLflow does not say
    which version it pointed to); `alias` is None for a created version. `delivery_id` is the
    `X-MLflow-Delivery-Id` header when the caller passes it.
    """

    event: str
    model_name: str
    version: str | None
    alias: str | None
    delivery_id: str | None
    sent_at: str | None


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = 300,
) -> None:
    """Raise WebhookRejected unless `body` was signed with `secret` by MLflow, recently.

    `headers` are the request's headers (any capitalisation); `body` its raw bytes, exactly as
    received: re-serialised JSON would not match. Several space-separated `v1,<sig>` values are
    accepted (Standard Webhooks allows them, for rotating secrets); one must match.
    """
    if not secret:
        raise ConfigError("the MLflow webhook secret is empty: set the secret the webhook has")
    lowered = {key.lower(): value for key, value in headers.items()}
    values = {}
    for name in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        value = lowered.get(name.lower(), "").strip()
        if not value:
            raise WebhookRejected(
                "missing_header",
                f"missing header {name}"
                + (" (is a secret set on the MLflow webhook?)" if name == SIGNATURE_HEADER else ""),
            )
        values[name] = value
    delivery_id, timestamp = values[DELIVERY_ID_HEADER], values[TIMESTAMP_HEADER]
    if not timestamp.isdigit():
        raise WebhookRejected(
            "malformed_header", f"{TIMESTAMP_HEADER} is not Unix seconds: {timestamp!r}"
        )

    # The signature before the clock: whoever does not know the secret learns nothing more
    # than "bad signature", and the timestamp is only trusted once it is known to be signed.
    signed = b"%s.%s.%s" % (delivery_id.encode(), timestamp.encode(), body)
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    offered = [
        candidate.partition(",")[2].encode()
        for candidate in values[SIGNATURE_HEADER].split()
        if candidate.startswith(f"{_SIGNATURE_VERSION},")
    ]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise WebhookRejected(
            "bad_signature",
            f"bad signature: {SIGNATURE_HEADER} does not match the body, delivery id and "
            "timestamp signed with our secret",
        )

    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance_s:
        when = f"{age:.0f}s old" if age > 0 else f"{-age:.0f}s in the future"
        raise WebhookRejected(
            "stale_timestamp",
            f"stale timestamp: the delivery is {when}, beyond the {tolerance_s}s tolerance",
        )


def parse_event(body: bytes, *, delivery_id: str | None = None) -> RegistryEvent | None:
    """Read a verified delivery's body; None for events a deploy does not follow.

    Pass the `X-MLflow-Delivery-Id` header as `delivery_id`: MLflow does not repeat it in the
    body. Raises WebhookRejected (`malformed_body`) if the body is not an MLflow webhook payload.
    """
    payload = json_object(body)
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data")
    if not isinstance(entity, str) or not isinstance(action, str) or not isinstance(data, dict):
        raise WebhookRejected(
            "malformed_body", "the body lacks the `entity`, `action` and `data` of an MLflow event"
        )
    event = f"{entity}.{action}"
    if event not in _FIELDS:
        return None
    missing = [key for key in _FIELDS[event] if not isinstance(data.get(key), str) or not data[key]]
    if missing:
        raise WebhookRejected(
            "malformed_body", f"{event} event without {', '.join(f'`{m}`' for m in missing)}"
        )
    sent_at = payload.get("timestamp")
    return RegistryEvent(
        event=event,
        model_name=data["name"],
        version=data.get("version") if event != ALIAS_DELETED else None,
        alias=data.get("alias") if event != MODEL_VERSION_CREATED else None,
        delivery_id=delivery_id,
        sent_at=sent_at if isinstance(sent_at, str) else None,
    )
