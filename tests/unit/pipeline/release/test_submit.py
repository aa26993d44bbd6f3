"""`--submit`: the canary config is saved before the pipeline, and a refused one stops it.

`spin` itself needs a Spinnaker gate; these tests put a stand-in `spin` first on PATH that logs
its arguments and fails when told, to check what bentoship asks of it and in which order.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.config import ReleaseConfig
from pipeline.errors import ReleaseError
from pipeline.release.files import render_release
from pipeline.release.submit import submit_pipeline
from tests.unit.pipeline.release.test_release import demo_spec


def stand_in_spin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, refuse: str = "") -> Path:
    log = tmp_path / "spin.log"
    script = tmp_path / "bin" / "spin"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'case "$*" in *"{refuse or "never"}"*) echo "403 Forbidden" >&2; exit 1;; esac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def test_the_canary_config_is_saved_before_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = stand_in_spin(tmp_path, monkeypatch)
    files = render_release(demo_spec(), ReleaseConfig(), tmp_path / "release")
    submitted, note = submit_pipeline(files, True)
    assert submitted and "canary-config save" in note
    assert log.read_text().splitlines() == [
        f"canary canary-config save --file {files['canary-config.json']}",
        f"pipeline save --file {files['pipeline.json']}",
    ]


def test_a_refused_canary_config_leaves_the_pipeline_unsaved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = stand_in_spin(tmp_path, monkeypatch, refuse="canary-config")
    files = render_release(demo_spec(), ReleaseConfig(), tmp_path / "release")
    with pytest.raises(ReleaseError) as refused:
        submit_pipeline(files, True)
    message = str(refused.value)
    assert "`spin canary canary-config save` failed: 403 Forbidden" in message
    assert "the pipeline was not saved" in message
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["canary"]
