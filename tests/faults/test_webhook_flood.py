"""A flood of webhook deliveries, valid and forged mixed, at a real receiver process.

1,000 deliveries posted concurrently over real HTTP to `tests/faults/flood_receiver.py` (the
receiver `bentoship ci webhook` runs, with a cheap release step): distinct valid ones, retries
of them (the same delivery id, signed anew) and forgeries of five kinds. The client retries
429s after `Retry-After`, as MLflow does. Afterwards every valid delivery was released exactly
once, every forged one was refused without a trace in the journal, and the receiver's memory
stayed bounded. The figures are printed; nothing is asserted about time.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from pipeline.flows.journal import DeliveryJournal
from tests.faults.flood_receiver import SECRET
from tests.stores import free_port

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VALID, DUPLICATES, CLIENTS = 500, 150, 32
FORGERIES = ("wrong_secret", "tampered_body", "unsigned", "stale", "replayed_elsewhere")
FORGED = 1000 - VALID - DUPLICATES  # 350: 70 of each kind
RSS_GROWTH_LIMIT_MIB = 64


@dataclass
class Delivery:
    delivery_id: str
    body: bytes
    kind: str  # "valid", "duplicate" or one of FORGERIES
    answers: list[int] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """Signed at send time, as MLflow signs each attempt, then forged as `kind` says."""
        stamp = int(time.time()) - (3600 if self.kind == "stale" else 0)
        secret = "not-our-secret" if self.kind == "wrong_secret" else SECRET
        signature = _generate_hmac_signature(secret, self.delivery_id, str(stamp),
                                             self.body.decode())
        headers = {"Content-Type": "application/json", "X-MLflow-Timestamp": str(stamp),
                   "X-MLflow-Delivery-Id": self.delivery_id, "X-MLflow-Signature": signature}
        if self.kind == "unsigned":
            del headers["X-MLflow-Signature"]
        if self.kind == "replayed_elsewhere":  # a genuine signature under another delivery id
            headers["X-MLflow-Delivery-Id"] = str(uuid.uuid4())
        return headers

    def payload(self) -> bytes:
        if self.kind == "tampered_body":
            return self.body.replace(b'"version": "', b'"version": "9')
        return self.body


def version_created(version: int) -> bytes:
    return json.dumps({"entity": "model_version", "action": "created",
                       "timestamp": datetime.now(UTC).isoformat(),
                       "data": {"name": "demo-classifier", "version": str(version)}}).encode()


def deliveries() -> list[Delivery]:
    rng = random.Random(14)
    valid = [Delivery(str(uuid.uuid4()), version_created(n), "valid") for n in range(1, VALID + 1)]
    retries = [Delivery(d.delivery_id, d.body, "duplicate") for d in rng.sample(valid, DUPLICATES)]
    forged = [Delivery(str(uuid.uuid4()), version_created(10_000 + n), FORGERIES[n % 5])
              for n in range(FORGED)]
    flood = valid + retries + forged
    rng.shuffle(flood)
    return flood


@dataclass
class Tally:
    too_many: int = 0
    requests: int = 0


def send(port: int, delivery: Delivery, tally: Tally) -> None:
    """POST until the answer is not 429, sleeping `Retry-After` in between."""
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("POST", "/webhook", body=delivery.payload(),
                               headers=delivery.headers())
            response = connection.getresponse()
            answer: dict[str, Any] = json.loads(response.read())
        finally:
            connection.close()
        tally.requests += 1  # a race on the count is harmless: it is only printed
        delivery.answers.append(response.status)
        if response.status != 429:
            return
        assert answer["error"] == "queue_full"
        tally.too_many += 1
        time.sleep(float(response.headers["Retry-After"]))


def rss_mib(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def get_json(port: int, path: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


@dataclass
class Running:
    port: int
    process: subprocess.Popen[bytes]
    journal: Path
    released: Path


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    journal, released = tmp_path / "webhook" / "deliveries.jsonl", tmp_path / "released.txt"
    log = tmp_path / "receiver.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.flood_receiver", str(port), str(journal),
             str(released), "20"], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    running = Running(port, process, journal, released)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if get_json(port, "/healthz")["status"] == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_flood_releases_every_valid_delivery_once_and_refuses_every_forged_one(
    receiver: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    flood = deliveries()
    # Warm up (imports, the thread pool, first allocations) before taking the baseline.
    warm = [Delivery(str(uuid.uuid4()), version_created(90_000 + n), "valid") for n in range(20)]
    for delivery in warm:
        send(receiver.port, delivery, Tally())
    rss_before, _ = rss_mib(receiver.process.pid)

    tally = Tally()
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda d: send(receiver.port, d, tally), flood))
    elapsed = time.monotonic() - started

    valid_ids = {d.delivery_id for d in flood if d.kind == "valid"} | {
        d.delivery_id for d in warm}
    deadline = time.monotonic() + 120
    while (health := get_json(receiver.port, "/healthz"))["counts"].get("released", 0) < len(
            valid_ids):
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    rss_after, rss_peak = rss_mib(receiver.process.pid)
    receiver.process.send_signal(signal.SIGTERM)
    assert receiver.process.wait(timeout=60) == 0

    with capsys.disabled():
        print(f"\nwebhook flood: {len(flood)} deliveries ({VALID} valid, {DUPLICATES} retries, "
              f"{FORGED} forged) by {CLIENTS} clients in {elapsed:.2f}s: "
              f"{len(flood) / elapsed:.0f} deliveries/s, {tally.requests} requests, "
              f"{tally.too_many} answered 429 (retried); receiver RSS {rss_before:.1f} MiB "
              f"before, {rss_after:.1f} MiB after, {rss_peak:.1f} MiB peak")

    # Every valid delivery released exactly once, by the worker, and journaled as such.
    released = Counter(receiver.released.read_text().split())
    assert set(released) == valid_ids
    assert set(released.values()) == {1}
    journal = DeliveryJournal(receiver.journal)
    assert journal.unfinished() == []
    assert {journal.get(i)["status"] for i in valid_ids} == {"released"}  # type: ignore[index]
    # Each distinct delivery was accepted once; its retries were answered as duplicates.
    first = Counter(d.delivery_id for d in flood if d.kind in ("valid", "duplicate")
                    and d.answers[-1] == 202)
    assert set(first) == valid_ids - {d.delivery_id for d in warm}
    assert set(first.values()) == {1}
    assert {d.answers[-1] for d in flood if d.kind in ("valid", "duplicate")} == {200, 202}
    # Every forgery refused at once (never queued, so never 429), and left no trace.
    forged = [d for d in flood if d.kind in FORGERIES]
    assert {d.answers[-1] for d in forged} <= {401, 403}
    assert all(len(d.answers) == 1 for d in forged)
    assert not any(journal.seen(d.delivery_id) for d in forged)
    assert health["counts"]["rejected"] == len(forged)
    # Memory bounded: the queue holds at most 20, refused bodies are not kept.
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MIB, (rss_before, rss_after)
