"""`--submit`: hand the rendered pipeline to Spinnaker with the `spin` CLI.

Without `--submit` the rendered files are the handoff (`spin pipeline save --file
pipeline.json` by hand). With it, `check_submit` refuses up front, before anything is built,
when `spin` is not on PATH, and `submit_pipeline` saves the pipeline once the files exist.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import ReleaseError

__all__ = ["check_submit", "submit_pipeline"]


def check_submit(submit: bool) -> None:
    """Refuse --submit up front, before anything is built, when it cannot work."""
    if submit and shutil.which("spin") is None:
        raise ReleaseError(
            "--submit needs the `spin` CLI on PATH, configured with your Spinnaker gate "
            "(~/.spin/config). Without it, hand over the rendered files: "
            "`spin pipeline save --file pipeline.json`."
        )


def submit_pipeline(files: Mapping[str, Path], submit: bool) -> tuple[bool, str]:
    """Save the pipeline with `spin` when asked; otherwise the files are the handoff.

    Returns (submitted, a note for humans); ReleaseError when `spin pipeline save` fails.
    """
    if not submit:
        return False, "not submitted (no --submit): the rendered files are the handoff"
    pipeline_file = next(p for rel, p in files.items() if rel.endswith("pipeline.json"))
    proc = subprocess.run(
        ["spin", "pipeline", "save", "--file", str(pipeline_file)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise ReleaseError(f"`spin pipeline save` failed: {proc.stderr.strip() or proc.stdout}")
    return True, "saved with `spin pipeline save`"
