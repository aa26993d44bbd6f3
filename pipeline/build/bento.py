"""From downloaded MLflow models to a Bento: BentoML store import and the service build.

Each model version becomes the BentoML model `<name>:v<version>` holding the unchanged MLflow
model directory under `mlflow_model/` (docs/contracts.md, contract 1). The service template in
`services/` is copied into a build context with its configuration, `services/bentoship.json`,
derived from the models' signatures; `bentoml.bentos.build` then makes the Bento.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.build.starter import Starter, kill
from pipeline.errors import ArtifactError, ConfigError, ImageBuildError
from pipeline.models.registry import ModelVersion
from pipeline.progress import Echo

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICE_IMPORT = "services.service:Bentoship"
# What of the service template never goes into a Bento (nor into a copy's code version).
TEMPLATE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "bentoship.json", "requirements.*")
# Flavors the service loads without mlflow.pyfunc (and therefore without pickle).
NATIVE_FLAVORS = ("xgboost", "lightgbm", "onnx", "sklearn")
# Where a hook file named by path goes in the build context, and the module it becomes.
HOOKS_FILE = "team_hooks.py"
HOOKS_MODULE = "services.team_hooks"


@dataclass(frozen=True)
class ModelInfo:
    """One model version, downloaded and inspected, ready to be imported."""

    variant: str  # "control" | "treatment"
    version: ModelVersion
    path: Path  # the MLflow model directory
    flavor: str  # "xgboost" | "sklearn" | "python_function"
    features: tuple[dict[str, Any], ...]  # MLflow column specs: name, type, required
    example_rows: tuple[dict[str, Any], ...]
    manifest_sha256: str
    output_names: tuple[str, ...] = ()  # the output signature's column names, if it has any

    @property
    def bento_tag(self) -> str:
        return f"{bento_name(self.version.name)}:v{self.version.version}"


def bento_name(registered_name: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]", "-", registered_name.lower()).strip("-._")
    if not name:
        raise ConfigError(f"cannot make a BentoML model name from {registered_name!r}")
    return name


def service_name(registered_name: str) -> str:
    """The service a registered model deploys as by default: a DNS label, also the image name."""
    return bento_name(registered_name).replace("_", "-").replace(".", "-")


def inspect_model(variant: str, mv: ModelVersion, path: Path, manifest_sha256: str) -> ModelInfo:
    """Read flavor, signature and input example from the MLmodel file; explain what is missing."""
    try:
        mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ArtifactError(f"{mv}: cannot read its MLmodel file: {exc}") from exc
    flavors = mlmodel.get("flavors") or {}
    lgb = flavors.get("lightgbm") or {}
    if lgb:  # the loader's module imports numpy: ~80 ms of every build's start otherwise
        from services.flavors import lightgbm as lightgbm_flavor
    if "xgboost" in flavors:
        flavor = "xgboost"
    elif lgb and (lightgbm_flavor.handles(lgb) or lgb.get("serialization_format") == "skops"):
        flavor = "lightgbm"
    elif "onnx" in flavors:
        flavor = "onnx"
    elif "sklearn" in flavors and flavors["sklearn"].get("serialization_format") == "skops":
        flavor = "sklearn"
    elif "python_function" in flavors:
        flavor = "python_function"
    else:
        raise ArtifactError(f"{mv}: no flavor bentoship can serve (found {sorted(flavors)})")

    signature = mlmodel.get("signature") or {}
    if not signature.get("inputs"):
        raise ArtifactError(
            f"{mv} was logged without a signature: the service's typed API is derived from it. "
            "Log the model with `signature=infer_signature(X, y)`."
        )
    inputs = json.loads(signature["inputs"])
    if any("name" not in col or col.get("type") == "tensor" for col in inputs):
        raise ArtifactError(
            f"{mv} has a tensor-based signature; bentoship serves models with named columns"
        )
    features = tuple(
        {"name": c["name"], "type": c["type"], "required": c.get("required", True)} for c in inputs
    )
    return ModelInfo(
        variant=variant,
        version=mv,
        path=path,
        flavor=flavor,
        features=features,
        example_rows=_example_rows(mv, path, mlmodel),
        manifest_sha256=manifest_sha256,
        output_names=_output_names(signature),
    )


def _output_names(signature: dict[str, Any]) -> tuple[str, ...]:
    raw = signature.get("outputs")
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(specs, list) or not all(isinstance(c, dict) and "name" in c for c in specs):
        return ()
    return tuple(str(c["name"]) for c in specs)


def _example_rows(mv: ModelVersion, path: Path, mlmodel: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    info = mlmodel.get("saved_input_example_info") or {}
    example_file = path / info.get("artifact_path", "input_example.json")
    if not example_file.is_file():
        raise ArtifactError(
            f"{mv} was logged without an input example: the build's smoke test and the API "
            "documentation use it. Log the model with `input_example=X.head()`."
        )
    data = json.loads(example_file.read_text())
    if isinstance(data, dict) and "columns" in data and "data" in data:
        return tuple(dict(zip(data["columns"], row)) for row in data["data"])
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return tuple(data)
    raise ArtifactError(f"{mv}: input example in {example_file.name} is not a table of rows")


def check_compatible(models: Sequence[ModelInfo]) -> None:
    """Control and treatment answer the same API, so their input columns must agree."""
    control, *others = models
    want = {f["name"]: f["type"] for f in control.features}
    for other in others:
        have = {f["name"]: f["type"] for f in other.features}
        if have == want:
            continue
        diffs = [f"{n}: {want.get(n, 'absent')} vs {have.get(n, 'absent')}"
                 for n in sorted(want.keys() | have.keys()) if want.get(n) != have.get(n)]
        raise ConfigError(
            f"{control.version} and {other.version} take different input columns, so they cannot "
            f"share one API: {'; '.join(diffs[:10])}"
        )


def write_context(dest: Path, services_dir: Path | None = None,
                  hooks_file: Path | None = None) -> Path:
    """Copy the service template into `dest` (its configuration comes later: `write_config`).

    The template is the checkout's `services/`, or `services_dir` when given (a copy of it).
    A team's hook file named by path goes in as `services/team_hooks.py`.
    """
    target = dest / "services"
    shutil.copytree(services_dir or SERVICES_DIR, target, ignore=TEMPLATE_IGNORE)
    if hooks_file is not None:
        shutil.copyfile(hooks_file, target / HOOKS_FILE)
    return dest


def write_config(context: Path, config: dict[str, Any]) -> None:
    """Validate the service's configuration and write it as `services/bentoship.json`."""
    from services.config import ServiceConfig

    validated = ServiceConfig.model_validate(config)
    (context / "services" / "bentoship.json").write_text(validated.model_dump_json(indent=2))


