"""How a release's pipeline reports its outcome to `bentoship ci webhook`: pre-signed bodies.

The last stage of a rendered pipeline (pipeline/release/spinnaker.py) is a `webhook` stage that
posts, whatever happened before it,

    POST <[release] outcome_url>            (the receiver's /outcome)
    X-Bentoship-Signature: v1,<signature of this release id and outcome>
    {"release_id": "<the release>", "outcome": "promoted" | "rolled-back" | "failed",
     "execution_id": "<the Spinnaker execution>"}

Spinnaker cannot compute an HMAC, so the render step computes one signature per possible
outcome: base64 HMAC-SHA256, keyed with the receiver's secret (`BENTOSHIP_WEBHOOK_SECRET`), of
`bentoship-outcome:v1:<release id>:<outcome>`. The stage picks the one matching the outcome
with the same SpEL expression that picks the outcome. The signature covers the release id and
the outcome, not the body's bytes (Orca serialises the payload its own way); `execution_id` is
informational and unsigned.

What this does and does not prove: a valid signature shows the message was rendered by someone
holding the secret, for this release and this outcome. All three signatures of a release are
in its pipeline.json (in Spinnaker and among the release's files in the ledger), so whoever can
read those can report any of the three outcomes for that release, and only for it: as much as
`bentoship releases mark` lets anyone with access to the ledger do. There is no timestamp to
bound replays; a replay asks for a status the release already has (nothing changes) or for a
change the ledger refuses (a rolled-back release is never promoted again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import WebhookRejected
from pipeline.release.ledger import OUTCOMES

__all__ = ["SIGNATURE_HEADER", "OutcomeHook", "OutcomeReport", "json_object", "outcome_hook",
           "read_report", "signature"]

SIGNATURE_HEADER = "X-Bentoship-Signature"
_VERSION = "v1"


def signature(secret: str, release_id: str, outcome: str) -> str:
    """The header value that authorises reporting `outcome` for `release_id`."""
    message = f"bentoship-outcome:{_VERSION}:{release_id}:{outcome}".encode()
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return f"{_VERSION},{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class OutcomeHook:
    """What the pipeline's outcome stage needs: where to post, and a signature per outcome."""

    url: str
    release_id: str
    signatures: Mapping[str, str]  # outcome -> X-Bentoship-Signature value


def outcome_hook(secret: str, url: str, release_id: str) -> OutcomeHook:
    return OutcomeHook(url, release_id, {o: signature(secret, release_id, o) for o in OUTCOMES})


@dataclass(frozen=True)
class OutcomeReport:
    """A verified outcome report."""

    release_id: str
    outcome: str
    execution_id: str


def json_object(body: bytes) -> dict[str, Any]:
    """The JSON object a request's body holds; WebhookRejected (`malformed_body`) otherwise."""
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookRejected("malformed_body", f"the body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise WebhookRejected("malformed_body", "the body is not a JSON object")
    return payload


def read_report(secret: str, headers: Mapping[str, str], body: bytes) -> OutcomeReport:
    """Check and read one outcome report; WebhookRejected when it is not provably ours.

    Reasons: `malformed_body` (not a JSON object with a release id and one of OUTCOMES),
    `missing_header`, `bad_signature`.
    """
    payload = json_object(body)
    release_id, outcome = payload.get("release_id"), payload.get("outcome")
    if not isinstance(release_id, str) or not release_id:
        raise WebhookRejected("malformed_body", "the body has no `release_id`")
    if outcome not in OUTCOMES:
        raise WebhookRejected(
            "malformed_body", f"`outcome` is {outcome!r}, not one of {', '.join(OUTCOMES)}"
        )
    lowered = {key.lower(): value for key, value in headers.items()}
    offered = lowered.get(SIGNATURE_HEADER.lower(), "").strip()
    if not offered:
        raise WebhookRejected("missing_header", f"missing header {SIGNATURE_HEADER}")
    expected = signature(secret, release_id, outcome)
    if not any(hmac.compare_digest(expected.encode(), value.encode()) for value in offered.split()):
        raise WebhookRejected(
            "bad_signature",
            f"bad signature: {SIGNATURE_HEADER} is not the one rendered for release "
            f"{release_id} and outcome {outcome} with our secret",
        )
    execution = payload.get("execution_id")
    return OutcomeReport(release_id, outcome, execution if isinstance(execution, str) else "")
