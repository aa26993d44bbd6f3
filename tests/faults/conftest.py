"""Fixtures of the faults tier: the demo store, and one slow-on-request image built from it.

`slow_image` is the demo classifier behind `tests/faults/slow_hooks.py` (a request's
`delay_s` makes its model call sleep), built once per session and shared by every serving
fault test; `serving_container` starts it as `bentoship run` does, with a CPU quota and
environment of the test's choosing, and removes it afterwards.
"""

from __future__ import annotations

import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.build import smoke
from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import BuildRequest
from pipeline.identity import PORT
from pipeline.settings import Settings
from tests.stores import demo_store  # noqa: F401 - fixture

SLOW = BuildRequest(control="demo-classifier@champion", name="serving-faults",
                    hooks="tests/faults/slow_hooks.py")


@pytest.fixture(scope="session")
def slow_image(
    demo_store: Settings,  # noqa: F811 - the fixture imported above
    docker_client: Any,
    base_image: Any,
) -> Iterator[BuildResult]:
    """Built once per session (about 15 s) and removed at its end: every checkout state has a
    tag of its own, and tags of states long gone would pile up."""
    result = build(SLOW, demo_store, echo=print)
    yield result
    docker_client.images.remove(result.reference, force=True)


StartContainer = Callable[..., smoke.Running]


@pytest.fixture
def serving_container(docker_client: Any, slow_image: BuildResult) -> Iterator[StartContainer]:
    """Start the slow image read-only and non-root, wait for `/readyz`; removed at the end."""
    started: list[Any] = []

    def start(*, cpus: float = 2.0, environment: dict[str, str] | None = None) -> smoke.Running:
        container = docker_client.containers.run(
            slow_image.reference,
            detach=True,
            name=f"serving-faults-{secrets.token_hex(3)}",
            ports={f"{PORT}/tcp": ("127.0.0.1", None)},
            read_only=True,
            tmpfs=smoke.SCRATCH,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            nano_cpus=int(cpus * 1e9),
            environment=environment or {},
        )
        started.append(container)
        return wait_ready(container)

    yield start
    for container in started:
        smoke.stop(container)


def wait_ready(container: Any, deadline_s: float = 120.0) -> smoke.Running:
    began = time.monotonic()
    container.reload()
    url = f"http://127.0.0.1:{container.ports[f'{PORT}/tcp'][0]['HostPort']}"
    while time.monotonic() - began < deadline_s:
        container.reload()
        assert container.status not in ("exited", "dead"), container.logs()[-3000:]
        if status(url + "/readyz") == 200:
            return smoke.Running(container, url, time.monotonic() - began)
        time.sleep(0.3)
    raise AssertionError(f"not ready after {deadline_s}s: {container.logs()[-3000:]!r}")


def status(url: str, timeout: float = 2.0) -> int:
    """The status of GET `url` on a fresh connection; 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
