"""The webhook receiver over HTTP on loopback, deliveries signed with MLflow's own code.

Deliveries are signed with MLflow's `_generate_hmac_signature` (MLflow has no public
equivalent); the receiver runs a real HTTP server on loopback. What needs images, a registry and
an `mlflow server` is in tests/integration/test_ci_flows.py and tests/e2e/test_story.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from pipeline.config import CiConfig, ReleaseConfig
from pipeline.errors import ConfigError
from pipeline.flows.journal import DeliveryJournal, Outcome
from pipeline.flows.receiver import Receiver, event_filter, webhook_receiver
from pipeline.flows.webhook import RegistryEvent
from pipeline.settings import load_settings
from tests.stores import free_port
from tests.unit.pipeline.flows.support import invoke

SECRET = "unit-test-webhook-secret"


def body(event: str = "model_version.created", **data: Any) -> bytes:
    entity, action = event.rsplit(".", 1)
    payload = {"entity": entity, "action": action,
               "timestamp": datetime.now(UTC).isoformat(),
               "data": {"name": "demo-classifier", "version": "3", **data}}
    return json.dumps(payload).encode()


def post(url: str, payload: bytes, *, secret: str = SECRET, delivery_id: str | None = None,
         timestamp: int | None = None) -> tuple[int, dict[str, Any]]:
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, stamp,
                                                       payload.decode()),
    }
    return answer(urllib.request.Request(f"{url}/webhook", data=payload, headers=headers))


def answer(request: urllib.request.Request) -> tuple[int, dict[str, Any]]:
    """The receiver's status code and JSON answer, errors included."""
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Recorder:
    """The release worker's handler, standing in for `flows.on_model_registered`."""

    def __init__(self) -> None:
        self.events: list[RegistryEvent] = []
        self.called = threading.Event()

    def __call__(self, event: RegistryEvent) -> Outcome:
        self.events.append(event)
        self.called.set()
        return Outcome("released", f"released {event.model_name}/{event.version}", "run-1")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, Recorder]]:
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "deliveries.jsonl"), recorder,
                       ignore=event_filter((), ("challenger",)))
    running.start()
    try:
        yield running, recorder
    finally:
        running.stop(timeout_s=10)


def test_a_signed_new_version_is_accepted_at_once_and_released_by_the_worker(
    receiver: tuple[Receiver, Recorder]
) -> None:
    running, recorder = receiver
    code, answer = post(running.url, body(), delivery_id="d-1")
    assert code == 202
    assert answer == {"status": "accepted", "delivery_id": "d-1", "model": "demo-classifier",
                      "version": "3", "status_url": "/deliveries/d-1"}
    assert recorder.called.wait(10)
    assert [(e.model_name, e.version, e.delivery_id) for e in recorder.events] == [
        ("demo-classifier", "3", "d-1")
    ]
    deadline = time.monotonic() + 10
    while (running.journal.get("d-1") or {}).get("status") != "released":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with urllib.request.urlopen(f"{running.url}/deliveries/d-1", timeout=5) as response:
        assert json.loads(response.read())["release_id"] == "run-1"


def test_a_bad_signature_is_401_with_a_json_error_and_nothing_runs(
    receiver: tuple[Receiver, Recorder]
) -> None:
    running, recorder = receiver
    code, answer = post(running.url, body(), secret="not-our-secret")
    assert code == 401
    assert answer["error"] == "bad_signature"
    assert answer["detail"].startswith("bad signature")
    stale = post(running.url, body(), timestamp=int(time.time()) - 3600)
    assert stale[0] == 401 and stale[1]["error"] == "stale_timestamp"
    assert running.counts["rejected"] == 2
    time.sleep(0.2)
    assert recorder.events == []
    assert not running.journal.path.exists()


def test_unsigned_and_malformed_requests_are_refused(receiver: tuple[Receiver, Recorder]) -> None:
    running, recorder = receiver
    request = urllib.request.Request(f"{running.url}/webhook", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=5)
    assert excinfo.value.code == 401
    assert json.loads(excinfo.value.read())["error"] == "missing_header"
    code, answer = post(running.url, b"[1, 2]")
    assert (code, answer["error"]) == (400, "malformed_body")
    code, answer = post(running.url.replace("/webhook", "") + "/other", body())
    assert code == 404
    assert recorder.events == []


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (body("model_version_tag.set", key="k", value="v"),
         "model_version_tag.set events do not start a release"),
        (body("registered_model.created"),
         "registered_model.created events do not start a release"),
        (body("model_version_alias.deleted", alias="champion"),
         "a deleted alias does not start a release"),
        (body("model_version_alias.created", alias="champion"),
         "alias @champion is not in [ci] alias_events (challenger)"),
    ],
)
def test_other_events_are_acknowledged_and_ignored(
    receiver: tuple[Receiver, Recorder], payload: bytes, detail: str
) -> None:
    running, recorder = receiver
    code, answer = post(running.url, payload)
    assert (code, answer) == (200, {"status": "ignored", "detail": detail})
    time.sleep(0.2)
    assert recorder.events == []


