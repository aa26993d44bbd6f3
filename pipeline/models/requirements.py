"""What the image must install: the models' own requirements against the base image's lock.

Each MLflow model carries a `requirements.txt`. They are merged, CUDA-carrying packages are
mapped to their CPU builds, `mlflow` is dropped when every model loads natively (the service
does not import it), and the result is checked against the pins of the platform base image.
Anything the base does not provide becomes an extra dependency layer; anything the base pins
differently, or two models pin differently, is a conflict raised before anything is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from pipeline.errors import ConfigError

# Wheels that bundle CUDA libraries (hundreds of MB) -> the same library built for CPU.
CPU_BUILDS = {"xgboost": "xgboost-cpu"}
# Only needed by mlflow.pyfunc, which the service imports only for models it cannot load natively;
# then mlflow-skinny carries pyfunc without the tracking server, UI and their dependencies.
PYFUNC_ONLY = {"mlflow", "mlflow-skinny"}
PYFUNC_PACKAGE = "mlflow-skinny"


@dataclass(frozen=True)
class ModelRequirements:
    model: str  # e.g. "demo-classifier/2", for messages
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedRequirements:
    requirements: tuple[str, ...]  # every requirement, normalised and sorted
    extras: tuple[str, ...]  # the ones the base image does not provide

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()


def read_requirements(model: str, model_dir: Path) -> ModelRequirements:
    path = model_dir / "requirements.txt"
    if not path.is_file():
        return ModelRequirements(model, ())
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return ModelRequirements(model, tuple(lines))


def resolve_requirements(
    models: Iterable[ModelRequirements],
    base_pins: Mapping[str, str],
    *,
    needs_pyfunc: bool,
) -> ResolvedRequirements:
    """Merge the models' requirements and check them against the base pins.

    Raises ConfigError naming every conflicting package, who asks for what, and what the base
    image pins.
    """
    pins: dict[str, str] = {canonicalize_name(k): v for k, v in base_pins.items()}
    wanted: dict[str, list[tuple[str, Requirement]]] = {}
    for model in models:
        for line in model.lines:
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                raise ConfigError(f"{model.model}: unreadable requirement {line!r}: {exc}") from exc
            if req.marker is not None and not req.marker.evaluate(
                {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
            ):
                continue
            name: str = canonicalize_name(req.name)
            if name in CPU_BUILDS:
                req = Requirement(f"{CPU_BUILDS[name]}{req.specifier}")
                name = CPU_BUILDS[name]
            if name in PYFUNC_ONLY:
                if not needs_pyfunc:
                    continue
                req = Requirement(f"{PYFUNC_PACKAGE}{req.specifier}")
                name = PYFUNC_PACKAGE
            wanted.setdefault(name, []).append((model.model, req))

    problems: list[str] = []
    extras: list[str] = []
    merged: list[str] = []
    for name in sorted(wanted):
        asks = wanted[name]
        spec = asks[0][1].specifier
        for _, req in asks[1:]:
            spec &= req.specifier
        who = "; ".join(f"{model} needs {req}" for model, req in asks)
        if name in pins:
            if not spec.contains(pins[name], prereleases=True):
                problems.append(f"{who}; the base image pins {name}=={pins[name]}")
            merged.append(f"{name}=={pins[name]}")
            continue
        exact = {s.version for s in spec if s.operator == "=="}
        if len(exact) > 1:
            problems.append(f"{who}: no version satisfies both")
            continue
        requirement = f"{name}{spec}"
        merged.append(requirement)
        extras.append(requirement)
    if problems:
        raise ConfigError(
            "the models' requirements conflict, nothing was built:\n  - "
            + "\n  - ".join(problems)
            + "\nRetrain one model against the other's versions, or rebuild the base image "
            "with the versions the models need."
        )
    return ResolvedRequirements(requirements=tuple(merged), extras=tuple(extras))
