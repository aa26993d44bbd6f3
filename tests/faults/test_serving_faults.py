"""The service under faults, on real containers of one image (`slow_image`, tests/faults/conftest.py):
a worker killed with requests in flight, a graceful drain under load, a model past its deadline.

A request's `delay_s` makes its model call sleep (tests/faults/slow_hooks.py), so requests are
in flight for as long as a test needs them to be. Which worker holds which request is read from
the container's /proc (each worker's established connections on port 3000). The figures are
printed; nothing is asserted about time.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pipeline.build.smoke import Running
from tests.faults.conftest import StartContainer, status
from tests.faults.slow_hooks import FEATURES

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROW = dict.fromkeys(FEATURES, 1.0)

# Run inside the container (its own user can read its processes' /proc): every BentoML worker's
# pid and how many established connections it holds on port 3000.
_WORKERS = r"""
import json, os, re
established = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1].endswith(":0BB8") and cols[3] == "01":
                established.add(cols[9])
workers = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        if b"_bentoml_impl.worker.service" not in cmdline:
            continue
        inodes = {re.sub(r"\D", "", os.readlink(f"/proc/{pid}/fd/{fd}"))
                  for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        continue
    workers[pid] = len(inodes & established)
print(json.dumps(workers))
"""


def workers(running: Running) -> dict[int, int]:
    """Worker pid -> requests (connections) it holds now."""
    result = running.container.exec_run(["python3", "-c", _WORKERS])
    assert result.exit_code == 0, result.output
    return {int(pid): count for pid, count in json.loads(result.output).items()}


def post(url: str, delay_s: float = 0.0, rows: int = 1, timeout: float = 60.0) -> int | str:
    """POST one request on a connection of its own: the status, or the transport error's name."""
    body = {"rows": [{**ROW, "delay_s": delay_s}] * rows}
    try:
        return httpx.post(url + "/predict", json=body, timeout=timeout).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def responses_total(url: str) -> dict[tuple[str, str], float]:
    """`bentoship_responses_total` by (status, cause), as `/metrics` sums it over workers."""
    found: dict[tuple[str, str], float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        match = re.match(r'bentoship_responses_total\{(.*)\} (\S+)$', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found[(labels["status"], labels["cause"])] = float(match.group(2))
    return found


def test_a_killed_worker_loses_only_its_own_requests(serving_container: StartContainer) -> None:
    running = serving_container(cpus=2)
    url = running.url
    assert len(workers(running)) == 2  # one worker per CPU of the container's quota

    with ThreadPoolExecutor(16) as pool:
        # Both workers answer, and /metrics counts the answers of both.
        first = list(pool.map(lambda _: post(url, delay_s=0.5), range(8)))
        assert first == [200] * 8

        in_flight = [pool.submit(post, url, 6.0) for _ in range(8)]
        wait_until(lambda: sum(workers(running).values()) == 8, "8 requests in flight")
        held = workers(running)
        victim = max(held, key=lambda pid: held[pid])
        print(f"requests in flight per worker: {held}; killing {victim}")
        killed = running.container.exec_run(
            ["python3", "-c", f"import os, signal; os.kill({victim}, signal.SIGKILL)"])
        assert killed.exit_code == 0, killed.output

        probes: list[int] = []
        while not all(f.done() for f in in_flight):
            probes.append(status(url + "/readyz"))
            time.sleep(0.2)
        outcomes = Counter(f.result() for f in in_flight)
        print(f"outcomes: {dict(outcomes)}; /readyz while the worker was down: {Counter(probes)}")
        assert outcomes[200] == 8 - held[victim]
        assert sum(n for k, n in outcomes.items() if k != 200) == held[victim]
        assert all(isinstance(k, str) for k in outcomes if k != 200)  # broken connections only
        assert set(probes) == {200}

        wait_until(lambda: len(workers(running)) == 2, "BentoML to restart the worker", 60)
        after = list(pool.map(lambda _: post(url, delay_s=0.2), range(8)))
        assert after == [200] * 8
    answered = responses_total(url)
    assert answered == {("200", "none"): 16 + outcomes[200]}, answered


def test_sigterm_drains_the_requests_in_flight(serving_container: StartContainer) -> None:
    """Kubernetes deletes a pod: its endpoints go (no new requests), `preStop` sleeps, SIGTERM,
    then SIGKILL at the end of the grace period. Here: 16 closed-loop clients, the endpoints
    gone at `cut`, a short preStop, then `docker stop -t 30` (BentoML waits 30 s itself).
    Eight clients: no worker gets more than its `max_model_calls` (8), which would be 503s."""
    running = serving_container(cpus=2)
    url = running.url
    cut = time.monotonic() + 3.0
    prestop_s = 0.5

    def client(index: int) -> list[int | str]:
        time.sleep(index * 0.3)  # staggered, so slow requests are in flight at any moment
        outcomes = []
        while time.monotonic() < cut:
            outcomes.append(post(url, delay_s=3.0 if index % 2 else 0.0))
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        clients: list[Future[list[int | str]]] = [pool.submit(client, i) for i in range(8)]
        time.sleep(cut - time.monotonic() + prestop_s)
        in_flight = sum(workers(running).values())
        signalled = time.monotonic()
        running.container.stop(timeout=30)
        stopped_s = time.monotonic() - signalled
        outcomes = Counter(o for f in clients for o in f.result())
    running.container.reload()
    exit_code = running.container.attrs["State"]["ExitCode"]
    print(f"in flight at SIGTERM: {in_flight}; outcomes: {dict(outcomes)}; "
          f"stopped after {stopped_s:.1f}s with exit code {exit_code}")
    assert in_flight > 0
    assert set(outcomes) == {200}, outcomes
    assert exit_code == 0, running.container.logs()[-3000:]  # not killed at the grace period's end


def test_a_model_past_its_deadline_is_503_model_timeout_and_nothing_piles_up(
    serving_container: StartContainer,
) -> None:
    running = serving_container(cpus=1, environment={
        "BENTOSHIP_WORKERS": "1", "BENTOSHIP_MODEL_TIMEOUT_S": "1", "BENTOSHIP_MAX_MODEL_CALLS": "2",
    })
    url = running.url
    assert len(workers(running)) == 1

    def timed(delay_s: float) -> tuple[httpx.Response, float]:
        began = time.monotonic()
        response = httpx.post(url + "/predict", json={"rows": [{**ROW, "delay_s": delay_s}]},
                              timeout=30)
        return response, time.monotonic() - began

    with ThreadPoolExecutor(4) as pool:
        stuck = list(pool.map(timed, [8.0, 8.0]))
        # Both of the worker's model-call threads are still asleep: the next call is refused at
        # once rather than queued, while the event loop (and /readyz) answers.
        refused, refused_s = timed(0.0)
        ready = status(url + "/readyz")
    for response, _ in stuck:
        assert response.status_code == 503
        assert response.json() == {"error": "model_timeout", "detail": [{
            "row": None, "field": None,
            "problem": "the model (hooks included) did not answer within 1s"}]}
    assert refused.status_code == 503 and refused.json()["error"] == "overloaded"
    assert ready == 200
    print(f"model_timeout after {[round(s, 2) for _, s in stuck]}s, overloaded after "
          f"{refused_s:.3f}s")

    polls: list[int | str] = []
    wait_until(lambda: polls.append(post(url)) or polls[-1] == 200,
               "the stuck calls to return and free their threads")
    assert set(polls[:-1]) <= {503}
    answered = responses_total(url)
    assert answered == {("503", "server"): 3 + len(polls) - 1, ("200", "none"): 1}, answered
