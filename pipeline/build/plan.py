"""What a build will make, decided before any side effect: the request, resolved and checked.

`resolve_request` validates the options and resolves every model reference to an exact READY
version, once (aliases move); `plan` downloads the artifacts, checks them against their
manifests, checks that control and treatment share one API, refuses pickle unless allowed,
resolves the requirements against the base image's lock and derives the service's
configuration. Everything after a `Plan` (`builder.build`, `builder.serve`) is side effects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import identity
from pipeline.build import bento, cache, loadcheck
from pipeline.build.service import content_version, service_config, start_service_openapi
from pipeline.config import TYPE_NAME, BuildConfig
from pipeline.errors import ConfigError
from pipeline.identity import CodeVersion, code_version
from pipeline.models import integrity, recall, registry
from pipeline.models.requirements import (
    ResolvedRequirements,
    read_requirements,
    resolve_requirements,
)
from pipeline.progress import Echo
from pipeline.settings import Settings

PROJECT_ROOT = bento.SERVICES_DIR.parent
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class HookSource:
    """Where the team's hook module comes from: its module name in the image, and the file
    copied in as `services/team_hooks.py` when it was named by path."""

    module: str
    file: Path | None


def hook_source(req: BuildRequest) -> HookSource | None:
    """The request's hook module (--hooks, else [service] hooks), checked to exist."""
    spec = req.hooks
    base = Path.cwd()
    if spec is None:
        spec, base = req.build_config.service.hooks, req.build_config.service.base_dir
    if spec is None:
        return None
    template = req.services_dir or bento.SERVICES_DIR
    if spec.endswith(".py"):
        path = (base / spec).resolve()
        if not path.is_file():
            raise ConfigError(f"hooks {spec!r}: no such file ({path})")
        if req.services_dir is None and not path.is_relative_to(PROJECT_ROOT):
            raise ConfigError(
                f"hooks {spec!r} ({path}) is outside the repository {PROJECT_ROOT}: the image's "
                "code version is the repository's commit, so the hooks must be in it"
            )
        return HookSource(bento.HOOKS_MODULE, path)
    parts = spec.split(".")
    if parts[0] != "services" or len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"hooks {spec!r}: name a module under services/ (services.my_hooks) "
                          "or a .py file")
    module_file = template.joinpath(*parts[1:]).with_suffix(".py")
    if not module_file.is_file():
        raise ConfigError(f"hooks {spec!r}: no module file {module_file}")
    return HookSource(spec, None)


@dataclass(frozen=True)
class BuildRequest:
    """What to build: model references (aliases allowed), traffic split and service options."""

    control: str
    treatment: str | None = None
    name: str | None = None
    treatment_weight: int | None = None  # percent of traffic; default 10 with a treatment
    push: bool = False
    smoke_test: bool = True
    allow_pickle: bool = False
    max_rows: int = 1000
    threshold: float = 0.5
    salt: str | None = None
    ready_timeout_s: float = 120.0
    # Build from this copy of the service template instead of the checkout's services/ (tests,
    # benchmarks); its code version is then a hash of its content, `src-<hash7>`.
    services_dir: Path | None = None
    # The `[build]` and `[service]` tables of bentoship.toml: requirements left out, trusted
    # types, the team's hook module.
    build_config: BuildConfig = field(default_factory=BuildConfig)
    # skops types trusted by name on the command line (--trust-type), beside [build]'s.
    trusted_types: tuple[str, ...] = ()
    # The hook module (--hooks): a module under services/ or a .py path; beats [service] hooks.
    hooks: str | None = None

    @property
    def all_trusted_types(self) -> tuple[str, ...]:
        return tuple(sorted({*self.build_config.trusted_types, *self.trusted_types}))


def _validate_request(req: BuildRequest) -> tuple[int, int]:
    if req.treatment is None and req.treatment_weight is not None:
        raise ConfigError("--treatment-weight needs --treatment: a single model gets all traffic")
    weight = 10 if req.treatment_weight is None else req.treatment_weight
    if req.treatment is not None and not 0 <= weight <= 100:
        raise ConfigError(f"--treatment-weight must be between 0 and 100, got {weight}")
    if req.name is not None and not _NAME.match(req.name):
        raise ConfigError(
            f"--name {req.name!r} must be lower-case letters, digits and '-', at most 63 "
            "characters (it becomes the image repository and the Kubernetes name)"
        )
    if not 1 <= req.max_rows <= 100_000:
        raise ConfigError(f"--max-rows must be between 1 and 100000, got {req.max_rows}")
    if not 0.0 <= req.threshold <= 1.0:
        raise ConfigError(f"--threshold is a probability, between 0 and 1, got {req.threshold}")
    bad = [t for t in req.trusted_types if not TYPE_NAME.match(t)]
    if bad:
        raise ConfigError(f"--trust-type takes full type names such as "
                          f"xgboost.sklearn.XGBClassifier, got {bad}")
    return (100, 0) if req.treatment is None else (100 - weight, weight)


