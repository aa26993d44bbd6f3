"""Start a built image, wait for readiness, ask for predictions, stop it.

Used by the build (an image that fails is never tagged) and by `bentoship run` (`try_image`),
which leaves the container running for a human.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import SmokeTestError, explanation, map_exceptions
from pipeline.identity import BENTOML_HOME, CONFIG_IN_IMAGE, PORT, UID
from pipeline.progress import Echo

# Where a read-only root filesystem still needs writable scratch space (as in Kubernetes).
SCRATCH = {
    "/tmp": "rw,size=256m,mode=1777",
    BENTOML_HOME: f"rw,size=64m,uid={UID},gid={UID},mode=0700",
}


# /readyz is asked every POLL_S: a readiness found half a poll late is time every build and every
# cold-start figure pays. The engine (state, log) only every CHECK_S: its answers cost the
# engine's CPU, which the starting container needs on a small machine.
POLL_S = 0.1
CHECK_S = 0.5

# What BentoML 1.4 logs when a service worker dies while starting; it then starts a new worker, so
# the container stays up and is never ready. Only the log text is read:
# - "Initializing service error": `_bentoml_sdk/service/factory.py`, `Service.__call__`, when the
#   service class's `__init__` raises (a model that does not load);
# - "Application startup failed. Exiting.": uvicorn's lifespan (`uvicorn/lifespan/on.py`) when the
#   ASGI startup in which `_bentoml_impl/server/app.py` creates the service instance fails; the
#   worker (`_bentoml_impl/worker/service.py`) then exits and circus restarts it.
# Both go through BentoML's server log format, `<time> [ERROR] [<component>] <message>`.
WORKER_FAILED = re.compile(
    r"\[ERROR\] \[[^\]]*\] (Initializing service error|Application startup failed\. Exiting\.)"
)
# The last line of a Python traceback: `package.module.SomeError: message`, not indented.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: .+$", re.MULTILINE)


@dataclass(frozen=True)
class Running:
    container: Any
    url: str
    ready_after_s: float


@dataclass(frozen=True)
class SmokeResult:
    rows_out: list[dict[str, Any]]
    ready_after_s: float


def start(
    client: Any,
    image: str,
    *,
    host_port: int | None = None,
    host_ip: str = "127.0.0.1",
    deadline_s: float = 120.0,
    name: str | None = None,
    detach_on_success: bool = False,
    environment: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> Running:
    """Run the image read-only as its non-root user and wait for `/readyz`."""
    refused = (SmokeTestError, lambda exc: f"could not start {image}: {explanation(exc)}")
    with map_exceptions({"docker-api": refused}):
        container = client.containers.run(
            image,
            detach=True,
            name=name,
            ports={f"{PORT}/tcp": (host_ip, host_port)},
            environment=environment,
            labels=labels,
            read_only=True,
            tmpfs=SCRATCH,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
        )
    started = time.monotonic()
    try:
        container.reload()
        port = container.ports[f"{PORT}/tcp"][0]["HostPort"]
        url = f"http://{host_ip}:{port}"
        checked = float("-inf")
        while True:
            if time.monotonic() - checked >= CHECK_S:
                checked = time.monotonic()
                container.reload()
                if container.status in ("exited", "dead"):
                    raise SmokeTestError(
                        f"the container exited (code {container.attrs['State']['ExitCode']}) "
                        f"before it became ready. Last log lines:\n{_tail(container)}"
                    )
                _refuse_failed_worker(container, time.monotonic() - started)
            # A probe may block until the server listens, so it gets only the time that is left,
            # and readiness reported after the deadline still misses it.
            remaining = deadline_s - (time.monotonic() - started)
            ready = remaining > 0 and _get(f"{url}/readyz", timeout=min(2.0, remaining)) == 200
            if ready and time.monotonic() - started <= deadline_s:
                return Running(container, url, time.monotonic() - started)
            if time.monotonic() - started > deadline_s:
                raise SmokeTestError(
                    f"the container was not ready after {deadline_s:.0f}s (GET /readyz). "
                    f"Last log lines:\n{_tail(container)}"
                )
            time.sleep(POLL_S)
    except BaseException:
        stop(container)
        raise


def _refuse_failed_worker(container: Any, elapsed_s: float) -> None:
    """Raise if the container's log says a service worker failed to start (see WORKER_FAILED)."""
    try:
        log = str(container.logs().decode(errors="replace"))
    except Exception:  # noqa: BLE001 - the log is a hint; readiness and exit are still watched
        return
    failed = WORKER_FAILED.search(log)
    if failed is None:
        return
    causes = _EXCEPTION_LINE.findall(log)
    cause = f" The error: {causes[-1]}" if causes else ""
    tail = "\n".join(log.rstrip().splitlines()[-30:])
    raise SmokeTestError(
        f"the service's worker failed to start after {elapsed_s:.0f}s (BentoML logged "
        f"{failed.group(1)!r}) and BentoML restarts it, so the container would never become "
        f"ready.{cause}\nLast log lines:\n{tail}"
    )


