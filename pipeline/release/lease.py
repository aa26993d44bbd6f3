"""One release per service at a time, across machines: a lease kept in the shared MLflow.

A lease is an MLflow experiment named `bentoship-lease.<service>.<generation>` (generation
zero-padded, so names sort as numbers). Acquiring it means *creating* the experiment with the
next generation number; the tags written in that same call name the holder (CI job, host, pid,
since when) and its expiry. Creating an experiment whose name exists fails with
`RESOURCE_ALREADY_EXISTS`, atomically, in both backends bentoship supports:

- the SQL store (`mlflow/store/tracking/sqlalchemy_store.py`, `create_experiment`) inserts the
  row with its tags in one transaction; the table has `UniqueConstraint("workspace", "name")`
  (`dbmodels/models.py`, `SqlExperiment`), and the `IntegrityError` becomes
  `RESOURCE_ALREADY_EXISTS`;
- `mlflow server` (`mlflow/server/handlers.py`, `_create_experiment`) hands the request to that
  same store, so every worker of every server process meets the same database constraint.

A deleted experiment keeps its name (deletion only sets `lifecycle_stage = deleted`), so a
generation number is never handed out twice. Of all generations only the newest counts:

- newest active and not expired: held; a second release waits (`--wait`), then `LeaseHeld`
  names the holder;
- newest deleted (released) or expired (its holder crashed or hung): free; the next release
  creates the next generation, and only one contender can create it;
- the holder renews `expires` every `ttl / 3` from a thread while the release runs and deletes
  its experiment on exit (SIGTERM included: a cancelled CI job lets go at once); before it records the release it renews once more and checks that its
  generation is still the newest with at least half a TTL left (`Lease.verify`), so a release
  whose lease lapsed records nothing (`LeaseLost`).

Expiry compares the holder's clock with the waiter's: the machines' clocks must agree to well
within a TTL (NTP does). Holding is re-entrant within a process and state folder: a CI flow
holds the lease and the handoff it calls finds it held.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipeline.errors import LeaseHeld, LeaseLost, ReleaseError, map_exceptions

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment

    from pipeline.settings import Settings

__all__ = ["DEFAULT_WAIT_S", "Holder", "Lease", "current", "hold"]

DEFAULT_WAIT_S = 600.0  # a release takes minutes; a CI job can afford to wait for one
PREFIX = "bentoship-lease."
_TAG = "bentoship.lease."
_DIGITS = 8
_POLL_S = 2.0

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its experiment's tags say."""

    service: str
    generation: int
    ci_job: str
    host: str
    pid: int
    since: float  # epoch seconds
    expires: float  # epoch seconds, renewed while the release runs

    def describe(self) -> str:
        who = f"CI job {self.ci_job} on host {self.host}" if self.ci_job else f"host {self.host}"
        return (f"{who} (pid {self.pid}) since {_iso(self.since)}, lease expires "
                f"{_iso(self.expires)} unless renewed")

    def tags(self) -> dict[str, str]:
        return {
            f"{_TAG}service": self.service,
            f"{_TAG}ci_job": self.ci_job,
            f"{_TAG}host": self.host,
            f"{_TAG}pid": str(self.pid),
            f"{_TAG}since": f"{self.since:.3f}",
            f"{_TAG}expires": f"{self.expires:.3f}",
            "mlflow.note.content": (
                f"bentoship release lease of {self.service}: a release is running. Deleted "
                "when it ends; expires by itself if its holder dies."
            ),
        }

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> Holder:
        tags = experiment.tags or {}
        service, generation = _parse(experiment.name)
        return cls(
            service=service,
            generation=generation,
            ci_job=tags.get(f"{_TAG}ci_job", ""),
            host=tags.get(f"{_TAG}host", "?"),
            pid=int(tags.get(f"{_TAG}pid", "0") or 0),
            since=float(tags.get(f"{_TAG}since", "0") or 0),
            expires=float(tags.get(f"{_TAG}expires", "0") or 0),
        )


