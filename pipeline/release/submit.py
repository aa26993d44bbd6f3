"""`--submit`: hand the rendered pipeline to Spinnaker with the `spin` CLI.

Without `--submit` the rendered files are the handoff (`spin pipeline save --file
pipeline.json` by hand). With it, `check_submit` refuses up front, before anything is built,
when `spin` is not on PATH, and `submit_pipeline` saves, once the files exist, first the canary
config the pipeline's analysis stage names (`spin canary canary-config save --file
canary-config.json`, when the release has one) and then the pipeline (`spin pipeline save
--file pipeline.json`). If the canary config is refused, the pipeline is not saved: a pipeline
whose analysis names a config Kayenta does not have fails only when it runs.
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
    """Save the canary config, then the pipeline, with `spin` when asked; otherwise the files
    are the handoff.

    Returns (submitted, a note for humans); ReleaseError when either save fails (after a failed
    canary config save the pipeline is not saved).
    """
    if not submit:
        return False, "not submitted (no --submit): the rendered files are the handoff"
    pipeline_file = next(p for rel, p in files.items() if rel.endswith("pipeline.json"))
    canary_file = files.get("canary-config.json")
    if canary_file is not None:
        _spin(["canary", "canary-config", "save", "--file", str(canary_file)],
              "Nothing else was submitted: the pipeline was not saved.")
    _spin(["pipeline", "save", "--file", str(pipeline_file)],
          "The canary config was saved already." if canary_file is not None else "")
    return True, ("saved with `spin canary canary-config save` and `spin pipeline save`"
                  if canary_file is not None else "saved with `spin pipeline save`")


def _spin(args: list[str], after_failure: str) -> None:
    proc = subprocess.run(["spin", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        what = " ".join(args[:-2])
        raise ReleaseError(
            f"`spin {what}` failed: {proc.stderr.strip() or proc.stdout.strip()}"
            + (f" {after_failure}" if after_failure else "")
        )