@dataclass(frozen=True)
class Resolved:
    """The request with every model reference resolved to an exact version (no side effects)."""

    request: BuildRequest
    weights: tuple[int, int]
    versions: dict[str, registry.ModelVersion]
    code: CodeVersion
    name: str
    tag: str
    hooks: HookSource | None = None

    @property
    def models(self) -> dict[str, dict[str, str]]:
        return {variant: {"name": mv.name, "version": mv.version, "run_id": mv.run_id}
                for variant, mv in self.versions.items()}

    def cache_key(self) -> str:
        """What decides the plan of this build: the key of its entry in the build cache."""
        from pipeline.build.base import lock_pins

        req = self.request
        options = {k: v for k, v in vars(req).items()
                   if k not in ("control", "treatment", "services_dir", "build_config", "push",
                                "smoke_test", "ready_timeout_s")}
        fields = {
            "options": options,
            "build_config": req.build_config.model_dump(mode="json"),
            "weights": self.weights,
            "code": self.code.label,
            "name": self.name,
            "tag": self.tag,
            "hooks": [self.hooks.module, str(self.hooks.file)] if self.hooks else None,
            "lock": lock_pins(),
        }
        return cache.plan_key(fields, self.versions)


@dataclass(frozen=True)
class Plan:
    """Everything checked and derived; what follows are the side effects."""

    resolved: Resolved
    infos: list[bento.ModelInfo]
    requirements: ResolvedRequirements
    config: dict[str, Any]
    config_sha256: str
    context: Path  # the build context: services/ with its bentoship.json
    examples: list[dict[str, Any]]  # request rows the smoke test sends
    # The OpenAPI document the service will serve (`services/openapi.py` on the config), begun
    # when the plan was made (`start_service_openapi`).
    spec: Callable[[], dict[str, Any]]
    loadcheck_s: float = 0.0  # seconds the load check took (part of planning)
    cached: tuple[str, ...] = ()  # the variants whose artifacts came from the build cache
    check_key: str = ""  # the build cache's key of what the load check found (cache.check_key)

    @property
    def models(self) -> dict[str, dict[str, str]]:
        return self.resolved.models

    @property
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document the service will serve (waited for on first use)."""
        return self.spec()


def resolve_request(req: BuildRequest, settings: Settings, echo: Echo) -> Resolved:
    """Validate options and resolve aliases to exact READY versions, once."""
    weights = _validate_request(req)
    refs = {"control": registry.parse_ref(req.control)}
    if req.treatment is not None:
        refs["treatment"] = registry.parse_ref(req.treatment)
    echo("Resolving model versions")
    versions = _resolve(refs, settings, echo)
    for variant, mv in versions.items():
        via = f" (from {mv.requested_as})" if mv.requested_as != str(mv) else ""
        echo(f"  {variant}: {mv}{via}, run {mv.run_id[:8]}")
    hooks = hook_source(req)
    code = (code_version(PROJECT_ROOT) if req.services_dir is None
            else content_version(req.services_dir, hooks.file if hooks else None))
    name = req.name or bento.service_name(versions["control"].name)
    if not _NAME.match(name):
        raise ConfigError(f"cannot use {name!r} as the service name: pass --name")
    tag = identity.image_tag(
        versions["control"].version,
        versions["treatment"].version if "treatment" in versions else None,
        code.label,
    )
    return Resolved(req, weights, versions, code, name, tag, hooks)


def _resolve(refs: dict[str, registry.ModelRef], settings: Settings,
             echo: Echo) -> dict[str, registry.ModelVersion]:
    """Each reference's exact READY version: the build cache's earlier answer where the
    registry confirms it without MLflow (`recall.py`), else MLflow's, remembered."""
    versions = {variant: _confirmed(settings, ref) for variant, ref in refs.items()}
    if all(versions.values()):
        echo("  the registry confirms the last build's answers (no MLflow client needed)")
    else:
        client = registry.settings_client(settings)
        for variant, ref in refs.items():
            if versions[variant] is None:
                versions[variant] = mv = registry.resolve(client, ref)
                _remember(settings, ref, mv)
    return {variant: mv for variant, mv in versions.items() if mv is not None}


def _confirmed(settings: Settings, ref: registry.ModelRef) -> registry.ModelVersion | None:
    kept = cache.load_lookup(settings.build_cache, settings.registry_uri, str(ref))
    return recall.confirm(kept, settings.registry_uri, ref) if kept is not None else None


def _remember(settings: Settings, ref: registry.ModelRef, mv: registry.ModelVersion) -> None:
    """Keep MLflow's answer for `ref` (best effort: the cache is optional)."""
    with contextlib.suppress(OSError):
        cache.keep_lookup(settings.build_cache, settings.registry_uri, str(ref),
                          recall.record(settings.registry_uri, mv))


