"""bentoship.toml, read once and validated before any side effect (the environment is
`pipeline/settings.py`'s).

bentoship.toml holds one table per concern, each a frozen pydantic model with `extra="forbid"`
(Truss's `truss_config.py` keeps a config file's whole schema in one module too):

    [release]   ReleaseConfig   the Kubernetes manifests, the canary analysis, the pipeline
    [ci]        CiConfig        what the CI flows release and how
    [build]     BuildConfig     which of the models' requirements the image leaves out

Every error names the file, the key and what is allowed (`_problems`, the one formatter).
(The service's own `bentoship.json` is validated inside the image by `services/config.py`.)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from packaging.utils import canonicalize_name
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.canary import Canary
from pipeline.errors import ConfigError
from services.config import Batching

DEFAULT_CONFIG_FILE = Path("bentoship.toml")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CPU = re.compile(r"^(\d+m|\d+(\.\d{1,3})?)$")
_MEMORY = re.compile(r"^\d+(Ki|Mi|Gi|Ti)?$")
_PIPELINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
_PACKAGE = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])$")  # PEP 508 name


# --- bentoship.toml [release] --------------------------------------------------------------------------------


def _dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes DNS-1123 label: use lowercase letters, digits and "
            "'-', start and end with a letter or digit, at most 63 characters"
        )
    return value


def _application(value: str) -> str:
    if not re.match(r"^[a-z][a-z0-9]{0,62}$", value):
        raise ValueError(
            f"{value!r} is not a usable Spinnaker application name: use lowercase letters and "
            "digits only, starting with a letter (Spinnaker splits cluster names on '-')"
        )
    return value


def _pattern(regex: re.Pattern[str], allowed: str) -> Any:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{value!r} is not allowed: use {allowed}")
        return value

    return AfterValidator(check)


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
CpuQuantity = Annotated[str, _pattern(_CPU, "a Kubernetes CPU quantity such as '500m' or '2'")]
MemoryQuantity = Annotated[
    str, _pattern(_MEMORY, "a Kubernetes memory quantity such as '512Mi' or '2Gi'")
]


def _cpu_millis(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Replicas(_Model):
    min: int = Field(default=2, ge=1, le=1000)
    max: int = Field(default=6, ge=1, le=1000)
    min_available: int = Field(default=1, ge=0)
    target_cpu_percent: int = Field(default=70, ge=1, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be at least min ({self.min})")
        if self.min_available >= self.min:
            raise ValueError(
                f"min_available ({self.min_available}) must be lower than min ({self.min}), "
                "or the PodDisruptionBudget blocks every node drain"
            )
        return self


class Resources(_Model):
    cpu_request: CpuQuantity = "500m"
    cpu_limit: CpuQuantity = "2"
    memory_request: MemoryQuantity = "1Gi"
    memory_limit: MemoryQuantity = "2Gi"

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        if _cpu_millis(self.cpu_request) > _cpu_millis(self.cpu_limit):
            raise ValueError(
                f"cpu_request ({self.cpu_request}) exceeds cpu_limit ({self.cpu_limit})"
            )
        if _memory_bytes(self.memory_request) > _memory_bytes(self.memory_limit):
            raise ValueError(
                f"memory_request ({self.memory_request}) exceeds memory_limit ({self.memory_limit})"
            )
        return self


_OUTCOME_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


class ReleaseConfig(_Model):
    """The `[release]` table of bentoship.toml; every field has a default."""

    application: Annotated[str, AfterValidator(_application)] = "bentoship"
    namespace: DnsLabel = "bentoship"
    account: DnsLabel = "kubernetes"
    pipeline: Annotated[str, _pattern(_PIPELINE, "letters, digits, ' ', '.', '_', '-'")] | None = (
        None
    )
    termination_grace_seconds: int = Field(default=45, ge=1, le=600)
    prestop_sleep_seconds: int = Field(default=10, ge=0, le=120)
    replicas: Replicas = Replicas()
    resources: Resources = Resources()
    canary: Canary = Canary()
    stage_timeout_minutes: int = Field(default=10, ge=1, le=24 * 60)
    """How long a deploy, promotion or undo stage may take (Orca's stageTimeoutMs) before it
    fails and the pipeline goes on to undo and clean up."""
    outcome_url: Annotated[str, _pattern(_OUTCOME_URL, "an http(s) URL such as "
                                         "'https://bentoship-hooks.internal/outcome'")] | None = None
    """Where the pipeline posts its outcome: `bentoship ci webhook`'s /outcome, as Spinnaker
    reaches it. With BENTOSHIP_WEBHOOK_SECRET set at render time the pipeline ends with a
    stage that reports promoted, rolled-back or failed there; otherwise it reports nothing."""

    @model_validator(mode="after")
    def _grace_covers_prestop(self) -> ReleaseConfig:
        if self.termination_grace_seconds <= self.prestop_sleep_seconds:
            raise ValueError(
                f"termination_grace_seconds ({self.termination_grace_seconds}) must exceed "
                f"prestop_sleep_seconds ({self.prestop_sleep_seconds})"
            )
        return self

    def pipeline_name(self, service: str) -> str:
        return self.pipeline or f"{service}-release"


# --- bentoship.toml [ci] --------------------------------------------------------------------------


class CiConfig(_Model):
    """The `[ci]` table of bentoship.toml; every field has a default."""

    new_version_as: Literal["treatment", "control"] = "treatment"
    """A newly registered version is canaried as the treatment beside production's control, or
    replaces the control (a plain canary of the new model against production)."""
    treatment_weight: int = Field(default=10, ge=0, le=100)
    """Percent of traffic for a new treatment."""
    models: tuple[str, ...] = ()
    """Registered model names the flows follow; empty follows every model."""
    alias_events: tuple[str, ...] = ()
    """Aliases whose creation (webhook `model_version_alias.created`) starts a release, e.g.
    ["challenger"]. `model_version.created` always does."""
    ready_timeout_s: float = Field(default=60.0, ge=0, le=3600)
    """How long to wait for a version still in PENDING_REGISTRATION."""
    rollback_canary: bool = False
    """A rollback skips the canary analysis (default) or runs a short one."""
    rollback_canary_minutes: int = Field(default=15, ge=1, le=1440)
    """The lifetime of that short canary analysis."""


# --- bentoship.toml [build] ----------------------------------------------------------------------


def _package_names(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if not _PACKAGE.match(name):
            raise ValueError(f"{name!r} is not a package name: use a distribution name such as "
                             "'pytest', without a version")
    return tuple(canonicalize_name(name) for name in names)


PackageNames = Annotated[tuple[str, ...], AfterValidator(_package_names)]


TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
TypeName = Annotated[str, _pattern(TYPE_NAME, "a full type name such as "
                                               "'xgboost.sklearn.XGBClassifier'")]
FieldName = Annotated[str, _pattern(_FIELD_NAME, "a field name: letters, digits, '_', '.', '-'")]


class ServiceTable(_Model):
    """The `[service]` table of bentoship.toml: the team's own code in the service."""

    hooks: str | None = None
    """The hook module (services/hooks.py says how to write one): a module under services/
    (`services.my_hooks`) or a path to a .py file, relative to bentoship.toml."""
    key_field: FieldName | None = "request_id"
    """The request field whose value keeps a caller on one variant (sticky A/B); none: only the
    key header and random assignment."""
    batching: Batching = Batching()
    """The `[service.batching]` table: adaptive micro-batching (`enabled`, `max_rows`,
    `max_wait_ms`; services/README.md); the container's environment overrides it."""
    base_dir: Path = Path(".")
    """Where `hooks` paths are relative to (the directory of bentoship.toml; not a key)."""


class BuildConfig(_Model):
    """The `[build]` table of bentoship.toml (and its `[service]` table); every field has a
    default."""

    keep_requirements: PackageNames = ()
    """Packages of the models' requirements.txt to install even though they are on the default
    list of tools never needed at run time (pipeline.models.requirements.DEV_ONLY)."""
    drop_requirements: PackageNames = ()
    """Further packages of the models' requirements.txt not to install."""
    trusted_types: tuple[TypeName, ...] = ()
    """Types outside sklearn/numpy/scipy a skops model may contain, trusted by full name
    (e.g. `xgboost.sklearn.XGBClassifier`); `--trust-type` adds to them."""
    service: ServiceTable = ServiceTable()
    """The `[service]` table."""

    @model_validator(mode="after")
    def _disjoint(self) -> BuildConfig:
        both = sorted(set(self.keep_requirements) & set(self.drop_requirements))
        if both:
            raise ValueError(f"{', '.join(both)} cannot be in both keep_requirements and "
                             "drop_requirements")
        return self


# --- reading and validating -----------------------------------------------------------------------


def read_table(path: Path, table: str) -> dict[str, Any]:
    """The `[table]` of a TOML file, `{}` when the file has none."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    value = document.get(table, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{table}] must be a table, got {type(value).__name__}")
    return value


_M = Any  # a _Model subclass; pydantic's generics add nothing here


def _validate(model: type[_M], data: Mapping[str, Any], table: str, source: str) -> _M:
    """`model` from `data`, or a ConfigError naming `source`, each key and what is allowed."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_problem(model, table, err) for err in exc.errors()]
        raise ConfigError(
            f"{source}: invalid {table} configuration:\n  " + "\n  ".join(problems)
        ) from None


def _problem(model: type[BaseModel], table: str, err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join([table, *loc])
    if err["type"] == "extra_forbidden":
        for part in loc[:-1]:
            annotation = model.model_fields[part].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        allowed = sorted(f.alias or name for name, f in model.model_fields.items())
        return f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}"


def parse_release_config(data: Mapping[str, Any], source: str = "[release]") -> ReleaseConfig:
    """Validate a `[release]` mapping; errors name `source`, the key and what is allowed."""
    config: ReleaseConfig = _validate(ReleaseConfig, data, "release", source)
    return config


def load_release_config(path: Path | None) -> ReleaseConfig:
    """Read the `[release]` table of a TOML file; no file (None) means the defaults."""
    if path is None:
        return ReleaseConfig()
    return parse_release_config(read_table(path, "release"), source=str(path))


def load_build_config(path: Path | None) -> BuildConfig:
    """Read the `[build]` table of a TOML file; no file (None) or no table means the defaults."""
    if path is None:
        return BuildConfig()
    data = read_table(path, "build")
    if "service" in data:
        raise ConfigError(f"{path}: [build] service: unknown key (the hooks go in [service])")
    service = {**read_table(path, "service"), "base_dir": path.resolve().parent}
    if "base_dir" in read_table(path, "service"):
        raise ConfigError(f"{path}: [service] base_dir: unknown key")
    table: ServiceTable = _validate(ServiceTable, service, "service", str(path))
    config: BuildConfig = _validate(BuildConfig, data, "build", str(path))
    return config.model_copy(update={"service": table})


def load_ci_config(path: Path | None) -> CiConfig:
    """Read the `[ci]` table of a TOML file; no file (None) or no table means the defaults."""
    if path is None:
        return CiConfig()
    config: CiConfig = _validate(CiConfig, read_table(path, "ci"), "ci", str(path))
    return config


def rollback_release_config(config: ReleaseConfig, ci: CiConfig) -> ReleaseConfig:
    """The release configuration with the short canary of `[ci] rollback_canary_minutes`."""
    data = config.model_dump(by_alias=True)
    minutes = ci.rollback_canary_minutes
    data["canary"]["lifetime"] = minutes
    data["canary"]["interval_minutes"] = min(data["canary"]["interval_minutes"], minutes)
    return parse_release_config(data, source="[release] with [ci] rollback_canary_minutes")
