"""The release lease on a real SQLite MLflow store, in one process: held, waited for, lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.errors import LeaseHeld, LeaseLost
from pipeline.models.registry import settings_client
from pipeline.release import lease
from pipeline.settings import Settings, load_settings


def _settings(home: Path, db: Path, **env: str) -> Settings:
    return load_settings({"BENTOSHIP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
                          **env})


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


def test_a_second_holder_waits_then_is_told_who_holds_it(tmp_path: Path, shared: Path) -> None:
    first = _settings(tmp_path / "a", shared, BENTOSHIP_CI_JOB="https://ci.example/job/41")
    second = _settings(tmp_path / "b", shared)
    said: list[str] = []
    with lease.hold(first, "demo-classifier", said.append) as held:
        started = time.monotonic()
        with (
            pytest.raises(LeaseHeld) as refused,
            lease.hold(second, "demo-classifier", said.append, wait_s=1.0,
                       client=settings_client(second)),
        ):
            pass
        waited = time.monotonic() - started
        assert held.holder.generation == 1
    message = str(refused.value)
    assert "another release of demo-classifier is running" in message
    assert "CI job https://ci.example/job/41" in message and "since 20" in message
    assert "expires" in message and "--wait" in message
    assert 1.0 <= waited < 5.0
    assert any("waiting up to" in line for line in said)
    assert lease.current(settings_client(second), "demo-classifier") is None  # released on exit


def test_holding_is_reentrant_and_other_services_are_independent(
    tmp_path: Path, shared: Path
) -> None:
    settings = _settings(tmp_path / "a", shared)
    with lease.hold(settings, "one", print) as outer:
        with lease.hold(settings, "one", print) as inner:
            assert inner is outer
        with lease.hold(settings, "two", print, wait_s=0) as other:
            assert other.holder.service == "two"
        assert lease.current(settings_client(settings), "one") is not None


def test_an_expired_lease_is_taken_over_and_its_holder_cannot_record(
    tmp_path: Path, shared: Path
) -> None:
    stalled = _settings(tmp_path / "a", shared, BENTOSHIP_LEASE_TTL="3")
    later = _settings(tmp_path / "b", shared, BENTOSHIP_LEASE_TTL="3")
    client = settings_client(stalled)
    said: list[str] = []
    # A holder that stops renewing (a hung machine): acquired without its renewal thread.
    old = lease._acquire(client, stalled, "svc", print, 0)
    with lease.hold(later, "svc", said.append, wait_s=10, client=settings_client(later)) as new:
        assert new.holder.generation == old.holder.generation + 1
        assert any("Took over the expired release lease of svc" in line for line in said)
        with pytest.raises(LeaseLost) as lost:
            old.verify()
        assert "Nothing was recorded" in str(lost.value)
        new.verify()  # the new holder may record
