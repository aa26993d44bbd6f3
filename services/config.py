"""The service configuration, ``services/bentoship.json`` (contract 2).

The pipeline builds a :class:`ServiceConfig`, writes ``config.model_dump_json()`` next to
``services/service.py`` in the build context, and the service reads it once at import with
:func:`load_config`. Everything is validated here, before any model is touched.

The ``serving`` knobs (workers, model-call deadline, concurrent model calls) depend on where the
image runs, so the environment overrides them: ``BENTOSHIP_WORKERS``,
``BENTOSHIP_MODEL_TIMEOUT_S`` and ``BENTOSHIP_MAX_MODEL_CALLS``; so are the ``batching`` knobs
(``BENTOSHIP_BATCHING``, ``BENTOSHIP_BATCH_MAX_ROWS``, ``BENTOSHIP_BATCH_MAX_WAIT_MS``). This is
the one module of ``services/`` that reads the environment.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.errors import ConfigError
from services.values import check_value

CONFIG_FILENAME = "bentoship.json"

ColumnType = Literal["double", "float", "long", "integer", "boolean", "string"]
Flavor = Literal["xgboost", "sklearn", "lightgbm", "onnx", "python_function"]
Task = Literal["classification", "regression"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
_VARIANT = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Feature(_Frozen):
    """One input column, typed with MLflow's column-spec type names."""

    name: str = Field(min_length=1)
    type: ColumnType
    required: bool = True
    example: bool | int | float | str | None = None

    @model_validator(mode="after")
    def _example_matches_type(self) -> Feature:
        if self.example is not None:
            problem = check_value(self.type, self.example)
            if problem is not None:
                raise ValueError(
                    f"example {self.example!r} does not fit type {self.type!r}: {problem}"
                )
        return self


class Variant(_Frozen):
    """One model version served by the service (``control`` or ``treatment``)."""

    name: str
    model_tag: str = Field(min_length=1)
    registered_name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    run_id: str = ""
    flavor: Flavor
    weight: int = Field(ge=0, le=100)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _VARIANT.match(value):
            raise ValueError(
                f"variant name {value!r} must match {_VARIANT.pattern} "
                "(lower-case letter, then lower-case letters, digits, '_' or '-')"
            )
        return value


class Output(_Frozen):
    """What every variant answers, decided at build time from the models themselves.

    classification: ``prediction`` is one of ``classes`` (the models' labels, integers or
    strings, in the order of their probabilities) and ``probabilities`` has every label;
    regression: ``prediction`` is a number, or ``targets`` numbers (an object keyed by
    ``target_names`` when the output signature names them, else an array).
    """

    task: Task
    classes: tuple[int | str, ...] = ()
    targets: int = Field(default=1, ge=1, le=1000)
    target_names: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Output:
        if self.task == "classification":
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ValueError(f"a classifier needs two or more distinct classes, got "
                                 f"{list(self.classes)}")
            kinds = {type(c) for c in self.classes}
            if len(kinds) != 1:
                raise ValueError(f"classes must be all integers or all strings, got "
                                 f"{list(self.classes)}")
            if len({str(c) for c in self.classes}) != len(self.classes):
                raise ValueError(f"classes {list(self.classes)} collide as strings")
            if self.targets != 1 or self.target_names:
                raise ValueError("a classifier has no targets")
        else:
            if self.classes:
                raise ValueError("a regressor has no classes")
            names = self.target_names
            if names and (len(names) != self.targets or len(set(names)) != len(names)):
                raise ValueError(f"target_names {list(names)} must name each of the "
                                 f"{self.targets} targets once")
        return self

    # Cached: read on every request (answers, metrics); the model is frozen.
    @cached_property
    def binary(self) -> bool:
        return self.task == "classification" and len(self.classes) == 2

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """The labels as the keys of ``probabilities``."""
        return tuple(str(c) for c in self.classes)

    @cached_property
    def target_labels(self) -> tuple[str, ...]:
        """A regressor's outputs as metric labels: their names, else ``prediction`` or 0..t-1."""
        if self.target_names:
            return self.target_names
        return ("prediction",) if self.targets == 1 else tuple(map(str, range(self.targets)))


