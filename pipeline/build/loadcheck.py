"""Every model loaded and scored by the service's own code, before the image is built.

A model the service cannot load (an XGBoost model inside a scikit-learn `Pipeline` saved with
skops: its non-sklearn types are refused unless trusted by name) would otherwise be found only
inside the container, after the smoke test's readiness deadline. `check_models` runs, in a
child process, what the image's worker runs in `__init__`, on the build context's copy of
`services/`:

1. the team's hook module, if any (`services.hooks.load_hooks`): what it declares;
2. `services.loading.load_model` on each variant, with the build's features, pickle decision
   and trusted types, checked on the input example: what each model answers (its task and
   classes, or its number of targets), found from the model itself;
3. when every variant loaded and they answer the same thing, the service's configuration
   completed with that output and the hooks is validated, and each variant's input example
   and the warm-up row go through `services.predictor.Predictor` (hooks included).

The caller gets the output and the hook declarations it writes into `bentoship.json`. A
refusal is an `ArtifactError` naming the variant, the version and the loader's own words,
before anything is built; control and treatment answering differently (task or classes)
is one too, naming both.

The child runs isolated (`python -I`) with no environment beyond `PATH` and the locale, so no
credentials of this machine reach a model's code. A module the model needs but this machine
lacks is not a refusal: the image may install it, and the smoke test loads the model there;
but then its output cannot be known here and the build says so.
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
from pipeline.errors import ArtifactError, ConfigError, ImageBuildError
from pipeline.progress import Echo

TIMEOUT_S = 300.0
_REPORT = "LOADCHECK="

_SCRIPT = """
import gc, json, os, sys
gc.disable()  # a child of seconds: collections only slowed its imports (~12%)
args = json.loads(sys.stdin.read())
sys.path.insert(0, args["context"])
from services.config import ServiceConfig
from services.errors import ServiceError
from services.hooks import load_hooks
from services.json_schema import example_request_row
from services.loading import import_loaders, load_model
from services.predictor import Predictor
from services.schema import RowSchema, validate

def report(kind, **fields):
    print(args["marker"] + json.dumps({"kind": kind, **fields}), flush=True)

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

config = dict(args["config"])
hooks = None
if args["hooks_module"]:
    try:
        found = load_hooks(args["hooks_module"])
    except Exception as exc:
        report("hooks", **failure("hooks", exc))
        sys.exit(0)
    hooks = {"module": args["hooks_module"], "preprocess": found.preprocess is not None,
             "postprocess": found.postprocess is not None,
             "request": [c.model_dump() for c in found.request],
             "response": [c.model_dump() for c in found.response]}
    report("hooks", ok=True, hooks=hooks)
features = config["features"]
schema = RowSchema(tuple(f["name"] for f in features), tuple(f["type"] for f in features),
                   tuple(f["required"] for f in features), None, 1)
example = validate({"rows": [{f["name"]: f["example"] for f in features}]}, schema).matrix
models = {}
import_loaders({v["flavor"] for v in config["variants"]}, hooks=bool(args["hooks_module"]))
for variant in config["variants"]:
    name = variant["name"]
    try:
        models[name] = load_model(args["models"][name], schema.names, schema.types,
                                  allow_pickle=config["allow_pickle"],
                                  trusted_types=config["trusted_types"], example=example)
    except Exception as exc:
        report("variant", variant=name, **failure("load", exc))
        continue
    out = models[name].output
    report("variant", variant=name, ok=True, loader=models[name].loader,
           output={"task": out.task, "classes": list(out.classes), "targets": out.targets})
outputs = {json.dumps(m.output.__dict__, sort_keys=True, default=list) for m in models.values()}
if len(models) == len(config["variants"]) and len(outputs) == 1:
    first = next(iter(models.values())).output
    names = args["target_names"] if len(args["target_names"]) == first.targets > 1 else []
    config["output"] = {"task": first.task, "classes": list(first.classes),
                        "targets": first.targets, "target_names": names}
    config["hooks"] = hooks
    try:
        predictor = Predictor.from_config(ServiceConfig.model_validate(config), models)
    except Exception as exc:
        report("service", **failure("config", exc))
        sys.exit(0)
    report("service", ok=True, output=config["output"])
    examples = args["examples"]
    if hooks and hooks["request"]:  # callers send the hook's fields, not the features
        examples = {n: [example_request_row(predictor.config)] for n in examples}
    for variant in config["variants"]:
        name = variant["name"]
        try:
            rows = predictor.predict_parsed({"rows": examples[name]}, override=name).rows
            predictor.predict_parsed({"rows": [example_request_row(predictor.config)]},
                                     override=name)
        except Exception as exc:
            report("scored", variant=name, **failure("score", exc))
        else:
            report("scored", variant=name, ok=True, rows=len(rows))
# Every report is flushed. Python's own shutdown after importing the models' libraries takes
# ~0.5 s (unloading scikit-learn, skops, XGBoost...), which the build would wait for.
os._exit(0)
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
    output: dict[str, Any] | None = None  # task, classes, targets (when loaded)

    def describe(self) -> str:
        """The failure in the user's terms: variant, version, the loader's words, what to do."""
        mv = self.info.version
        said = self.message.replace(str(self.info.path), mv.uri)
        if self.stage == "load":
            head = f"{self.info.variant} model {mv} cannot be loaded by the service"
        else:
            head = f"{self.info.variant} model {mv} loaded but failed on its input example"
        if self.code == "unsafe_model_refused":
            todo = ("Trust the named types with --trust-type only if you know their code, or "
                    "build with --allow-pickle only if you trust where this model comes from; "
                    "otherwise log it in a format the service loads natively.")
        elif self.stage == "load":
            todo = "Register a version of the model that the service can load."
        else:
            todo = ("Check the model's predictions on its input example and register a version "
                    "that scores it.")
        return f"{head}, so its image would never become ready:\n  {said}\n  {todo}"


