"""Before a flow touches anything: does the ledger answer, and is another release running?

`ledger_problem` asks an HTTP tracking server for `/health` with a short timeout, so a flow
that can do without the ledger (a rollback to an explicit image) says so at once instead of
waiting out MLflow's client retries. `one_at_a_time` holds `<BENTOSHIP_HOME>/release.lock`
while a release runs, so a webhook and a CI job on one machine never race.
"""

from __future__ import annotations

import fcntl
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.progress import Echo
from pipeline.settings import Settings

__all__ = ["ledger_problem", "one_at_a_time"]


def ledger_problem(settings: Settings, timeout_s: float = 3.0) -> str | None:
    """Why the ledger's MLflow server cannot be used right now, or None when it answers.

    Only an HTTP tracking server can be down; MLflow's own client would retry for minutes.
    """
    uri = settings.tracking_uri.rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    loopback = re.match(r"^http://(localhost|127\.[0-9.]+|\[::1\])(:|/|$)", uri) is not None
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
    try:
        with opener.open(f"{uri}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # something answers (a proxy without /health): let MLflow's client judge
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"the MLflow tracking server {uri} does not answer ({reason})"


@contextmanager
def one_at_a_time(settings: Settings, echo: Echo) -> Iterator[None]:
    """Hold `<home>/release.lock` while a release runs; wait for one already running."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / "release.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"Another release is running (lock {settings.home / 'release.lock'}): waiting")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