def test_a_configured_alias_starts_a_release(receiver: tuple[Receiver, Recorder]) -> None:
    running, recorder = receiver
    code, _ = post(running.url, body("model_version_alias.created", alias="challenger"))
    assert code == 202
    assert recorder.called.wait(10)
    assert recorder.events[0].alias == "challenger"


def test_a_repeated_delivery_is_a_duplicate_even_after_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "deliveries.jsonl"
    first = Recorder()
    running = Receiver(SECRET, DeliveryJournal(journal), first)
    running.start()
    try:
        assert post(running.url, body(), delivery_id="d-7")[0] == 202
        assert first.called.wait(10)
        code, answer = post(running.url, body(), delivery_id="d-7")
        assert (code, answer["status"]) == (200, "duplicate")
    finally:
        running.stop(timeout_s=10)
    second = Recorder()
    again = Receiver(SECRET, DeliveryJournal(journal), second)
    again.start()
    try:
        code, answer = post(again.url, body(), delivery_id="d-7")
        assert (code, answer["status"]) == (200, "duplicate")
        time.sleep(0.2)
        assert second.events == [] and len(first.events) == 1
    finally:
        again.stop(timeout_s=10)


def test_deliveries_accepted_but_not_finished_resume_at_start(tmp_path: Path) -> None:
    journal = tmp_path / "deliveries.jsonl"
    event = RegistryEvent("model_version.created", "demo-classifier", "4", None, "d-9", None)
    journal.write_text(json.dumps({"delivery_id": "d-9", "status": "accepted",
                                   "event": event.__dict__}) + "\n")
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(journal), recorder)
    running.start()
    try:
        assert recorder.called.wait(10)
        assert recorder.events == [event]
    finally:
        running.stop(timeout_s=10)


def test_the_receiver_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BENTOSHIP_WEBHOOK_SECRET is not set"):
        Receiver("", DeliveryJournal(tmp_path / "j.jsonl"), Recorder())


def test_a_failing_release_is_journaled_and_the_worker_goes_on(tmp_path: Path) -> None:
    seen: list[str] = []

    def handle(event: RegistryEvent) -> Outcome:
        seen.append(str(event.version))
        if event.version == "3":
            raise ConfigError("cannot release version 3")
        return Outcome("skipped", "fine")

    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), handle)
    running.start()
    try:
        post(running.url, body(), delivery_id="bad")
        post(running.url, body(version="4"), delivery_id="good")
        deadline = time.monotonic() + 10
        while (running.journal.get("good") or {}).get("status") != "skipped":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert running.journal.get("bad")["status"] == "failed"  # type: ignore[index]
        assert running.journal.get("bad")["detail"] == "cannot release version 3"  # type: ignore[index]
        assert seen == ["3", "4"]
    finally:
        running.stop(timeout_s=10)


def test_the_webhook_receiver_is_made_from_settings_and_the_ci_table(tmp_path: Path) -> None:
    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path / "home"),
                              "BENTOSHIP_WEBHOOK_SECRET": SECRET})
    made = webhook_receiver(settings, ReleaseConfig(), CiConfig(models=("demo-classifier",)),
                            port=free_port(), tolerance_s=60)
    try:
        assert made.secret == SECRET and made.tolerance_s == 60
        assert made.journal.path == settings.webhook_dir / "deliveries.jsonl"
        other = RegistryEvent("model_version.created", "other-model", "1", None, "d-1", None)
        assert made.ignore(other) == "other-model is not among the models [ci] follows"
    finally:
        made.stop()  # never started: closes the socket it bound


def test_ci_webhook_without_a_secret_exits_1_and_says_what_to_set(tmp_path: Path) -> None:
    result = invoke(["ci", "webhook", "--port", str(free_port())], tmp_path,
                     BENTOSHIP_WEBHOOK_SECRET="")
    assert result.exit_code == 1
    assert "BENTOSHIP_WEBHOOK_SECRET is not set" in result.output


