"""The README's "Try it" commands, exactly as written, against the demo A/B image.

The shell block is read from README.md (only the address is pointed at the container), so the
README cannot drift from what the service answers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.build import smoke
from pipeline.build.builder import BuildResult

pytestmark = [pytest.mark.docker, pytest.mark.slow]
README = Path(__file__).resolve().parents[2] / "README.md"


def try_it_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("Try it", 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert found is not None, "README.md has no bash block after 'Try it'"
    return found.group(1)


def test_the_readme_try_it_pipeline_answers_a_prediction(
    ab_build: BuildResult, docker_client: Any
) -> None:
    assert shutil.which("curl"), "the README's commands need curl"
    block = try_it_block()
    assert "localhost:3000" in block
    running = smoke.start(docker_client, ab_build.reference)
    try:
        script = block.replace("localhost:3000", running.url.removeprefix("http://"))
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        smoke.stop(running.container)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["rows"]
    assert row["prediction"] in (0, 1) and row["variant"] in ("control", "treatment")
    assert set(row["probabilities"]) == {"0", "1"}
    assert row["score"] == pytest.approx(row["probabilities"]["1"])
