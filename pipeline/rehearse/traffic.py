"""Requests for the rehearsal: read from a file or the models' examples, replayed at a rate.

A traffic file is JSON Lines: each line one request, either a row (`{"mean_radius": 14.1,
...}`) or a request body (`{"rows": [{...}, ...]}`). Without one, the rows are the input
examples logged with the canary's models and any dataset logged as an `evaluation` input of
their training runs (`mlflow.log_input(..., context="evaluation")` with a loadable source).

Requests go to the pods uniformly at random, as the production Service spreads them over every
pod that carries its selector's labels. Replay is open-loop: a request starts every 1/rate
seconds whatever the answers take, so a slow canary cannot slow the traffic down.
"""

from __future__ import annotations

import http.client
import itertools
import json
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ReleaseError

Body = bytes


def read_traffic(path: Path) -> list[Body]:
    """Request bodies from a JSON Lines file; ReleaseError naming the line that is not one."""
    bodies = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ReleaseError(f"cannot read the traffic file {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReleaseError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise ReleaseError(f"{path}:{number}: a request is a JSON object (a row or "
                               '{"rows": [...]}), got ' + type(item).__name__)
        rows = item["rows"] if isinstance(item.get("rows"), list) else [item]
        bodies.append(json.dumps({"rows": rows}).encode())
    if not bodies:
        raise ReleaseError(f"{path} has no requests")
    return bodies


def bodies_of(rows: Sequence[Mapping[str, Any]]) -> list[Body]:
    return [json.dumps({"rows": [dict(r)]}, default=str).encode() for r in rows]


def model_rows(client: Any, model_versions: Sequence[tuple[str, str]], scratch: Path,
               echo: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Rows from MLflow: each version's input example and its run's evaluation datasets."""
    from mlflow.models import Model

    from pipeline.models.registry import download, resolve

    rows: list[dict[str, Any]] = []
    for name, version in model_versions:
        mv = resolve(client, f"{name}/{version}")
        path = download(client, mv, scratch / f"{name}-{version}")
        example = Model.load(str(path)).load_input_example(str(path))
        if example is not None and hasattr(example, "to_dict"):
            rows.extend(example.to_dict(orient="records"))
        rows.extend(_evaluation_rows(client, mv.run_id, echo))
    if not rows:
        raise ReleaseError("the models have no input example in MLflow; give the rehearsal "
                           "--traffic FILE.jsonl")
    # Variants trained on the same split log the same rows: each once.
    unique = {json.dumps(r, sort_keys=True, default=str): r for r in rows}
    return list(unique.values())


def _evaluation_rows(client: Any, run_id: str | None, echo: Callable[[str], None]
                     ) -> list[dict[str, Any]]:
    if not run_id:
        return []
    import mlflow.data

    found: list[dict[str, Any]] = []
    for item in client.get_run(run_id).inputs.dataset_inputs:
        contexts = {t.value for t in item.tags if t.key == "mlflow.data.context"}
        if "evaluation" not in contexts:
            continue
        try:
            import pandas as pd

            path = Path(mlflow.data.get_source(item.dataset).load())
            table = (pd.read_parquet(path) if path.suffix == ".parquet"
                     else pd.read_json(path, lines=True) if path.suffix == ".jsonl"
                     else pd.read_csv(path))
        except Exception as exc:  # noqa: BLE001 - a dataset we cannot load is skipped, said so
            echo(f"  evaluation dataset {item.dataset.name!r} of run {run_id}: not loadable "
                 f"({exc}); skipped")
            continue
        found.extend(table.to_dict(orient="records"))
        echo(f"  evaluation dataset {item.dataset.name!r}: {len(table)} rows")
    return found


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _post(connections: dict[str, http.client.HTTPConnection], pod: str, address: str,
          body: Body, timeout_s: float) -> int:
    conn = connections.get(pod)
    if conn is None:
        host, port = address.rsplit(":", 1)
        conn = connections[pod] = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return int(response.status)


@dataclass
class Replay:
    """What the replay sent and got, per pod."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    backlog: int = 0  # requests that waited for a free worker: the pods fell behind

    def summary(self) -> str:
        ok = sum(n for (_, s), n in self.statuses.items() if 200 <= s < 300)
        codes = Counter[int]()
        for (_, status), n in self.statuses.items():
            codes[status] += n
        other = ", ".join(f"{n} x {s}" for s, n in sorted(codes.items()) if not 200 <= s < 300)
        failed = sum(self.failures.values())
        return (f"{sum(self.sent.values())} requests, {ok} answered 2xx"
                + (f", {other}" if other else "") + (f", {failed} failed ({dict(self.errors)})" if failed
                                                    else ""))


def replay(bodies: Sequence[Body], pods: Mapping[str, str], rate: float, duration_s: float,
           *, seed: int = 0, workers: int = 32, timeout_s: float = 10.0) -> Replay:
    """POST /predict at `rate` requests per second for `duration_s`, pods chosen uniformly."""
    if rate <= 0:
        raise ReleaseError(f"--rate must be positive, got {rate}")
    rng = random.Random(seed)
    names = sorted(pods)
    result = Replay()
    lock = threading.Lock()
    requests: queue.Queue[tuple[str, Body] | None] = queue.Queue()

    def worker() -> None:
        connections: dict[str, http.client.HTTPConnection] = {}
        while (item := requests.get()) is not None:
            pod, body = item
            for attempt in (1, 2):
                reused = pod in connections
                try:
                    status = _post(connections, pod, pods[pod], body, timeout_s)
                except (OSError, http.client.HTTPException) as exc:
                    connections.pop(pod, None)
                    # A kept-alive connection the server closed meanwhile: a fresh one, once
                    # (what HTTP clients do for a connection that failed before answering).
                    if reused and attempt == 1 and isinstance(exc, _STALE):
                        continue
                    with lock:
                        result.failures[pod] += 1
                        result.errors[type(exc).__name__] += 1
                    break
                with lock:
                    result.statuses[(pod, status)] += 1
                break

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    started = time.monotonic()
    for n in itertools.count():
        due = started + n / rate
        if due - started >= duration_s:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        pod = rng.choice(names)
        if requests.qsize() > workers * 4:
            result.backlog += 1
        requests.put((pod, bodies[rng.randrange(len(bodies))]))
        result.sent[pod] += 1
    for _ in threads:
        requests.put(None)
    for t in threads:
        t.join(timeout=timeout_s + 5)
    return result