class HookConfig(_Frozen):
    """The team's hook module (``services/hooks.py`` says how to write one) and what it declared."""

    module: str
    preprocess: bool = False
    postprocess: bool = False
    request: tuple[Feature, ...] = ()
    response: tuple[Feature, ...] = ()

    @field_validator("module")
    @classmethod
    def _module_shape(cls, value: str) -> str:
        if not _MODULE.match(value):
            raise ValueError(f"{value!r} must be an importable module name such as services.my_hooks")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HookConfig:
        if not (self.preprocess or self.postprocess):
            raise ValueError("a hook module defines preprocess, postprocess or both")
        if self.request and not self.preprocess:
            raise ValueError("request fields are declared by a preprocess hook")
        if self.postprocess and not self.response:
            raise ValueError("a postprocess hook declares its response columns")
        for what, columns in (("request", self.request), ("response", self.response)):
            names = [c.name for c in columns]
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                raise ValueError(f"{what}: duplicated names {duplicated}")
        clash = sorted({c.name for c in self.response} & {"variant", "model_version"})
        if clash:
            raise ValueError(f"response: {clash} are the service's own columns")
        return self


class Routing(_Frozen):
    """How rows are assigned to variants; see ``services/routing.py``."""

    salt: str
    key_field: str | None = "request_id"
    key_header: str | None = "x-bentoship-key"
    override_header: str | None = "x-bentoship-variant"

    @field_validator("key_header", "override_header")
    @classmethod
    def _header_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _HEADER.match(value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value.lower()


class Serving(_Frozen):
    """How the service runs: worker processes, and the deadline and bound of model calls."""

    # Worker processes; None: one per CPU the container is given (services/cpus.py).
    workers: int | None = Field(default=None, ge=1, le=64)
    # A model call (hooks included) not answered after this many seconds is a 503 model_timeout.
    model_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Model calls one worker runs at once (its thread pool); one more is a 503 overloaded. A call
    # past its deadline holds its thread until it returns (a thread cannot be killed).
    max_model_calls: int = Field(default=8, ge=1, le=256)


class Batching(_Frozen):
    """Adaptive micro-batching (``services/batching.py``): concurrent requests for one variant
    are scored in one model call of at most ``max_rows`` rows, each waiting at most
    ``max_wait_ms`` for batch-mates before the call starts. Off by default: a lone request
    waits ``max_wait_ms`` for nobody."""

    enabled: bool = False
    # Rows of one batched model call; a request with more rows is scored alone.
    max_rows: int = Field(default=64, ge=1, le=100_000)
    # Longest a request waits for batch-mates before its model call starts.
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)


# Environment variable -> `batching` field it overrides.
BATCHING_ENV = {
    "BENTOSHIP_BATCHING": "enabled",
    "BENTOSHIP_BATCH_MAX_ROWS": "max_rows",
    "BENTOSHIP_BATCH_MAX_WAIT_MS": "max_wait_ms",
}


# Environment variable -> `serving` field it overrides.
SERVING_ENV = {
    "BENTOSHIP_WORKERS": "workers",
    "BENTOSHIP_MODEL_TIMEOUT_S": "model_timeout_s",
    "BENTOSHIP_MAX_MODEL_CALLS": "max_model_calls",
}


