"""The Bento builder started early (`pipeline.build.starter.Starter`): never left running, whatever the build did."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from pipeline.build.starter import Starter


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def test_an_unused_builder_is_stopped_when_the_build_needs_no_bento(tmp_path: Path) -> None:
    before = _children()
    with Starter(tmp_path / "bentoml"):
        assert len(_children() - before) == 1  # importing BentoML meanwhile
    assert _children() - before == set()


def test_a_failing_build_leaves_no_builder_behind(tmp_path: Path) -> None:
    before = _children()
    with pytest.raises(RuntimeError), Starter(tmp_path / "bentoml"):
        raise RuntimeError("the plan refused")
    assert _children() - before == set()


def test_the_started_builder_is_taken_once_and_a_second_attempt_gets_a_new_one(
    tmp_path: Path,
) -> None:
    with Starter(tmp_path / "bentoml") as starter:
        first, second = starter.take(), starter.take()
        assert first.pid != second.pid
        for proc in (first, second):
            proc.kill()
            proc.communicate()