@dataclass(frozen=True)
class Checked:
    """What the check found: each variant's verdict, what the service will answer, the hooks."""

    verdicts: list[Verdict]
    output: dict[str, Any]  # services.config.Output
    hooks: dict[str, Any] | None  # services.config.HookConfig
    examples: list[dict[str, Any]]  # the rows the smoke test sends (request rows)


def check_models(
    infos: Sequence[ModelInfo],
    context: Path,
    config: dict[str, Any],
    echo: Echo = lambda _: None,
    *,
    hooks_module: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Checked:
    """Load and score every model with the service's code in `context` (a build context), for
    the service `config` (without its `output` and `hooks`: this finds them).

    Raises `ArtifactError` when a model cannot be loaded or scored, or when control and
    treatment answer differently; `ConfigError` when the hook module is unusable;
    `ImageBuildError` when the service's code fails otherwise.
    """
    by_variant = {i.variant: i for i in infos}
    args = {
        "context": str(context.resolve()),
        "marker": _REPORT,
        "config": config,
        "hooks_module": hooks_module,
        "models": {i.variant: str(i.path) for i in infos},
        "examples": {i.variant: list(i.example_rows) for i in infos},
        "target_names": list(infos[0].output_names),
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
    reports = [json.loads(line.removeprefix(_REPORT)) for line in proc.stdout.splitlines()
               if line.startswith(_REPORT)]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        by_kind.setdefault(r.pop("kind"), []).append(r)
    hooks_report = _first(by_kind, "hooks")
    if hooks_report is not None and not hooks_report["ok"]:
        raise ConfigError(f"the hook module {hooks_module!r} cannot be used: "
                          f"{hooks_report['message']}")
    loaded = {r["variant"]: r for r in by_kind.get("variant", [])}
    scored = {r["variant"]: r for r in by_kind.get("scored", [])}
    verdicts = [_verdict(by_variant[name], loaded[name], scored.get(name))
                for name in by_variant if name in loaded]
    refused = [v for v in verdicts if not v.ok and v.missing is None]
    if refused:
        raise ArtifactError("\n".join(v.describe() for v in refused) + "\nNothing was built.")
    lacking = [v for v in verdicts if not v.ok]
    if lacking:
        which = "; ".join(f"{v.info.variant} {v.info.version} needs the module {v.missing!r}"
                          for v in lacking)
        raise ArtifactError(f"{which}, which this machine lacks, so what the model answers "
                            "(its task and classes) cannot be found before the image is built. "
                            "Install it here, or log the model in a format the service loads "
                            "natively.")
    _check_agreement(verdicts)
    service = _first(by_kind, "service")
    if service is not None and not service["ok"]:
        raise ConfigError(f"the service's configuration is invalid: {service['message']}")
    if proc.returncode != 0 or service is None or len(verdicts) < len(infos):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ImageBuildError(f"checking the models with the service's code failed (exit "
                              f"{proc.returncode}); nothing was built:\n{tail}")
    for v in verdicts:
        echo(f"{v.info.variant} {v.info.version}: loaded with {v.loader}, answers "
             f"{_describe(v.output)}; scored its {v.rows} example rows")
    hooks = hooks_report["hooks"] if hooks_report is not None else None
    examples = list(infos[0].example_rows)
    if hooks is not None and hooks["request"]:
        examples = [{c["name"]: _example(c) for c in hooks["request"]}]
    return Checked(verdicts, service["output"], hooks, examples)


def _first(by_kind: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any] | None:
    found = by_kind.get(kind)
    return found[0] if found else None


def _example(column: dict[str, Any]) -> Any:
    from services.json_schema import example_value

    return example_value(column["type"], column["example"])


def _check_agreement(verdicts: Sequence[Verdict]) -> None:
    """Control and treatment answer the same thing (task, classes, targets), or refuse."""
    if len(verdicts) < 2:
        return
    control, *others = verdicts
    for other in others:
        if other.output != control.output:
            raise ArtifactError(
                f"{control.info.variant} {control.info.version} answers "
                f"{_describe(control.output)} but {other.info.variant} {other.info.version} "
                f"answers {_describe(other.output)}: one service answers one way, so they "
                "cannot be A/B tested in it. Nothing was built."
            )


def _describe(output: dict[str, Any] | None) -> str:
    if output is None:
        return "nothing"
    if output["task"] == "classification":
        return f"classification with classes {output['classes']}"
    return f"regression with {output['targets']} target(s)"


def _verdict(info: ModelInfo, loaded: dict[str, Any], scored: dict[str, Any] | None) -> Verdict:
    fields = {k: v for k, v in loaded.items() if k != "variant"}
    if fields.get("ok") and scored is not None:
        if scored.get("ok"):
            fields["rows"] = scored["rows"]
        else:
            fields.update({k: v for k, v in scored.items() if k not in ("variant",)})
    return Verdict(info=info, **fields)