class ServiceConfig(_Frozen):
    """Everything the service needs to know; written by the pipeline, read by the service."""

    name: str
    code_version: str
    image_tag: str
    features: tuple[Feature, ...] = Field(min_length=1)
    variants: tuple[Variant, ...]
    routing: Routing
    output: Output
    max_rows: int = Field(default=1000, ge=1, le=1_000_000)
    allow_pickle: bool = False
    # skops types outside sklearn/numpy/scipy that the build trusted by name (--trust-type).
    trusted_types: tuple[str, ...] = ()
    # A binary classifier answers classes[1] when its probability is at least this.
    threshold: float = 0.5
    hooks: HookConfig | None = None
    serving: Serving = Serving()
    batching: Batching = Batching()

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} must be lower-case letters, digits, '.', '_' or '-' "
                f"(pattern {_NAME.pattern})"
            )
        return value

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features: duplicated names {duplicated}")
        if not 1 <= len(self.variants) <= 2:
            raise ValueError(
                f"variants: expected 1 or 2 (a control and an optional treatment), got {len(self.variants)}"
            )
        variant_names = [v.name for v in self.variants]
        if len(set(variant_names)) != len(variant_names):
            raise ValueError(f"variants: names must be unique, got {variant_names}")
        tags = [v.model_tag for v in self.variants]
        if len(set(tags)) != len(tags):
            raise ValueError(f"variants: model_tag must differ between variants, got {tags}")
        total = sum(v.weight for v in self.variants)
        if total != 100:
            weights = ", ".join(f"{v.name}={v.weight}" for v in self.variants)
            raise ValueError(f"variants: weights must sum to 100, got {total} ({weights})")
        key_field = self.routing.key_field
        request = self.request_fields
        if key_field is not None and key_field in [f.name for f in request]:
            feature = next(f for f in request if f.name == key_field)
            if feature.type not in ("string", "long", "integer"):
                raise ValueError(
                    f"routing.key_field {key_field!r} is a {feature.type} feature; "
                    "a key must be a string or an integer"
                )
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def request_fields(self) -> tuple[Feature, ...]:
        """What a caller sends per row: the preprocess hook's declared fields, else the features."""
        if self.hooks is not None and self.hooks.request:
            return self.hooks.request
        return self.features

    @property
    def output_width(self) -> int:
        """Columns of every model's answer: one probability per class, or one value per target."""
        out = self.output
        return len(out.classes) if out.task == "classification" else out.targets

    @property
    def preprocess(self) -> bool:
        return self.hooks is not None and self.hooks.preprocess

    @property
    def postprocess(self) -> bool:
        return self.hooks is not None and self.hooks.postprocess

    @property
    def control(self) -> Variant:
        """The first variant; it serves everything when there is only one."""
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        for candidate in self.variants:
            if candidate.name == name:
                return candidate
        raise KeyError(name)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read and validate ``bentoship.json``, with the ``serving`` overrides of ``environ``
    (default ``os.environ``); every message names the file or variable and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found. The pipeline writes {CONFIG_FILENAME} next to "
            "services/service.py in the build context; a bare checkout of services/ has none."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    try:
        config = ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc)) from None
    return with_serving_env(config, os.environ if environ is None else environ)


def with_serving_env(config: ServiceConfig, environ: Mapping[str, str]) -> ServiceConfig:
    """``config`` with the ``serving`` and ``batching`` fields that ``environ`` sets (an empty
    value is unset)."""
    serving = _with_env(config.serving, SERVING_ENV, environ, "serving")
    batching = _with_env(config.batching, BATCHING_ENV, environ, "batching")
    if serving is config.serving and batching is config.batching:
        return config
    return config.model_copy(update={"serving": serving, "batching": batching})


def _with_env(
    section: _Frozen, variables: Mapping[str, str], environ: Mapping[str, str], what: str
) -> _Frozen:
    overrides = {field: environ[name] for name, field in variables.items() if environ.get(name)}
    if not overrides:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **overrides})
    except ValidationError as exc:
        by_field = {field: name for name, field in variables.items()}
        problems = [
            f"  {by_field.get(str(e['loc'][0]), e['loc'][0])}={overrides.get(str(e['loc'][0]))!r}: "
            f"{e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(f"invalid {what} setting(s) in the environment\n"
                          + "\n".join(problems)) from None


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} invalid setting(s)"]
    for error in exc.errors(include_url=False):
        key = _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (not a ServiceConfig field)"
        lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "\n".join(lines)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
