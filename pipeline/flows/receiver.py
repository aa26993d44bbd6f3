"""`bentoship ci webhook`: receive MLflow registry webhooks and start releases, one at a time.

    POST /webhook            an MLflow delivery (pipeline/flows/webhook.py checks and reads it)
    POST /outcome            a release's pipeline reports promoted, rolled-back or failed
                             (pipeline/release/outcome.py checks and reads it)
    GET  /healthz            {"status": "ok", "pending": n, "counts": {...}}
    GET  /deliveries/<id>    what became of one delivery

Answers, always one JSON object:

    202 {"status": "accepted", ...}    verified, new, followed: queued for the release worker
    200 {"status": "ignored", ...}     verified, but not an event a deploy follows
    200 {"status": "duplicate", ...}   this delivery id was accepted before
    401 {"error": "bad_signature", "detail": "..."}   (or missing_header, malformed_header,
                                        stale_timestamp): not provably from our MLflow; nothing runs
    429 {"error": "queue_full", ...}   the release queue is full; `Retry-After` says when to retry
    400 {"error": "malformed_body", ...}, 404, 405, 408, 411, 413 for the rest

An outcome report is answered once the ledger has it (one MLflow write, no queue):

    200 {"status": "marked", "release_id": ..., "previous": ..., "outcome": ...}
    200 {"status": "duplicate", ...}   the release has this status already (a retried report)
    401 bad_signature / missing_header; 400 malformed_body
    404 {"error": "unknown_release"}   409 {"error": "bad_transition"} (both final for Orca)
    503 {"error": "ledger_unavailable"} with Retry-After: MLflow did not answer (Orca retries
                                        5xx for the stage's 5 minutes)

The HTTP side is a Starlette app on uvicorn (pipeline/flows/webhook_server.py, which also
limits bodies and how long they may take to arrive). The answer comes before the release: a
release builds an image (tens of seconds) and MLflow's sender gives up after 30 s. Releases
run in one worker thread, in arrival order; at most `queue_size` wait. Delivery ids
are journaled under `<BENTOSHIP_HOME>/webhook/deliveries.jsonl` when accepted and again when
done, so a retried delivery is a duplicate even after a restart, and deliveries accepted but
not finished when the receiver stopped are run when it starts again.

`webhook_receiver` makes the receiver `bentoship ci webhook` runs, from the settings and the
`[release]`/`[ci]` configuration: each accepted new version goes through
`flows.on_model_registered`, its files into a folder of their own.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import BadTransition, ConfigError, PipelineError, ReleaseNotFound
from pipeline.flows import webhook_server
from pipeline.flows.journal import DeliveryJournal, Outcome
from pipeline.flows.webhook import (
    ALIAS_CREATED,
    ALIAS_DELETED,
    DELIVERY_ID_HEADER,
    RegistryEvent,
    WebhookRejected,
    parse_event,
    verify_signature,
)
from pipeline.progress import Echo

if TYPE_CHECKING:
    from pipeline.config import CiConfig, ReleaseConfig
    from pipeline.settings import Settings

__all__ = [
    "Receiver",
    "event_filter",
    "release_handler",
    "webhook_receiver",
]

MAX_BODY = 1 << 20


Handle = Callable[[RegistryEvent], Outcome]
# Record a reported outcome: (release id, outcome, who reported it) -> marking.Marked
Mark = Callable[[str, str, str], Any]
Filter = Callable[[RegistryEvent], str | None]  # a reason to ignore the event, or None


def event_filter(models: tuple[str, ...], alias_events: tuple[str, ...]) -> Filter:
    """Which verified events start a release: new versions, and the configured aliases."""

    def reason_to_ignore(event: RegistryEvent) -> str | None:
        if models and event.model_name not in models:
            return f"{event.model_name} is not among the models [ci] follows"
        if event.event == ALIAS_DELETED:
            return "a deleted alias does not start a release"
        if event.event == ALIAS_CREATED and event.alias not in alias_events:
            return (f"alias @{event.alias} is not in [ci] alias_events "
                    f"({', '.join(alias_events) or 'none'})")
        return None

    return reason_to_ignore


class Receiver:
    """The HTTP server and its release worker; `start()` runs both in background threads.

    At most `queue_size` accepted deliveries wait for the worker; a new one beyond that is
    answered 429 with `Retry-After: retry_after_s` and is neither journaled nor queued, so
    MLflow's retry is a new delivery, not a duplicate. Bodies over `max_body` bytes are 413;
    a body that takes longer than `read_timeout_s` to arrive is 408; while `max_reading` bodies
    are being read, another request is 429 `busy` before its body is read.
    """

    def __init__(
        self,
        secret: str,
        journal: DeliveryJournal,
        handle: Handle,
        *,
        ignore: Filter = lambda event: None,
        host: str = "127.0.0.1",
        port: int = 0,
        tolerance_s: int = 300,
        queue_size: int = 100,
        max_body: int = MAX_BODY,
        read_timeout_s: float = 10.0,
        retry_after_s: int = 5,
        max_reading: int = 64,
        mark: Mark | None = None,
        echo: Echo = lambda message: None,
    ) -> None:
        if not secret:
            raise ConfigError(
                "BENTOSHIP_WEBHOOK_SECRET is not set: the receiver only accepts deliveries "
                "signed with the secret of the MLflow webhook. Set it to that secret."
            )
        if queue_size < 1:
            raise ConfigError(f"the webhook queue size must be at least 1, not {queue_size}")
        self.secret = secret
        self.journal = journal
        self.handle = handle
        self.ignore = ignore
        self.tolerance_s = tolerance_s
        self.queue_size = queue_size
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.retry_after_s = retry_after_s
        self.max_reading = max_reading
        self.mark = mark
        self.echo = echo
        self.counts: Counter[str] = Counter()
        # Unbounded itself: deliveries resumed at start may exceed `queue_size`; the bound is
        # kept by `receive`, which checks and queues under `_admission`.
        self._queue: queue.Queue[RegistryEvent | None] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._admission = threading.Lock()
        self._socket = _listen(host, port)
        self._address = self._socket.getsockname()[:2]
        self._server = webhook_server.server(webhook_server.app(self),
                                             grace_s=read_timeout_s + 5)
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._address
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        for event in self.journal.unfinished():
            self.echo(f"Resuming delivery {event.delivery_id} ({event.model_name}/{event.version}),"
                      " accepted before the receiver stopped")
            self._queue.put(event)
        self._threads = [
            threading.Thread(target=self._work, name="bentoship-release-worker", daemon=True),
            threading.Thread(target=self._serve, name="bentoship-webhook", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting; answer requests in flight; let a running release finish.

        Deliveries still queued stay `accepted` in the journal and run at the next start.
        """
        self._stopping.set()
        self._queue.put(None)
        self._server.should_exit = True
        if not self._threads:
            self._socket.close()  # never started
        for thread in self._threads:
            thread.join(timeout_s)

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def pending(self) -> int:
        return self._queue.qsize()

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one delivery: verify, read, de-duplicate, filter, queue (or 429 when full)."""
        try:
            verify_signature(self.secret, headers, body, tolerance_s=self.tolerance_s)
            delivery_id = {k.lower(): v for k, v in headers.items()}[DELIVERY_ID_HEADER.lower()]
            event = parse_event(body, delivery_id=delivery_id.strip())
        except WebhookRejected as exc:
            self.count("rejected")
            self.echo(f"Rejected a delivery: {exc}")
            code = 400 if exc.reason == "malformed_body" else 401
            return code, {"error": exc.reason, "detail": str(exc)}
        if event is None:
            self.count("ignored")
            name = _event_name(body)
            return 200, {"status": "ignored", "detail": f"{name} events do not start a release"}
        reason = self.ignore(event)
        if reason is not None:
            self.count("ignored")
            self.echo(f"Ignored {event.event} of {event.model_name}: {reason}")
            return 200, {"status": "ignored", "detail": reason}
        assert event.delivery_id is not None
        with self._admission:
            waiting = self.pending()
            if waiting >= self.queue_size and not self.journal.seen(event.delivery_id):
                self.count("queue_full")
                return 429, {"error": "queue_full",
                             "detail": f"{waiting} deliveries are waiting for the release "
                                       f"worker (the queue holds {self.queue_size}); "
                                       f"retry after {self.retry_after_s}s"}
            accepted = self.journal.accept(event)
            if accepted:
                self._queue.put(event)
        if not accepted:
            self.count("duplicate")
            self.echo(f"Duplicate delivery {event.delivery_id}: already accepted, not run again")
            return 200, {"status": "duplicate", "delivery_id": event.delivery_id,
                         "detail": "this delivery was accepted before"}
        self.count("accepted")
        self.echo(f"Accepted {event.event} {event.model_name}/{event.version} "
                  f"(delivery {event.delivery_id}); {waiting} queued before it")
        return 202, {"status": "accepted", "delivery_id": event.delivery_id,
                     "model": event.model_name, "version": event.version,
                     "status_url": f"/deliveries/{event.delivery_id}"}

    def receive_outcome(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one outcome report: verify it, then mark the release in the ledger."""
        from pipeline.release.outcome import read_report

        try:
            report = read_report(self.secret, headers, body)
        except WebhookRejected as exc:
            self.count("rejected")
            self.echo(f"Rejected an outcome report: {exc}")
            code = 400 if exc.reason == "malformed_body" else 401
            return code, {"error": exc.reason, "detail": str(exc)}
        if self.mark is None:
            return 404, {"error": "not_found", "detail": "this receiver records no outcomes"}
        by = f"pipeline outcome webhook (Spinnaker execution {report.execution_id or 'unknown'})"
        try:
            done = self.mark(report.release_id, report.outcome, by)
        except ReleaseNotFound as exc:
            return 404, {"error": "unknown_release", "detail": str(exc)}
        except BadTransition as exc:
            self.echo(f"Refused outcome {report.outcome} of release {report.release_id}: {exc}")
            return 409, {"error": "bad_transition", "detail": str(exc)}
        except PipelineError as exc:
            self.echo(f"Could not record outcome {report.outcome} of {report.release_id}: {exc}")
            return 503, {"error": "ledger_unavailable", "detail": str(exc)}
        answer = {"release_id": done.record.release_id, "outcome": report.outcome,
                  "previous": done.previous}
        if not done.changed:
            self.count("outcome_duplicate")
            return 200, {"status": "duplicate", **answer,
                         "detail": f"the release is {report.outcome} already"}
        self.count("outcome_marked")
        self.echo(f"Release {done.record.short_id}: {done.previous} -> {report.outcome} ({by})")
        return 200, {"status": "marked", **answer}

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def _work(self) -> None:
        while True:
            event = self._queue.get()
            if event is None or self._stopping.is_set():
                return
            assert event.delivery_id is not None
            self.echo(f"Releasing {event.model_name}/{event.version} "
                      f"(delivery {event.delivery_id})")
            try:
                outcome = self.handle(event)
            except PipelineError as exc:
                outcome = Outcome("failed", str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug must not stop later deliveries
                self.echo(traceback.format_exc())
                outcome = Outcome("failed", f"internal error: {type(exc).__name__}: {exc}")
            self.count(outcome.status)
            self.journal.finish(event.delivery_id, outcome)
            self.echo(f"Delivery {event.delivery_id}: {outcome.status}: {outcome.detail}")


def release_handler(
    settings: Settings,
    release_config: ReleaseConfig,
    ci_config: CiConfig,
    releases: Path,
    echo: Echo,
) -> Handle:
    """The worker's handler: `on_model_registered` for the event, files under `releases`.

    Each release gets a folder of its own, `<model>-v<version>-<delivery id prefix>`.
    """
    from pipeline.flows.training import on_model_registered

    def handle(event: RegistryEvent) -> Outcome:
        assert event.version is not None and event.delivery_id is not None
        folder = releases / f"{event.model_name}-v{event.version}-{event.delivery_id[:8]}"
        result = on_model_registered(event.model_name, event.version, settings,
                                     release_config, ci_config, folder, echo)
        if result.handoff is None:
            return Outcome("skipped", result.reason)
        return Outcome("released", f"{result.reason}; files in {folder}",
                       result.handoff.record.release_id)

    return handle


def webhook_receiver(
    settings: Settings,
    release_config: ReleaseConfig,
    ci_config: CiConfig,
    *,
    outdir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8686,
    tolerance_s: int = 300,
    queue_size: int = 100,
    read_timeout_s: float = 10.0,
    echo: Echo = lambda message: None,
) -> Receiver:
    """The receiver `bentoship ci webhook` runs (not started yet).

    It verifies deliveries with `settings.webhook_secret` (ConfigError when unset), journals
    them under `settings.webhook_dir`, follows the models and aliases of `[ci]`, and releases
    into `outdir` (default: `<webhook_dir>/releases`, outside the checkout).
    """
    releases = outdir if outdir is not None else settings.webhook_dir / "releases"
    handle = release_handler(settings, release_config, ci_config, releases, echo)
    return Receiver(settings.webhook_secret,
                    DeliveryJournal(settings.webhook_dir / "deliveries.jsonl"), handle,
                    ignore=event_filter(ci_config.models, ci_config.alias_events),
                    host=host, port=port, tolerance_s=tolerance_s, queue_size=queue_size,
                    read_timeout_s=read_timeout_s, mark=ledger_marker(settings), echo=echo)


def ledger_marker(settings: Settings) -> Mark:
    """Mark releases in the ledger of `settings` (what the receiver does with an outcome)."""
    from pipeline.models.registry import settings_client
    from pipeline.release import marking

    def mark(release_id: str, outcome: str, by: str) -> Any:
        return marking.mark_release(settings_client(settings), release_id, outcome, by=by,
                                   reason=f"reported by the release's pipeline: {outcome}")

    return mark


def _event_name(body: bytes) -> str:
    try:
        payload = json.loads(body)
        return f"{payload['entity']}.{payload['action']}"
    except (ValueError, KeyError, TypeError):
        return "such"


def _listen(host: str, port: int) -> socket.socket:
    """Bind now, so a taken port is a ConfigError before anything starts (and port 0 works)."""
    try:
        sock = socket.create_server((host, port), reuse_port=False, backlog=128)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock
