"""The four servers under test: how each is started, fed and read.

Every server is one worker process on 127.0.0.1 (this service: `--workers`, default 1) (BentoML's starter and MLflow's CLI wrapper
sit idle beside theirs), started in a session of its own so stopping it takes its children
too, with its output in a log file that is shown when it fails to come up. MLflow and the naive
service load a private copy of the version's downloaded artifacts (see `benchmarks/serving`).

| key | what | body |
|---|---|---|
| `bentoship` | `bentoml serve` of the Bento the pipeline builds (`services/`) | `{"rows": [...]}` |
| `mlflow` | `mlflow models serve --env-manager local -w 1` | `{"dataframe_split": ...}` |
| `naive` | `_serving/naive.py`: `bentoml.mlflow` + a DataFrame `@bentoml.api` | `{"df": [...]}` |
| `floor` | `_serving/floor.py`: Starlette + orjson + native booster on uvicorn | `{"rows": [...]}` |
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
Rows = list[dict[str, Any]]


@dataclass
class Server:
    key: str
    label: str
    predict_url: str
    ready_url: str
    process: subprocess.Popen[bytes]
    log: Path
    encode: Callable[[Rows], bytes]  # rows -> request body
    scores: Callable[[bytes], list[float]]  # response body -> one score per row

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """CPU time of the server's whole process tree so far."""
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    # The venv's bin first: `mlflow models serve` starts `uvicorn` from PATH.
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


def _start(command: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _rows_body(rows: Rows) -> bytes:
    return orjson.dumps({"rows": rows})


def _rows_scores(body: bytes) -> list[float]:
    return [row["score"] for row in orjson.loads(body)["rows"]]


def start_bentoship(bento_dir: Path, bentoml_home: Path, work: Path, *,
                    key: str = "bentoship", label: str = "this service (bentoship)",
                    workers: int = 1, env: dict[str, str] | None = None) -> Server:
    """`env`: the container's environment, e.g. `BENTOSHIP_BATCHING` (services/config.py).
    `workers` sets BENTOSHIP_WORKERS: without it the service runs one worker per CPU."""
    port = free_port()
    log = work / f"{key}.log"
    command = [str(BIN / "bentoml"), "serve", str(bento_dir), "--host", "127.0.0.1",
               "--port", str(port)]
    own = {"BENTOML_HOME": str(bentoml_home), "BENTOSHIP_WORKERS": str(workers)}
    process = _start(command, log, work, _env(**(own | (env or {}))))
    base = f"http://127.0.0.1:{port}"
    return Server(key, label, f"{base}/predict", f"{base}/readyz",
                  process, log, _rows_body, _rows_scores)


def start_mlflow(model_uri: str, work: Path) -> Server:
    port = free_port()
    log = work / "mlflow.log"
    command = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    process = _start(command, log, work, _env())

    def encode(rows: Rows) -> bytes:
        columns = list(rows[0])
        data = [[row[c] for c in columns] for row in rows]
        return orjson.dumps({"dataframe_split": {"columns": columns, "data": data}})

    def scores(body: bytes) -> list[float]:
        return [float(s) for s in orjson.loads(body)["predictions"]]

    base = f"http://127.0.0.1:{port}"
    return Server("mlflow", "`mlflow models serve`", f"{base}/invocations", f"{base}/ping",
                  process, log, encode, scores)


def import_naive_model(model_uri: str, bentoml_home: Path, work: Path) -> str:
    """`bentoml.mlflow.import_model` of the model, in a child process; returns the tag."""
    folder = work / "naive"
    folder.mkdir(exist_ok=True)
    shutil.copy(HERE / "naive.py", folder / "naive.py")
    env = _env(BENTOML_HOME=str(bentoml_home))
    proc = subprocess.run(
        [sys.executable, "naive.py", "import", "bench-naive", model_uri],
        cwd=folder, env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml.mlflow.import_model failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def start_naive(tag: str, bentoml_home: Path, work: Path) -> Server:
    port = free_port()
    log = work / "naive.log"
    folder = work / "naive"
    command = [str(BIN / "bentoml"), "serve", "naive:NaiveMlflow", "--working-dir", str(folder),
               "--host", "127.0.0.1", "--port", str(port)]
    env = _env(BENTOML_HOME=str(bentoml_home), BENTOSHIP_BENCH_NAIVE_MODEL=tag)
    process = _start(command, log, folder, env)

    def encode(rows: Rows) -> bytes:
        return orjson.dumps({"df": rows})

    def scores(body: bytes) -> list[float]:
        return [float(s) for s in orjson.loads(body)]

    base = f"http://127.0.0.1:{port}"
    return Server("naive", "naive BentoML service", f"{base}/predict", f"{base}/readyz",
                  process, log, encode, scores)


def start_floor(model_dir: Path, work: Path) -> Server:
    port = free_port()
    log = work / "floor.log"
    command = [sys.executable, str(HERE / "floor.py"), str(model_dir), str(port)]
    process = _start(command, log, work, _env())
    base = f"http://127.0.0.1:{port}"
    return Server("floor", "floor (Starlette + orjson + booster)", f"{base}/predict",
                  f"{base}/ping", process, log, _rows_body, _rows_scores)


def start_nothing(work: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """The load generator's do-nothing server (see `load.py`); returns its URL."""
    port = free_port()
    process = _start([sys.executable, str(HERE / "load.py"), str(port)], work / "nothing.log",
                     work, _env())
    return f"http://127.0.0.1:{port}/predict", process


def wait_ready(servers: list[Server], timeout: float) -> dict[str, float]:
    """Poll every server's readiness URL until 200; seconds each took from now."""
    import httpx

    started = time.monotonic()
    deadline = started + timeout
    waiting = {s.key: s for s in servers}
    took: dict[str, float] = {}
    with httpx.Client(timeout=2.0) as client:
        while waiting:
            for key, server in list(waiting.items()):
                if server.process.poll() is not None:
                    raise RuntimeError(f"{server.label} exited with {server.process.returncode} "
                                       f"before it was ready:\n{server.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(server.ready_url).status_code == 200:
                        took[key] = time.monotonic() - started
                        del waiting[key]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(s.label for s in waiting.values())
                tails = "\n\n".join(f"{s.label}:\n{s.log_tail()}" for s in waiting.values())
                raise RuntimeError(f"not ready after {timeout:.0f} s: {names}\n{tails}")
            if waiting:
                time.sleep(0.25)
    return took


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a server and every process under it: SIGTERM, then SIGKILL after ``grace`` s.

    BentoML's worker runs in a process group of its own, so signalling the session of
    `bentoml serve` is not enough when the starter dies first: the descendants are listed
    before and any that survive are killed one by one (psutil checks each pid still is
    the same process).
    """
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    _, alive = psutil.wait_procs(descendants, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
