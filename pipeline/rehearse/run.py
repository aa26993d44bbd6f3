"""Run a rendered canary on this machine and judge it as Kayenta would.

    handoff = read_handoff(Path("release"))          # pipeline.json, canary-config.json, ...
    result = rehearse(handoff, Options(duration_s=300, rate=20), echo=print)
    result.verdict.verdict                          # "pass" | "marginal" | "fail"

The steps, each undone in `finally` (also on Ctrl-C):
1. the baseline and canary images, by the digests the Deployments name, pulled when absent;
2. `replicas` pods per arm: containers as the Deployments run them (read-only root, no
   capabilities, the image's non-root user, the manifests' environment), each on its own
   loopback address at the container port, like pod IPs;
3. a private Prometheus scraping them through the rendered relabelling (`prometheus.py`);
4. traffic replayed at `rate` over every pod (`traffic.py`) for `duration_s`;
5. every metric of canary-config.json queried per scope with the stage's step, over the
   traffic's time less the first rate window (a warm-up: its windows would mix in the idle
   time before the traffic), and judged (`judge.py`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.canary import MIN_POINTS
from pipeline.errors import ReleaseError, SmokeTestError, explanation, map_exceptions
from pipeline.progress import Echo
from pipeline.rehearse import prometheus, traffic
from pipeline.rehearse.handoff import Arm, Handoff
from pipeline.rehearse.judge import Verdict, judge
from pipeline.rehearse.prometheus import Pod

_WINDOW = re.compile(r"\[(\d+)s\]")
LABEL = "bentoship.rehearsal"


@dataclass(frozen=True)
class Options:
    duration_s: float = 300.0
    rate: float = 20.0
    step_s: int | None = None  # default: the release's step, shorter if too few points
    replicas: int | None = None  # default: the Deployments'
    traffic: Path | None = None
    seed: int = 0


@dataclass
class Rehearsal:
    verdict: Verdict
    step_s: int
    judged_s: float
    replay: traffic.Replay
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def rate_window_s(handoff: Handoff) -> int:
    """The longest `rate()` window of the canary config's queries."""
    found = [int(w) for m in handoff.canary_config["metrics"]
             for w in _WINDOW.findall(m["query"].get("customInlineTemplate", ""))]
    return max(found, default=handoff.step_seconds)