# --- the server's guards: a bounded queue, body limits, slow clients, graceful shutdown -----


class Gate:
    """A release that waits until the test opens the gate: keeps the worker busy."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()
        self.done: list[str] = []

    def __call__(self, event: RegistryEvent) -> Outcome:
        self.started.set()
        assert self.open.wait(20)
        self.done.append(str(event.delivery_id))
        return Outcome("released", "done", "run-1")


def raw(url: str, request: bytes, *, pause_s: float = 0.0, rest: bytes = b"") -> bytes:
    """Send `request` over a bare socket, then `rest` after `pause_s`; the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if pause_s:
            time.sleep(pause_s)
            with contextlib.suppress(OSError):
                sock.sendall(rest)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_full_queue_is_429_with_retry_after_and_the_delivery_is_not_journaled(
    tmp_path: Path,
) -> None:
    gate = Gate()
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), gate, queue_size=1,
                       retry_after_s=3)
    running.start()
    try:
        assert post(running.url, body(), delivery_id="running")[0] == 202
        assert gate.started.wait(10)  # the worker holds it: the queue is empty again
        assert post(running.url, body(version="4"), delivery_id="waiting")[0] == 202
        payload = body(version="5")
        stamp = str(int(time.time()))
        request = urllib.request.Request(f"{running.url}/webhook", data=payload, headers={
            "X-MLflow-Delivery-Id": "refused", "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": _generate_hmac_signature(SECRET, "refused", stamp,
                                                           payload.decode())})
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=10)
        assert excinfo.value.code == 429
        assert excinfo.value.headers["Retry-After"] == "3"
        answer = json.loads(excinfo.value.read())
        assert answer["error"] == "queue_full"
        assert "1 deliveries are waiting" in answer["detail"]
        assert running.journal.get("refused") is None
        # A retry of a delivery already accepted is still a duplicate, full queue or not.
        assert post(running.url, body(version="4"), delivery_id="waiting")[1]["status"] == \
            "duplicate"
        gate.open.set()
        deadline = time.monotonic() + 10
        while len(gate.done) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert post(running.url, body(version="5"), delivery_id="refused")[0] == 202
    finally:
        gate.open.set()
        running.stop(timeout_s=10)


def test_a_body_over_the_limit_is_413_before_it_is_read(tmp_path: Path) -> None:
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), recorder, max_body=1000)
    running.start()
    try:
        big = body(description="x" * 2000)
        code, answer = post(running.url, big)
        assert (code, answer["error"]) == (413, "too_large")
        assert answer["detail"] == "bodies are limited to 1000 bytes"
        head = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        reply = raw(running.url, head)
        assert reply.startswith(b"HTTP/1.1 411 ")
        assert b'"error": "length_required"' in reply
        assert recorder.events == []
    finally:
        running.stop(timeout_s=10)


def test_a_slow_client_is_408_and_the_receiver_goes_on(tmp_path: Path) -> None:
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), recorder,
                       read_timeout_s=0.5)
    running.start()
    try:
        head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"entity\""
        reply = raw(running.url, head, pause_s=1.5, rest=b" " * 90)
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert b'"error": "request_timeout"' in reply
        assert b"within 0.5s" in reply
        assert post(running.url, body())[0] == 202
        assert recorder.called.wait(10)
    finally:
        running.stop(timeout_s=10)


