"""Every model loaded and scored by the service's own code, before the image is built.

A model the service cannot load (an XGBoost model inside a scikit-learn `Pipeline` saved with
skops: its non-sklearn types are refused) would otherwise be found only inside the container,
after the smoke test's readiness deadline. `check_models` runs, in a child process, what the
image's worker runs in `__init__`: `services.loading.load_model` on each variant with the
build's `bentoship.json` (so the same `allow_pickle`), then each variant's input example and
the warm-up row through `services.predictor.Predictor`. A refusal is an `ArtifactError` naming
the variant, the version and the loader's own words, before anything is built.

The child imports `services` from the build context (the copy the image gets), runs isolated
(`python -I`) with no environment beyond `PATH` and the locale, so no credentials of this
machine reach a model's code. A module the model needs but this machine lacks is not a
refusal: the image may install it, and the smoke test loads the model there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.build.bento import ModelInfo
from pipeline.errors import ArtifactError, ImageBuildError
from pipeline.progress import Echo

TIMEOUT_S = 300.0
_REPORT = "LOADCHECK="

_SCRIPT = """
import json, sys
args = json.loads(sys.stdin.read())
sys.path.insert(0, args["context"])
from pathlib import Path
from services.config import CONFIG_FILENAME, load_config
from services.errors import ServiceError
from services.json_schema import example_row
from services.loading import load_model
from services.predictor import Predictor

def report(variant, **fields):
    print(args["marker"] + json.dumps({"variant": variant, **fields}), flush=True)

def failure(stage, exc):
    missing, seen = None, exc
    while seen is not None and missing is None:
        missing = seen.name if isinstance(seen, ModuleNotFoundError) else None
        seen = seen.__cause__ or seen.__context__
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ServiceError):
        extra = [p["problem"] for p in exc.detail if p["problem"] != message]
        message = "; ".join([message, *extra])
    else:
        message = type(exc).__name__ + ": " + message
    code = getattr(exc, "code", type(exc).__name__)
    return {"ok": False, "stage": stage, "code": code, "message": message, "missing": missing}

config = load_config(Path(args["context"]) / "services" / CONFIG_FILENAME)
types = tuple(f.type for f in config.features)
models = {}
for variant in config.variants:
    try:
        models[variant.name] = load_model(args["models"][variant.name], config.feature_names,
                                          types, allow_pickle=config.allow_pickle)
    except Exception as exc:
        report(variant.name, **failure("load", exc))
if len(models) < len(config.variants):  # no predictor without every variant: not scored
    for name, model in models.items():
        report(name, ok=True, loader=model.loader, rows=0)
else:
    predictor = Predictor.from_config(config, models)
    for variant in config.variants:
        try:
            rows = predictor.predict_parsed({"rows": args["examples"][variant.name]},
                                            override=variant.name).rows
            predictor.predict_parsed({"rows": [example_row(config)]}, override=variant.name)
        except Exception as exc:
            report(variant.name, **failure("score", exc))
        else:
            report(variant.name, ok=True, loader=models[variant.name].loader, rows=len(rows))
"""


@dataclass(frozen=True)
class Verdict:
    """What the service's code said about one variant's model."""

    info: ModelInfo
    ok: bool
    stage: str = ""  # "load" | "score" when not ok
    code: str = ""  # the service's error code, or the exception's type
    message: str = ""
    loader: str = ""
    rows: int = 0
    missing: str | None = None  # a module this machine lacks

    def describe(self) -> str:
        """The failure in the user's terms: variant, version, the loader's words, what to do."""
        mv = self.info.version
        said = self.message.replace(str(self.info.path), mv.uri)
        if self.stage == "load":
            head = f"{self.info.variant} model {mv} cannot be loaded by the service"
        else:
            head = f"{self.info.variant} model {mv} loaded but failed on its input example"
        if self.code == "unsafe_model_refused":
            todo = ("Build with --allow-pickle only if you trust where this model comes from; "
                    "otherwise log it in a format the service loads natively.")
        elif self.stage == "load":
            todo = "Register a version of the model that the service can load."
        else:
            todo = ("Check the model's predictions on its input example and register a version "
                    "that scores it.")
        return f"{head}, so its image would never become ready:\n  {said}\n  {todo}"


def check_models(
    infos: Sequence[ModelInfo],
    context: Path,
    echo: Echo = lambda _: None,
    *,
    timeout_s: float = TIMEOUT_S,
) -> list[Verdict]:
    """Load and score every model with the service's code in `context` (a build context).

    Raises `ArtifactError` when a model cannot be loaded or scored; returns each variant's
    verdict otherwise (a model needing a module this machine lacks is reported, not refused).
    `ImageBuildError` when the service's code fails before any model (e.g. its config).
    """
    by_variant = {i.variant: i for i in infos}
    args = {
        "context": str(context.resolve()),
        "marker": _REPORT,
        "models": {i.variant: str(i.path) for i in infos},
        "examples": {i.variant: list(i.example_rows) for i in infos},
    }
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    try:
        with tempfile.TemporaryDirectory(prefix="bentoship-loadcheck-") as home:
            # -I: no PYTHON* variables, no user site; -B: no __pycache__ in the build context.
            proc = subprocess.run(
                [sys.executable, "-I", "-B", "-c", _SCRIPT], input=json.dumps(args), cwd=home,
                env={**env, "HOME": home}, capture_output=True, text=True, timeout=timeout_s,
                check=False,
            )
    except subprocess.TimeoutExpired:
        which = ", ".join(f"{i.variant} {i.version}" for i in infos)
        raise ArtifactError(
            f"loading {which} with the service's loader did not finish within {timeout_s:.0f}s; "
            "nothing was built"
        ) from None
    verdicts = [_verdict(by_variant, line) for line in proc.stdout.splitlines()
                if line.startswith(_REPORT)]
    refused = [v for v in verdicts if not v.ok and v.missing is None]
    if refused:
        raise ArtifactError("\n".join(v.describe() for v in refused) + "\nNothing was built.")
    if proc.returncode != 0 or len(verdicts) < len(infos):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ImageBuildError(f"checking the models with the service's code failed (exit "
                              f"{proc.returncode}); nothing was built:\n{tail}")
    for v in verdicts:
        if v.ok:
            scored = f"scored its {v.rows} example rows" if v.rows else "not scored"
            echo(f"{v.info.variant} {v.info.version}: loaded with {v.loader}, {scored}")
        else:
            echo(f"{v.info.variant} {v.info.version}: not checked here, this machine lacks the "
                 f"module {v.missing!r} (the smoke test loads it in the image)")
    return verdicts


def _verdict(by_variant: dict[str, ModelInfo], line: str) -> Verdict:
    fields: dict[str, Any] = json.loads(line.removeprefix(_REPORT))
    info = by_variant[fields.pop("variant")]
    return Verdict(info=info, **fields)