@dataclass
class Lease:
    """A held lease: its experiment, and the thread that renews it."""

    client: MlflowClient
    experiment_id: str
    holder: Holder
    ttl_s: float
    _stop: threading.Event
    _thread: threading.Thread | None = None
    depth: int = 1
    lost: str = ""  # why renewing failed for good, once it did

    @property
    def name(self) -> str:
        return _name(self.holder.service, self.holder.generation)

    def renew(self) -> None:
        """Move the expiry a TTL ahead; LeaseLost when the lease is no longer ours."""
        from mlflow.exceptions import MlflowException

        expires = time.time() + self.ttl_s
        try:
            self.client.set_experiment_tag(self.experiment_id, f"{_TAG}expires", f"{expires:.3f}")
        except MlflowException as exc:
            raise LeaseLost(self._lost_message(f"renewing it failed: {exc}")) from exc
        self.holder = _with_expiry(self.holder, expires)

    def verify(self) -> None:
        """Right before recording: renew, then check the lease is the newest and not lapsing.

        LeaseLost (nothing recorded) when another release took over, the lease was deleted,
        or less than half a TTL is left (this machine's clock, or the renewals, are too late).
        """
        if self.lost:
            raise LeaseLost(self._lost_message(self.lost))
        self.renew()
        newest = _newest(self.client, self.holder.service)
        if newest is None or newest.experiment_id != self.experiment_id:
            other = Holder.from_experiment(newest) if newest is not None else None
            raise LeaseLost(self._lost_message(
                f"release lease {other and _name(other.service, other.generation)} of "
                f"{other.describe() if other else 'nobody'} replaced it"))
        if newest.lifecycle_stage != "active":
            raise LeaseLost(self._lost_message("its experiment was deleted"))
        left = Holder.from_experiment(newest).expires - time.time()
        if left < self.ttl_s / 2:
            raise LeaseLost(self._lost_message(f"only {left:.0f}s of it are left"))

    def _lost_message(self, why: str) -> str:
        return (f"this release of {self.holder.service} lost its lease {self.name} ({why}): "
                "another release may have started from the same production. Nothing was "
                "recorded; run the release again.")

    def _renew_forever(self) -> None:
        from mlflow.exceptions import MlflowException

        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseLost as exc:
                cause = exc.__cause__
                if isinstance(cause, MlflowException) and cause.error_code in (
                    "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"
                ):
                    self.lost = str(exc)  # deleted under us: no point renewing any more
                    return
                # MLflow did not answer this time; the next renewal may get through, and
                # verify() refuses to record if none did in time.

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._renew_forever, daemon=True,
                                        name=f"lease-{self.holder.service}")
        self._thread.start()

    def _release(self) -> None:
        from mlflow.exceptions import MlflowException

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.delete_experiment(self.experiment_id)
        except (MlflowException, OSError):
            pass  # it expires on its own at holder.expires


_held: dict[tuple[str, str, str], Lease] = {}
_held_lock = threading.Lock()