def plan(resolved: Resolved, settings: Settings, work: Path, echo: Echo, *,
         reuse_check: bool = False) -> Plan:
    """Download and verify the artifacts into `work`, check signatures and requirements.

    Artifacts the build cache holds for a version (`cache.py`) are not downloaded: the cached
    copy is used once its files hash to the digest the registry records for the version. With
    `reuse_check` (a build whose smoke test will load the models with this code), the load
    check's findings for cached artifacts and these settings come from the cache too, when
    there are no hooks (whose declarations are the code's own).
    """
    from pipeline.build.base import lock_pins

    req = resolved.request
    client = None  # MLflow's client, imported only if something must be downloaded
    echo("Downloading and verifying artifacts")
    infos = []
    cached: list[str] = []
    for variant, mv in resolved.versions.items():
        path = cache.cached_model(settings.build_cache, mv, echo=lambda m: echo(f"  {m}"))
        if path is not None and mv.manifest_sha256 is not None:
            echo(f"  {variant} {mv}: artifacts from the build cache, matching the registry's "
                 "manifest")
            manifest = mv.manifest_sha256
            cached.append(variant)
        else:
            client = client or registry.settings_client(settings)
            path = registry.download(client, mv, work / "mlflow" / variant)
            manifest = integrity.verify_or_record(client, mv, path)
            if mv.manifest_sha256 is None:  # recorded now: what the registry answers from here
                _remember(settings, registry.parse_ref(mv.requested_as),
                          dataclasses.replace(mv, manifest_sha256=manifest))
        infos.append(bento.inspect_model(variant, mv, path, manifest))
    bento.check_compatible(infos)
    needs_pyfunc = any(i.flavor not in bento.NATIVE_FLAVORS for i in infos)
    if needs_pyfunc and not req.allow_pickle:
        which = ", ".join(str(i.version) for i in infos if i.flavor not in bento.NATIVE_FLAVORS)
        raise ConfigError(
            f"{which} can only be loaded through mlflow.pyfunc, which unpickles code. "
            "Pickle loading is refused by default; pass --allow-pickle if you trust it."
        )
    requirements = resolve_requirements(
        [read_requirements(str(i.version), i.path) for i in infos],
        lock_pins(),
        needs_pyfunc=needs_pyfunc,
        keep=req.build_config.keep_requirements,
        drop=req.build_config.drop_requirements,
    )
    for dropped in requirements.dropped:
        echo(f"  {dropped.note}")
    config = service_config(req, resolved.name, resolved.tag, resolved.code.label, infos,
                            resolved.weights)
    hooks = resolved.hooks
    context = bento.write_context(work / "bento-context", req.services_dir,
                                  hooks.file if hooks else None)
    key = cache.check_key({i.variant: i.manifest_sha256 for i in infos}, config,
                          list(infos[0].output_names))
    started = time.monotonic()
    reusable = reuse_check and hooks is None and len(cached) == len(infos)
    checked = _load_check(infos, context, config, hooks, settings.build_cache if reusable
                          else None, key, echo)
    loadcheck_s = time.monotonic() - started
    output = checked.output
    if req.threshold != 0.5 and not (output["task"] == "classification"
                                     and len(output["classes"]) == 2):
        raise ConfigError(f"--threshold applies to binary classifiers; these models answer "
                          f"{output['task']}" + (f" with classes {output['classes']}"
                                                 if output["classes"] else ""))
    config = {**config, "output": output, "hooks": checked.hooks}
    bento.write_config(context, config)
    config_sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    spec = start_service_openapi(config, req.services_dir, work / "spec")
    return Plan(resolved, infos, requirements, config, config_sha, context, checked.examples,
                spec, loadcheck_s, tuple(cached), key)


def _load_check(
    infos: list[bento.ModelInfo], context: Path, config: dict[str, Any],
    hooks: HookSource | None, cache_root: Path | None, key: str, echo: Echo,
) -> loadcheck.Checked:
    """What the models answer and what the hooks take: found in `cache_root` under `key`
    (when given), else by the service's own code on every model in a child process."""
    found = cache.load_check(cache_root, key) if cache_root is not None else None
    if found is not None:
        echo("Load check: in the build cache (these artifacts and settings passed it before); "
             "the smoke test loads the models with this code")
        return loadcheck.Checked([], found["output"], None, found["examples"])
    # The service's own loader on every model, before anything slow: seconds, not the smoke
    # test's readiness deadline. It also finds what the models answer and what the hooks take.
    echo("Loading the models with the service's code")
    return loadcheck.check_models(infos, context, config, echo=lambda m: echo(f"  {m}"),
                                  hooks_module=hooks.module if hooks else None)
