"""What the image must install: the models' own requirements against the base image's lock.

Each MLflow model carries a `requirements.txt`. They are merged, CUDA-carrying packages are
mapped to their CPU builds, `mlflow` is dropped when every model loads natively (the service
does not import it), tools MLflow inferred from the training session but never needed to serve
(test runners, notebook kernels, linters: `DEV_ONLY`) are dropped with a note, and the result is
checked against the pins of the platform base image.
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

_TEST = "a test tool, imported by the training session's tests, never by the service"
_NOTEBOOK = "a notebook tool, imported by the training notebook's kernel, never by the service"
_LINT = "a lint, format or type-check tool, never imported at run time"
# Packages MLflow's requirement inference picks up from the session a model was logged in
# (`import pytest` in a test, a Jupyter kernel, a linter plugin) that serving never imports.
# `[build] keep_requirements` / `drop_requirements` in bentoship.toml override this list.
DEV_ONLY: Mapping[str, str] = {
    **dict.fromkeys(
        ("pytest", "pluggy", "iniconfig", "pytest-cov", "pytest-xdist", "execnet", "pytest-mock",
         "pytest-timeout", "coverage", "tox"),
        _TEST,
    ),
    **dict.fromkeys(
        ("ipykernel", "ipython", "ipywidgets", "jupyter", "jupyter-client", "jupyter-core",
         "jupyter-server", "jupyterlab", "jupyterlab-widgets", "widgetsnbextension", "notebook",
         "nbformat", "nbconvert", "nbclient", "debugpy", "matplotlib-inline"),
        _NOTEBOOK,
    ),
    **dict.fromkeys(
        ("black", "ruff", "flake8", "pyflakes", "pycodestyle", "mccabe", "mypy", "pylint",
         "astroid", "isort", "autopep8", "yapf", "pre-commit"),
        _LINT,
    ),
}
_DROPPED_ON_REQUEST = "dropped by [build] drop_requirements in bentoship.toml"


@dataclass(frozen=True)
class ModelRequirements:
    model: str  # e.g. "demo-classifier/2", for messages
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DroppedRequirement:
    """A line of a model's `requirements.txt` the image does not install, and why."""

    package: str  # canonical name, e.g. "pytest"
    requirement: str  # as the model wrote it, e.g. "pytest==8.3.4"
    model: str  # e.g. "demo-classifier/2"
    reason: str

    @property
    def note(self) -> str:
        keep = ("" if self.reason == _DROPPED_ON_REQUEST else
                f' (keep it with [build] keep_requirements = ["{self.package}"])')
        return f"{self.model}: not installing {self.requirement}: {self.reason}{keep}"

    def as_dict(self) -> dict[str, str]:
        return {"package": self.package, "requirement": self.requirement, "model": self.model,
                "reason": self.reason}


@dataclass(frozen=True)
class ResolvedRequirements:
    requirements: tuple[str, ...]  # every requirement, normalised and sorted
    extras: tuple[str, ...]  # the ones the base image does not provide
    dropped: tuple[DroppedRequirement, ...] = ()  # in the models' order

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
    keep: Iterable[str] = (),
    drop: Iterable[str] = (),
) -> ResolvedRequirements:
    """Merge the models' requirements and check them against the base pins.

    Packages of `DEV_ONLY` are left out, except those in `keep`; those in `drop` are left out
    too; each one left out is a `DroppedRequirement` of the result. Raises ConfigError naming
    every conflicting package, who asks for what, and what the base image pins.
    """
    pins: dict[str, str] = {canonicalize_name(k): v for k, v in base_pins.items()}
    kept = {canonicalize_name(k) for k in keep}
    unwanted = {k: why for k, why in DEV_ONLY.items() if k not in kept}
    unwanted.update(dict.fromkeys((canonicalize_name(d) for d in drop), _DROPPED_ON_REQUEST))
    wanted: dict[str, list[tuple[str, Requirement]]] = {}
    dropped: list[DroppedRequirement] = []
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
            if name in unwanted:
                dropped.append(DroppedRequirement(name, line, model.model, unwanted[name]))
                continue
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
    return ResolvedRequirements(requirements=tuple(merged), extras=tuple(extras),
                                dropped=tuple(dropped))
