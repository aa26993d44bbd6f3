"""How the service runs: worker count from the cgroup, the serving knobs from bentoship.json and
the environment, and the bounded model-call pool with its deadline (real threads)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from services.calls import ModelCalls
from services.config import CONFIG_FILENAME, load_config
from services.cpus import available_cpus, cgroup_quota
from services.errors import ConfigError, ModelTimeoutError, OverloadedError

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    assert cgroup_quota(cgroup(tmp_path, files)) == quota


def test_workers_follow_the_quota_rounded_up_within_the_affinity_set(tmp_path: Path) -> None:
    assert available_cpus(cgroup(tmp_path / "a", {"cpu.max": "50000 100000"})) == 1
    assert available_cpus(cgroup(tmp_path / "b", {"cpu.max": "max 100000"})) == AFFINITY
    assert available_cpus(cgroup(tmp_path / "c", {"cpu.max": "6400000 100000"})) == AFFINITY
    if AFFINITY >= 2:
        assert available_cpus(cgroup(tmp_path / "d", {"cpu.max": "150000 100000"})) == 2


def write_config(tmp_path: Path, config_data: dict[str, Any], **serving: Any) -> Path:
    path = tmp_path / CONFIG_FILENAME
    path.write_text(json.dumps({**config_data, **({"serving": serving} if serving else {})}))
    return path


def test_serving_defaults_and_environment_overrides(
    tmp_path: Path, config_data: dict[str, Any]
) -> None:
    path = write_config(tmp_path, config_data, max_model_calls=4)
    config = load_config(path, environ={})
    assert (config.serving.workers, config.serving.model_timeout_s,
            config.serving.max_model_calls) == (None, 10.0, 4)
    env = {"BENTOSHIP_WORKERS": "3", "BENTOSHIP_MODEL_TIMEOUT_S": "2.5",
           "BENTOSHIP_MAX_MODEL_CALLS": ""}
    config = load_config(path, environ=env)
    assert (config.serving.workers, config.serving.model_timeout_s,
            config.serving.max_model_calls) == (3, 2.5, 4)


def test_a_bad_environment_value_names_the_variable(
    tmp_path: Path, config_data: dict[str, Any]
) -> None:
    path = write_config(tmp_path, config_data)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"BENTOSHIP_WORKERS": "0", "BENTOSHIP_MODEL_TIMEOUT_S": "soon"})
    message = str(info.value)
    assert "BENTOSHIP_WORKERS='0'" in message and "greater than or equal to 1" in message
    assert "BENTOSHIP_MODEL_TIMEOUT_S='soon'" in message


def test_a_call_past_its_deadline_is_model_timeout_and_holds_its_slot() -> None:
    calls = ModelCalls(limit=2, timeout_s=0.2)
    release = threading.Event()

    async def scenario() -> list[Any]:
        results: list[Any] = []
        for call in (lambda: release.wait(30), lambda: 42):
            try:
                results.append(await calls.run(call))
            except (ModelTimeoutError, OverloadedError) as exc:
                results.append(exc)
        return results

    stuck, answered = asyncio.run(scenario())
    assert isinstance(stuck, ModelTimeoutError) and stuck.code == "model_timeout"
    assert (stuck.status, stuck.cause) == (503, "server")
    assert answered == 42
    assert calls.busy == 1  # the stuck thread still holds its slot
    release.set()


def test_when_every_slot_is_stuck_the_next_call_is_overloaded_at_once() -> None:
    calls = ModelCalls(limit=2, timeout_s=0.2)
    release = threading.Event()

    async def scenario() -> list[BaseException | object]:
        stuck = [calls.run(release.wait, 30) for _ in range(2)]
        outcomes = await asyncio.gather(*stuck, return_exceptions=True)
        try:
            await calls.run(lambda: 1)
        except OverloadedError as exc:
            return [*outcomes, exc]
        return [*outcomes, None]

    *timeouts, refused = asyncio.run(scenario())
    assert all(isinstance(t, ModelTimeoutError) for t in timeouts)
    assert isinstance(refused, OverloadedError)
    assert refused.to_body()["error"] == "overloaded" and refused.status == 503
    release.set()
    for _ in range(100):
        if calls.busy == 0:
            break
        threading.Event().wait(0.02)
    assert calls.busy == 0
    assert asyncio.run(calls.run(lambda: "free again")) == "free again"