def plan_step(handoff: Handoff, options: Options, notes: list[str]) -> tuple[int, float]:
    """The query step and the judged seconds: the release's step unless that judges fewer than
    MIN_POINTS points in a rehearsal this short (then as short as gives MIN_POINTS, >= 1 s)."""
    warmup = rate_window_s(handoff)
    judged = options.duration_s - warmup
    if judged < 10:
        raise ReleaseError(
            f"--duration {options.duration_s:.0f}s leaves {judged:.0f}s to judge after the "
            f"first rate window ({warmup}s): rehearse for at least {warmup + 60}s"
        )
    step = options.step_s or handoff.step_seconds
    if options.step_s is None and judged / step < MIN_POINTS:
        shorter = max(1, int(judged // MIN_POINTS))
        if shorter < step:
            notes.append(
                f"the release's step is {step}s; {judged:.0f}s judged at that step would be "
                f"{int(judged // step)} points, so the rehearsal steps at {shorter}s "
                f"({int(judged // shorter)} points; the minimum is {MIN_POINTS})"
            )
            step = shorter
    return step, judged


def _pull(client: Any, image: str, echo: Echo) -> None:
    import docker.errors

    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    echo(f"  pulling {image}")
    with map_exceptions({"docker-api": (SmokeTestError,
                                        lambda exc: f"cannot pull {image}: {explanation(exc)}")}):
        repository, digest = image.split("@", 1)
        client.images.pull(repository, tag=digest)


@contextmanager
def pods(client: Any, handoff: Handoff, replicas: int | None, run_id: str,
         echo: Echo) -> Iterator[list[Pod]]:
    """Start every pod of both arms (in parallel) and stop them all afterwards."""
    from pipeline.build import smoke

    started: list[Any] = []
    lock = threading.Lock()
    subnet = secrets.randbelow(200) + 20  # 127.<subnet>.<arm>.<pod>: one address per pod

    def start(arm: Arm, index: int, arm_number: int) -> Pod:
        address = f"127.{subnet}.{arm_number}.{index + 1}"
        name = f"bentoship-rehearse-{run_id}-{arm.track}-{index}"
        running = smoke.start(
            client, arm.image, host_ip=address, host_port=arm.port, name=name,
            environment=dict(arm.env), labels={LABEL: run_id},
            deadline_s=180.0,
        )
        with lock:
            started.append(running.container)
        return Pod(name=f"{arm.name}-{index}", namespace=arm.namespace,
                   address=f"{address}:{arm.port}", labels=arm.labels,
                   annotations=arm.annotations)

    jobs = [(arm, i, n) for n, arm in enumerate(handoff.arms.values(), 1)
            for i in range(replicas or arm.replicas)]
    try:
        for arm in handoff.arms.values():
            _pull(client, arm.image, echo)
        echo(f"  starting {len(jobs)} pods: " + ", ".join(
            f"{replicas or a.replicas} {a.track}" for a in handoff.arms.values()))
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(start, *job) for job in jobs]
            found = [f.result() for f in futures]
        yield found
    finally:
        _remove(client, run_id, started)


def _remove(client: Any, run_id: str, started: Sequence[Any]) -> None:
    import docker.errors

    leftovers = list(started)
    try:
        leftovers += client.containers.list(all=True, filters={"label": f"{LABEL}={run_id}"})
    except docker.errors.APIError:
        pass
    for container in {c.id: c for c in leftovers}.values():
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass


def _wait_for_targets(server: prometheus.Prometheus, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        health = server.targets_up()
        if len(health) == count and all(h == "up" for h in health.values()):
            return
        time.sleep(0.5)
    raise ReleaseError(f"Prometheus did not scrape every pod within {timeout_s:.0f}s: {health}")


def collect(server: prometheus.Prometheus, handoff: Handoff, start: float, end: float,
            step_s: int) -> dict[str, tuple[list[float], list[float]]]:
    """Each metric's (baseline, canary) values: its query once per side of its scope."""
    series = {}
    for metric in handoff.canary_config["metrics"]:
        scope = handoff.scopes.get(metric.get("scopeName", "default"))
        if scope is None:
            raise ReleaseError(f"metric {metric['name']!r} is in scope "
                               f"{metric.get('scopeName')!r}, which the canary stage lacks")
        template = metric["query"]["customInlineTemplate"]
        control = server.query_range(
            prometheus.expand(template, scope.control, scope.control_location), start, end,
            step_s)
        experiment = server.query_range(
            prometheus.expand(template, scope.experiment, scope.experiment_location), start,
            end, step_s)
        series[metric["name"]] = (control, experiment)
    return series


def rehearse(handoff: Handoff, options: Options, *, client: Any, mlflow_client: Any = None,
             echo: Echo = lambda _: None,
             on_series: Callable[[dict[str, tuple[list[float], list[float]]]], None]
             | None = None) -> Rehearsal:
    began = time.monotonic()
    notes: list[str] = []
    step, judged = plan_step(handoff, options, notes)
    for note in notes:
        echo(f"  note: {note}")
    if options.traffic is not None:
        bodies = traffic.read_traffic(options.traffic)
        echo(f"  traffic: {len(bodies)} requests from {options.traffic}")
    else:
        if mlflow_client is None:
            raise ReleaseError("the rehearsal needs --traffic FILE.jsonl or MLflow to read the "
                               "models' input examples from")
        with tempfile.TemporaryDirectory(prefix="bentoship-rehearse-") as scratch:
            rows = traffic.model_rows(mlflow_client, handoff.arms["canary"].models,
                                      Path(scratch), echo)
        bodies = traffic.bodies_of(rows)
        echo(f"  traffic: {len(rows)} rows from the models' examples in MLflow")
    scrape = min(handoff.scrape_interval_seconds, step,
                 max(1, rate_window_s(handoff) // 4))
    run_id = secrets.token_hex(4)
    with (pods(client, handoff, options.replicas, run_id, echo) as running_pods,
          prometheus.running(running_pods, handoff.relabel_configs, scrape) as server):
        _wait_for_targets(server, len(running_pods), timeout_s=10 + 3 * scrape)
        echo(f"  Prometheus at {server.url} scrapes {len(running_pods)} pods every "
             f"{scrape}s")
        addresses = {p.name: p.address for p in running_pods}
        echo(f"  replaying {options.rate:g} requests/s for {options.duration_s:.0f}s")
        t0 = time.time()
        replayed = traffic.replay(bodies, addresses, options.rate, options.duration_s,
                                  seed=options.seed)
        t_end = time.time()
        echo(f"  traffic: {replayed.summary()}")
        time.sleep(scrape + 1.0)  # the last samples reach the store
        start = t0 + (options.duration_s - judged)
        points = math.floor((t_end - start) / step)
        series = collect(server, handoff, start, start + points * step, step)
    if on_series is not None:
        on_series(series)
    verdict = judge(handoff.canary_config, series, pass_=handoff.pass_score,
                    marginal=handoff.marginal_score)
    return Rehearsal(verdict=verdict, step_s=step, judged_s=judged, replay=replayed,
                     notes=notes, seconds=time.monotonic() - began)


def rehearse_release(directory: Path, options: Options, *, settings: Any, echo: Echo,
                     report: Path | None = None) -> tuple[Rehearsal, Path]:
    """`bentoship rehearse`: read the handoff, run it, judge it, write the report."""
    from pipeline.build.engine import connect
    from pipeline.models.registry import settings_client
    from pipeline.rehearse.handoff import read_handoff
    from pipeline.rehearse.report import write_report

    handoff = read_handoff(directory)
    echo(f"Rehearsing the canary of {handoff.application} from {directory}")
    client = connect()
    mlflow_client = settings_client(settings) if options.traffic is None else None
    result = rehearse(handoff, options, client=client, mlflow_client=mlflow_client, echo=echo)
    path = report or directory / "rehearsal" / "report.html"
    notes = [*result.notes, f"traffic: {result.replay.summary()}",
             (f"{len(result.verdict.metrics)} metrics judged over {result.judged_s:.0f}s at a "
             f"{result.step_s}s step, in {result.seconds:.0f}s")]
    write_report(path, result.verdict, title=f"Canary rehearsal of {handoff.application}",
                 step_s=result.step_s, notes=notes)
    (path.parent / "verdict.json").write_text(json.dumps(result.verdict.as_json(), indent=2))
    return result, path


def table(verdict: Verdict) -> str:
    """The verdict for a terminal: one line per metric, then the score."""
    from pipeline.rehearse.report import mean_text

    header = ("metric", "group", "classification", "critical", "baseline", "canary", "ratio")
    lines = [header]
    for m in verdict.metrics:
        ratio = "-" if m.effect_size is None or math.isnan(m.effect_size) else (
            f"{m.effect_size:.3f}")
        kind = m.classification + (" (fails the canary)" if m.failed_critically else "")
        lines.append((m.name, m.group, kind, "yes" if m.critical else "", mean_text(m.control),
                      mean_text(m.experiment), ratio))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in lines]
    groups = ", ".join(f"{g} {s:g}" for g, s in verdict.groups.items())
    text.append(f"verdict: {verdict.verdict.upper()}, score {verdict.score:g} "
                f"({verdict.reason}); groups: {groups}")
    return "\n".join(text)


def rehearser(options: Options, settings: Any, echo: Echo) -> Callable[[Path], Any]:
    """`release --rehearse`: rehearse the rendered folder, say what it found."""
    from pipeline.release.handoff import Rehearsed

    def run(directory: Path) -> Rehearsed:
        result, path = rehearse_release(directory, options, settings=settings, echo=echo)
        verdict = result.verdict
        echo(table(verdict))
        echo(f"report: {path}")
        return Rehearsed(
            passed=verdict.verdict == "pass",
            summary=f"{verdict.verdict}, score {verdict.score:g}: {verdict.reason}",
            report=path,
            files={"rehearsal/report.html": path,
                   "rehearsal/verdict.json": path.parent / "verdict.json"},
        )

    return run