def test_every_error_is_one_json_object(receiver: tuple[Receiver, Recorder]) -> None:
    running, _ = receiver
    for method, path, code, error in [("GET", "/nowhere", 404, "not_found"),
                                      ("GET", "/deliveries/unknown", 404, "not_found"),
                                      ("PUT", "/webhook", 405, "method_not_allowed"),
                                      ("DELETE", "/healthz", 405, "method_not_allowed")]:
        request = urllib.request.Request(f"{running.url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=5)
        assert excinfo.value.code == code, (method, path)
        assert excinfo.value.headers["Content-Type"] == "application/json"
        assert json.loads(excinfo.value.read())["error"] == error


def test_stop_finishes_the_release_in_progress_and_keeps_the_queued_one_for_restart(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.jsonl"
    gate = Gate()
    running = Receiver(SECRET, DeliveryJournal(journal), gate)
    running.start()
    assert post(running.url, body(), delivery_id="in-progress")[0] == 202
    assert gate.started.wait(10)
    assert post(running.url, body(version="4"), delivery_id="queued")[0] == 202
    stopper = threading.Thread(target=running.stop, kwargs={"timeout_s": 20})
    stopper.start()
    deadline = time.monotonic() + 10
    while True:  # no new connections once stopping
        try:
            urllib.request.urlopen(f"{running.url}/healthz", timeout=5).close()
        except urllib.error.URLError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(urllib.error.URLError):
        post(running.url, body(version="5"), delivery_id="late")
    gate.open.set()
    stopper.join(20)
    assert not stopper.is_alive()
    assert gate.done == ["in-progress"]
    reread = DeliveryJournal(journal)
    assert reread.get("in-progress")["status"] == "released"  # type: ignore[index]
    assert [e.delivery_id for e in reread.unfinished()] == ["queued"]
    assert reread.get("late") is None


def test_while_the_receiver_reads_its_limit_of_bodies_another_request_is_429_busy(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), recorder, max_reading=1,
                       read_timeout_s=2, retry_after_s=2)
    running.start()
    host, port = running.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.3)  # the receiver is now reading that body
            code, answer = post(running.url, body())
            assert (code, answer["error"]) == (429, "busy")
        deadline = time.monotonic() + 10
        while post(running.url, body(), delivery_id="after")[0] != 202:  # freed by the 408
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert recorder.called.wait(10)
        assert running.counts["busy"] >= 1
    finally:
        running.stop(timeout_s=10)


def test_ci_webhook_refuses_an_empty_queue_as_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["ci", "webhook", "--port", str(free_port()), "--queue-size", "0"], tmp_path,
                    BENTOSHIP_WEBHOOK_SECRET=SECRET)
    assert result.exit_code == 2
    assert "--queue-size" in result.output and "0 is not in the range x>=1" in result.output


# --- outcome reports ------------------------------------------------------------------------------


def post_outcome(url: str, release_id: str, outcome: str, *, signed_as: str | None = None,
                 secret: str = SECRET) -> tuple[int, dict[str, Any]]:
    """What a pipeline's `Report outcome` stage posts, signed as rendered."""
    from pipeline.release.outcome import SIGNATURE_HEADER, signature

    payload = json.dumps({"release_id": release_id, "outcome": outcome,
                          "execution_id": "01HEXEC"}).encode()
    headers = {"Content-Type": "application/json",
               SIGNATURE_HEADER: signature(secret, release_id, signed_as or outcome)}
    return answer(urllib.request.Request(f"{url}/outcome", data=payload, headers=headers))


def test_a_signed_outcome_marks_the_release_in_the_ledger_once(tmp_path: Path) -> None:
    from pipeline.flows.receiver import ledger_marker
    from pipeline.models.registry import settings_client
    from pipeline.release import ledger, marking, recording
    from pipeline.release.files import render_release
    from tests.unit.pipeline.release.test_release import demo_spec

    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path / "home"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    client = settings_client(settings)
    spec = demo_spec()
    files = render_release(spec, ReleaseConfig(), tmp_path / "release")
    release = recording.record_release(client, spec, files, artifact_root=tmp_path / "artifacts")
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), Recorder(),
                       mark=ledger_marker(settings))
    running.start()
    try:
        rid = release.release_id
        assert post_outcome(running.url, rid, "promoted", signed_as="failed")[1]["error"] == \
            "bad_signature"
        assert post_outcome(running.url, rid, "promoted", secret="not ours")[0] == 401
        assert ledger.get_release(client, rid).status == "handed-off"  # nothing forged counted

        code, answer = post_outcome(running.url, rid, "promoted")
        assert (code, answer["status"], answer["previous"]) == (200, "marked", "handed-off")
        code, again = post_outcome(running.url, rid, "promoted")
        assert (code, again["status"]) == (200, "duplicate")
        code, refused = post_outcome(running.url, rid, "failed")
        assert (code, refused["error"]) == (409, "bad_transition")
        assert "is promoted; it cannot be marked failed" in refused["detail"]
        code, unknown = post_outcome(running.url, "f" * 32, "failed")
        assert (code, unknown["error"]) == (404, "unknown_release")
        code, malformed = post_outcome(running.url, rid, "succeeded")
        assert (code, malformed["error"]) == (400, "malformed_body")
    finally:
        running.stop(timeout_s=10)
    marked = ledger.get_release(client, rid)
    assert marked.status == "promoted" and "Spinnaker execution 01HEXEC" in marked.outcome_by
    assert [h["to"] for h in marking.outcome_history(client, rid)] == ["promoted"]
