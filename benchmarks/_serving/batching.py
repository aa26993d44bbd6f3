"""The batching section of `benchmarks/serving`: this service with adaptive batching on and off.

Two models, each served twice from the same Bento (one worker process each, batching turned
on or off by the container's environment, `BENTOSHIP_BATCHING`):

- `forest`: a scikit-learn random forest of `TREES` trees on the demo dataset, logged with
  skops as the demo's control is. Its `predict_proba` walks every tree in Python whatever the
  row count: a high fixed cost per call, what batching is for;
- `demo`: the demo's XGBoost version (well under a millisecond a call), where batching can only
  cost: the thread hop and the wait.

Every request is one test row; `CLIENTS` closed-loop clients; the slices rotate through the four
servers like the main table's. Targets: forest on >= 3x forest off in req/s with a p99 no
worse; demo on >= 0.95x demo off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import Cell

from _serving import load, servers

FOREST = "bench-forest"
TREES = 300
CLIENTS = 16
KEYS = ("forest-on", "forest-off", "demo-on", "demo-off")
SCENARIOS = (CLIENTS, 1)  # clients; one client shows what the wait costs when nobody shares


def train_forest(tracking_uri: str, artifact_root: Path) -> str:
    """Train, log (skops) and register the random forest; returns `NAME/VERSION`."""
    from importlib.metadata import version as installed

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    from pipeline.models import demo
    from pipeline.models.registry import client_for, ensure_experiment, fluent_uris

    with fluent_uris(tracking_uri, tracking_uri):
        client = client_for(tracking_uri, tracking_uri)
        mlflow.set_experiment(experiment_id=ensure_experiment(client, "bentoship-bench-forest",
                                                              artifact_root))
        x_train, x_test, y_train, _ = demo._dataset()
        example = x_test.head(5)
        forest = RandomForestClassifier(n_estimators=TREES, max_depth=8, n_jobs=1,
                                        random_state=7).fit(x_train, y_train)
        with mlflow.start_run(run_name="forest"):
            info = mlflow.sklearn.log_model(
                forest,
                name="model",
                serialization_format="skops",
                skops_trusted_types=[
                    "sklearn.ensemble._forest.RandomForestClassifier",
                    "sklearn.tree._classes.DecisionTreeClassifier",
                    "sklearn.tree._tree.Tree",
                ],
                pyfunc_predict_fn="predict_proba",
                pip_requirements=[f"{pkg}=={installed(pkg)}" for pkg in
                                  ("scikit-learn", "skops", "numpy", "pandas", "scipy")],
                signature=infer_signature(example, forest.predict_proba(example)),
                input_example=example,
                registered_model_name=FOREST,
            )
    return f"{FOREST}/{info.registered_model_version}"


def private_home(shared: Path, dest: Path) -> Path:
    """A BentoML home of its own that sees the shared store's models and Bentos: `bentoml
    serve` empties `$BENTOML_HOME/prometheus_multiproc_dir` when it starts, and servers sharing
    it would wipe and sum each other's metrics."""
    dest.mkdir()
    for entry in shared.iterdir():
        if entry.name != "prometheus_multiproc_dir":
            (dest / entry.name).symlink_to(entry.resolve())
    return dest


def environment(on: bool, max_rows: int, max_wait_ms: float) -> dict[str, str]:
    env = {"BENTOSHIP_WORKERS": "1", "BENTOSHIP_BATCHING": "true" if on else "false"}
    if on:
        env |= {"BENTOSHIP_BATCH_MAX_ROWS": str(max_rows),
                "BENTOSHIP_BATCH_MAX_WAIT_MS": f"{max_wait_ms:g}"}
    return env


def check_same_answers(running: dict[str, servers.Server], rows: list[dict[str, Any]]) -> None:
    """On and off must answer every one of 64 rows alike, each sent alone and concurrently."""
    bodies = [running["forest-on"].encode([row]) for row in rows[:64]]
    for model in ("forest", "demo"):
        answers = {}
        for mode in ("on", "off"):
            server = running[f"{model}-{mode}"]
            answers[mode] = post_concurrently(server.predict_url, bodies)
            failed = [status for status, _ in answers[mode] if status != 200]
            if failed:
                raise SystemExit(f"{server.label} answered {failed[:3]} to single test rows")
        scores = {mode: [server_scores(body) for _, body in got]
                  for mode, got in answers.items()}
        if scores["on"] != scores["off"]:
            raise SystemExit(f"{model}: batching on answered other scores than off")


def post_concurrently(url: str, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    """Every body POSTed, `CLIENTS` at a time; (status, body) in the order of `bodies`."""
    import asyncio

    import httpx

    async def run() -> list[tuple[int, bytes]]:
        gate = asyncio.Semaphore(CLIENTS)
        async with httpx.AsyncClient(timeout=60) as client:
            async def one(body: bytes) -> tuple[int, bytes]:
                async with gate:
                    response = await client.post(url, content=body,
                                                 headers={"content-type": "application/json"})
                    return response.status_code, response.content

            return list(await asyncio.gather(*(one(b) for b in bodies)))

    return asyncio.run(run())


def server_scores(body: bytes) -> list[float]:
    import orjson

    return [row["score"] for row in orjson.loads(body)["rows"]]


@dataclass
class Measured:
    cells: dict[tuple[str, int], Cell]  # (server key, clients)
    batch_rows: dict[str, float]  # mean rows per model call of the batching-on servers


def measure(running: dict[str, servers.Server], requests: dict[str, list[bytes]], seconds: float,
            rounds: int, timeout: float, say: Callable[[str], None]) -> Measured:
    cells = {(key, clients): Cell() for clients in SCENARIOS for key in running}
    slice_s = seconds / rounds
    order = list(running)
    batch_rows = {}
    for clients in SCENARIOS:
        say(f"  batching: 1 row per request, {clients} client(s): {rounds} x {slice_s:.1f} s "
            "per server")
        for round_ in range(rounds):
            shift = round_ % len(order)
            for key in order[shift:] + order[:shift]:
                server = running[key]
                cpu = server.cpu_seconds()
                sample = load.run(server.predict_url, requests[key], clients=clients,
                                  seconds=slice_s, timeout=timeout)
                cells[(key, clients)].add(sample, server.cpu_seconds() - cpu)
        if clients == CLIENTS:  # the warm-up's and this scenario's calls
            batch_rows = {key: mean_batch_rows(running[key]) for key in running
                          if key.endswith("-on")}
    return Measured(cells, batch_rows)


def mean_batch_rows(server: servers.Server) -> float:
    """Rows per model call so far, from the server's `bentoship_batch_rows` histogram."""
    import httpx

    metrics_url = server.predict_url.rsplit("/", 1)[0] + "/metrics"
    text = httpx.get(metrics_url, timeout=10).text
    totals = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in totals:
            if line.startswith(f"bentoship_batch_rows_{kind}{{"):
                totals[kind] += float(line.rsplit(" ", 1)[1])
    return totals["sum"] / totals["count"] if totals["count"] else float("nan")


def report(measured: Measured, labels: dict[str, str]) -> list[tuple[str, bool, str]]:
    """Prints the table; returns the targets (what, met, measured)."""
    cells = measured.cells
    print("\n| model | clients | batching | req/s | p50 ms | p99 ms | errors | "
          "server CPU ms/req | rows per model call | req/s vs off |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for clients in SCENARIOS:
        for key in KEYS:
            cell = cells[(key, clients)]
            off = cells[(key.rsplit("-", 1)[0] + "-off", clients)].rate()
            per_call = (f"{measured.batch_rows.get(key, 1.0):.1f}" if clients == CLIENTS
                        else "-")
            print(f"| {labels[key]} | {clients} | {key.rsplit('-', 1)[1]} | {cell.rate():,.1f} | "
                  f"{cell.p50():.2f} | {cell.p99():.2f} | {cell.sample.errors} | "
                  f"{cell.cpu_per_request():.2f} | {per_call} | "
                  f"{cell.rate() / off if off else float('nan'):.2f}x |")
    forest_on, forest_off = cells[("forest-on", CLIENTS)], cells[("forest-off", CLIENTS)]
    demo_on, demo_off = cells[("demo-on", CLIENTS)], cells[("demo-off", CLIENTS)]
    ratio = forest_on.rate() / forest_off.rate() if forest_off.rate() else float("inf")
    demo_ratio = demo_on.rate() / demo_off.rate() if demo_off.rate() else float("inf")
    errors = sum(c.sample.errors for c in cells.values())
    return [
        (f"batching, costly model, 1 row x {CLIENTS} clients: >= 3x the throughput of off",
         ratio >= 3, f"{ratio:.2f}x ({forest_on.rate():,.0f} vs {forest_off.rate():,.1f} req/s)"),
        (f"batching, costly model, 1 row x {CLIENTS} clients: p99 no worse than off",
         forest_on.p99() <= forest_off.p99(),
         f"{forest_on.p99():.1f} vs {forest_off.p99():.1f} ms"),
        (f"batching, demo XGBoost model, 1 row x {CLIENTS} clients: costs <= 5% throughput",
         demo_ratio >= 0.95,
         f"{demo_ratio:.2f}x ({demo_on.rate():,.0f} vs {demo_off.rate():,.0f} req/s)"),
        ("batching: zero errors", errors == 0, f"{errors} errors"),
    ]


def figures(measured: Measured) -> dict[str, dict[str, float]]:
    """The JSON document's `batching`, at `CLIENTS` clients: `on`/`off` are the costly model,
    `demo_on`/`demo_off` the demo's XGBoost model; `*_1_client` the same with one client."""
    out = {}
    for clients in SCENARIOS:
        for key in KEYS:
            model, mode = key.rsplit("-", 1)
            cell = measured.cells[(key, clients)]
            name = mode if model == "forest" else f"demo_{mode}"
            figures = {"req_s": cell.rate(), "p50_ms": cell.p50(), "p99_ms": cell.p99(),
                       "errors": float(cell.sample.errors)}
            if clients == CLIENTS:
                out[name] = {**figures, "rows_per_call": measured.batch_rows.get(key, 1.0)}
            else:
                out[f"{name}_{clients}_client"] = figures
    return out