def model_metadata(info: ModelInfo) -> dict[str, str]:
    return {
        "registered_name": info.version.name,
        "version": info.version.version,
        "run_id": info.version.run_id,
        "source": info.version.uri,
        "flavor": info.flavor,
        "manifest_sha256": info.manifest_sha256,
    }


def make_bento(
    infos: Sequence[ModelInfo],
    context: Path,
    name: str,
    version: str,
    labels: dict[str, str],
    bentoml_home: Path,
    echo: Echo = lambda _: None,
    starter: Starter | None = None,
) -> Path:
    """Import the models into the BentoML store, build the Bento and export it with its models.

    Returns the exported folder (`bento.yaml`, `src/`, `models/<name>/<version>/`), next to
    `context`.

    An identical earlier import (same metadata: run id and manifest) is reused; a model with
    the same tag but other content is replaced. Each model the exported Bento holds must hash
    to its verified manifest digest: a store copy that does not (changed on disk) is imported
    again from the verified artifacts, so the image never gets it.

    Runs in a child process whose working directory is the build context: BentoML imports the
    service module to find its models, and it must import the context's copy (with its
    `bentoship.json`), not the template this process may have imported; and BentoML fixes its
    store location once per process.
    """
    replace: set[str] = set()
    starter = starter or Starter(bentoml_home)
    while True:
        bento_path = _run_build(infos, context, name, version, labels,
                                starter.take(), echo, replace)
        spoiled = {i.bento_tag for i in infos
                   if _exported_digest(bento_path, i) != i.manifest_sha256}
        if not spoiled:
            return bento_path
        if spoiled <= replace:  # imported afresh from verified artifacts, and still different
            raise ArtifactError(f"the models {', '.join(sorted(spoiled))} in the Bento do not "
                                "match their verified artifacts; nothing was built")
        echo(f"{', '.join(sorted(spoiled))}: the BentoML store's copy does not match the "
             "verified artifacts: importing again")
        replace |= spoiled


def _exported_digest(bento_path: Path, info: ModelInfo) -> str:
    """The manifest digest of a model as the exported Bento holds it (what the image gets)."""
    from pipeline.models import integrity

    name, tag_version = info.bento_tag.split(":", 1)
    model_dir = bento_path / "models" / name / tag_version / "mlflow_model"
    return integrity.digest(integrity.manifest(model_dir)) if model_dir.is_dir() else ""


def _run_build(
    infos: Sequence[ModelInfo], context: Path, name: str, version: str,
    labels: dict[str, str], proc: subprocess.Popen[str], echo: Echo, replace: set[str],
) -> Path:
    args = {
        "cwd": str(context), "tag": f"{name}:{version}", "service": SERVICE_IMPORT, "name": name,
        "version": version, "labels": labels, "export_to": str(context.parent / "bento"),
        "models": [{"tag": i.bento_tag, "path": str(i.path), "metadata": model_metadata(i),
                    "replace": i.bento_tag in replace} for i in infos],
    }
    shutil.rmtree(context.parent / "bento", ignore_errors=True)  # an earlier attempt's export
    try:
        stdout, stderr = proc.communicate(json.dumps(args))
    except BaseException:
        kill(proc)
        raise
    bento_path = None
    for line in stdout.splitlines():
        if line.startswith(("MODEL_REUSED=", "MODEL_IMPORTED=")):
            verb, tag = line.split("=", 1)
            echo(f"{tag}: {'reused from' if verb == 'MODEL_REUSED' else 'imported into'} "
                 "the BentoML store")
        elif line.startswith("BENTO_PATH="):
            bento_path = Path(line.removeprefix("BENTO_PATH="))
    if proc.returncode == 0 and bento_path is not None:
        return bento_path
    tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
    raise ImageBuildError(f"building the Bento {name}:{version} failed:\n{tail}")