@contextmanager
def hold(
    settings: Settings,
    service: str,
    echo: Echo,
    *,
    wait_s: float = DEFAULT_WAIT_S,
    client: MlflowClient | None = None,
) -> Iterator[Lease]:
    """Hold the release lease of `service` for the block; wait up to `wait_s` for it.

    Raises LeaseHeld naming the holder when it is still held after `wait_s` seconds. Inside a
    block that already holds it (same process), yields the same lease again.
    """
    key = (settings.tracking_uri, str(settings.home), service)
    with _held_lock:
        held = _held.get(key)
        if held is not None:
            held.depth += 1
    if held is not None:
        try:
            yield held
        finally:
            held.depth -= 1
        return
    if client is None:
        from pipeline.models.registry import settings_client

        client = settings_client(settings)
    lease = _acquire(client, settings, service, echo, wait_s)
    with _held_lock:
        _held[key] = lease
    lease._start()
    try:
        with _terminated_as_exit():
            yield lease
    finally:
        with _held_lock:
            _held.pop(key, None)
        lease._release()


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, `docker stop`) unwinds the release, so its lease is let go.

    Python's default SIGTERM ends the process without running `finally` blocks. Only the main
    thread may set handlers; elsewhere (the webhook receiver's worker) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield  # someone chose what SIGTERM does here: leave it to them
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def current(client: MlflowClient, service: str) -> Holder | None:
    """Who holds the lease of `service` now, or None when it is free (released or expired)."""
    newest = _newest(client, service)
    if newest is None or newest.lifecycle_stage != "active":
        return None
    holder = Holder.from_experiment(newest)
    return holder if holder.expires > time.time() else None


def _acquire(
    client: MlflowClient, settings: Settings, service: str, echo: Echo, wait_s: float
) -> Lease:
    from mlflow.exceptions import MlflowException

    started = time.monotonic()
    told = 0
    while True:
        newest = _newest(client, service)
        previous = Holder.from_experiment(newest) if newest is not None else None
        now = time.time()
        if previous is not None and newest is not None and newest.lifecycle_stage == "active" \
                and previous.expires > now:
            waited = time.monotonic() - started
            if waited >= wait_s:
                raise LeaseHeld(
                    f"another release of {service} is running: {previous.describe()} "
                    f"(MLflow experiment {newest.name} at {client.tracking_uri}). Waited "
                    f"{waited:.0f}s (--wait {wait_s:g}). Run again once it has finished, or wait "
                    "longer with --wait SECONDS; if that holder has died, its lease expires "
                    f"by itself at {_iso(previous.expires)}.",
                    previous,
                )
            if told != previous.generation:
                echo(f"Another release of {service} is running ({previous.describe()}): "
                     f"waiting up to {wait_s - waited:.0f}s")
                told = previous.generation
            time.sleep(max(0.0, min(_POLL_S, wait_s - waited, previous.expires - now + 0.05)))
            continue
        generation = previous.generation + 1 if previous is not None else 1
        ttl = settings.lease_ttl_s
        holder = Holder(service=service, generation=generation, ci_job=settings.ci_job,
                        host=socket.gethostname(), pid=os.getpid(), since=now,
                        expires=now + ttl)
        location = (settings.embedded_artifact_root / PREFIX.rstrip(".")).as_uri() \
            if settings.embedded_artifact_root else None
        try:
            experiment_id = client.create_experiment(
                _name(service, generation), artifact_location=location,
                tags=holder.tags(),
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                continue  # another release created this generation first: look again
            raise ReleaseError(
                f"cannot take the release lease of {service} in {client.tracking_uri}: {exc}"
            ) from exc
        newest = _newest(client, service)
        if newest is not None and newest.experiment_id != str(experiment_id):
            # A newer generation exists (ours reused a purged number): not ours after all.
            _delete(client, str(experiment_id))
            continue
        if previous is not None and _is_active(client, service, previous.generation):
            echo(f"Took over the expired release lease of {service} from {previous.describe()}")
            _delete_generation(client, service, previous.generation)
        if told:
            echo(f"Got the release lease of {service} after waiting "
                 f"{time.monotonic() - started:.1f}s")
        return Lease(client, str(experiment_id), holder, ttl, threading.Event())


def _newest(client: MlflowClient, service: str) -> Experiment | None:
    from mlflow.entities import ViewType

    with map_exceptions({"mlflow": (ReleaseError, lambda exc: (
        f"cannot read the release lease of {service} from {client.tracking_uri}: {exc}"))}):
        found = client.search_experiments(
            view_type=ViewType.ALL, max_results=1,
            filter_string=f"name LIKE '{PREFIX}{service}.%'", order_by=["name DESC"],
        )
    return found[0] if found else None


def _is_active(client: MlflowClient, service: str, generation: int) -> bool:
    experiment = client.get_experiment_by_name(_name(service, generation))
    return experiment is not None and experiment.lifecycle_stage == "active"


def _delete_generation(client: MlflowClient, service: str, generation: int) -> None:
    experiment = client.get_experiment_by_name(_name(service, generation))
    if experiment is not None:
        _delete(client, experiment.experiment_id)


def _delete(client: MlflowClient, experiment_id: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_experiment(experiment_id)
    except MlflowException:
        pass  # already deleted by its holder


def _name(service: str, generation: int) -> str:
    return f"{PREFIX}{service}.{generation:0{_DIGITS}d}"


def _parse(name: str) -> tuple[str, int]:
    service, _, generation = name.removeprefix(PREFIX).rpartition(".")
    return service, int(generation) if generation.isdigit() else 0


def _with_expiry(holder: Holder, expires: float) -> Holder:
    from dataclasses import replace

    return replace(holder, expires=expires)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