def predict(url: str, rows: Sequence[dict[str, Any]], timeout_s: float = 30.0) -> dict[str, Any]:
    body = json.dumps({"rows": list(rows)}).encode()
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        raise SmokeTestError(
            f"POST /predict with the model's input example answered {exc.code}: "
            f"{exc.read()[:500].decode(errors='replace')}"
        ) from exc
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
        raise SmokeTestError(f"POST /predict with the model's input example failed: {exc}") from exc


def check_rows(rows_in: Sequence[dict[str, Any]], answer: dict[str, Any]) -> list[dict[str, Any]]:
    rows_out = answer.get("rows")
    if not isinstance(rows_out, list) or len(rows_out) != len(rows_in):
        raise SmokeTestError(
            f"expected {len(rows_in)} rows back for the input example, got: {str(answer)[:300]}"
        )
    for i, row in enumerate(rows_out):
        missing = {"prediction", "variant", "model_version"} - set(row)
        if missing:
            raise SmokeTestError(f"row {i} of the answer lacks {sorted(missing)}: {row}")
    return rows_out


def smoke_test(
    client: Any,
    image: str,
    rows: Sequence[dict[str, Any]],
    *,
    deadline_s: float = 120.0,
    echo: Echo = lambda _: None,
) -> SmokeResult:
    """Start `image`, post `rows`, check the answer, remove the container.

    The container is labelled with this process (OWNER_LABEL): a build killed during its smoke
    test cannot remove its container, so the next smoke test on this host removes those whose
    process is gone.
    """
    for name in remove_orphans(client):
        echo(f"  removed the container {name} of an interrupted smoke test")
    running = start(client, image, deadline_s=deadline_s, labels={OWNER_LABEL: _owner()},
                    environment=SMOKE_ENVIRONMENT)
    try:
        echo(f"  ready after {running.ready_after_s:.1f}s; posting {len(rows)} example rows")
        answer = predict(running.url, rows)
        try:
            rows_out = check_rows(rows, answer)
        except SmokeTestError as exc:
            raise SmokeTestError(f"{exc}\nLast log lines:\n{_tail(running.container)}") from None
        return SmokeResult(rows_out=rows_out, ready_after_s=running.ready_after_s)
    finally:
        stop(running.container)


# One worker: every worker runs the same code on the same models, so a second proves nothing
# more, and on a 2-core build machine two importing at once doubled the time to ready.
SMOKE_ENVIRONMENT = {"BENTOSHIP_WORKERS": "1"}
OWNER_LABEL = "io.bentoship.smoke-test.owner"  # "<host>:<pid>" of the build that started it


def _owner(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def remove_orphans(client: Any) -> list[str]:
    """Remove the smoke-test containers on this host whose build process no longer runs."""
    import docker.errors

    removed = []
    host = socket.gethostname()
    try:
        found = client.containers.list(all=True, filters={"label": OWNER_LABEL})
    except docker.errors.APIError:
        return []
    for container in found:
        owner_host, _, pid = str(container.labels.get(OWNER_LABEL, "")).rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        stop(container)
        removed.append(str(container.name))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def example_row(container: Any) -> dict[str, Any]:
    """One request row built from the examples in the image's service config: of the hook's
    declared request fields, else of the features."""
    data = read_file(container, CONFIG_IN_IMAGE)
    if data is None:
        raise SmokeTestError(f"{CONFIG_IN_IMAGE} is not in the image: not a bentoship image")
    config = json.loads(data)
    fields = (config.get("hooks") or {}).get("request") or config.get("features", [])
    return {f["name"]: f.get("example") for f in fields}


def read_file(container: Any, path: str) -> bytes | None:
    """One file out of a (created, not started) container; None when it does not exist."""
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(Path(path).name)
        return member.read() if member else None


@dataclass(frozen=True)
class Trial:
    """A container left running for a human, and its answer for the image's example row."""

    running: Running
    row: dict[str, Any]
    answer: dict[str, Any]


def try_image(
    client: Any, image: str, *, host_port: int | None = None, name: str | None = None
) -> Trial:
    """Start `image` as `start` does, post one example row and leave the container running."""
    running = start(client, image, host_port=host_port, name=name)
    try:
        row = example_row(running.container)
        return Trial(running, row, predict(running.url, [row]))
    except BaseException:
        stop(running.container)  # a container that cannot answer is not left behind
        raise


def stop(container: Any) -> None:
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def _tail(container: Any, lines: int = 30) -> str:
    try:
        return str(container.logs(tail=lines).decode(errors="replace")).rstrip()
    except Exception:  # noqa: BLE001 - the log is a courtesy; the real error is being raised
        return "(container log unavailable)"
