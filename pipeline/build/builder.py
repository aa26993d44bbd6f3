"""`bentoship build`: registry versions -> Bento -> smoke-tested image (-> pushed by digest).

Everything that can be checked is checked before the first side effect: references parse,
the Docker engine answers, versions resolve (aliases once), artifacts download and match their
manifests, signatures agree, requirements do not conflict. Only then are models imported, the
Bento built, the image built, smoke-tested, tagged and pushed. A failing step leaves no tag
behind: the image is tagged only after the smoke test passed. With --push, a registry that does
not answer fails the build before anything is built.

The same model versions, code and base again find the existing image, locally or in the
registry (pulled by digest then), and say so instead of rebuilding.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline import identity
from pipeline.build import bento

from pipeline.build import image

from pipeline.models import integrity

from pipeline.build import oci

from pipeline.models import registry

from pipeline.build import smoke
from pipeline.errors import ConfigError, DockerError, PushError
from pipeline.progress import reporter
from pipeline.models.requirements import ResolvedRequirements, read_requirements, resolve_requirements
from pipeline.config import Settings
from pipeline.identity import CodeVersion, code_version, source_url

PROJECT_ROOT = bento.SERVICES_DIR.parent
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class BuildRequest:
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


@dataclass
class BuildResult:
    name: str
    repository: str
    tag: str
    image_id: str
    labels: dict[str, str]
    size_bytes: int
    models: dict[str, dict[str, str]]
    reused: bool
    digest: str | None = None  # "sha256:..." once pushed
    example_rows_in: list[dict[str, Any]] = field(default_factory=list)
    example_rows_out: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reused_from: str | None = None  # "local" or "registry" when reused
    layer_sizes: dict[str, int] = field(default_factory=dict)  # base, extras, models, code
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of the build

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str | None:
        return f"{self.repository}@{self.digest}" if self.digest else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.reference,
            "image_id": self.image_id,
            "digest": self.digest,
            "pinned": self.pinned,
            "tag": self.tag,
            "labels": self.labels,
            "size_bytes": self.size_bytes,
            "models": self.models,
            "reused": self.reused,
            "reused_from": self.reused_from,
            "layer_sizes": self.layer_sizes,
            "smoke_test_rows": self.example_rows_out,
            "seconds": round(self.seconds, 1),
            "phases": {k: round(v, 2) for k, v in self.phases.items()},
        }


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


@dataclass(frozen=True)
class Plan:
    """Everything checked and derived; what follows are the side effects."""

    resolved: Resolved
    infos: list[bento.ModelInfo]
    requirements: ResolvedRequirements
    config: dict[str, Any]
    config_sha256: str

    @property
    def models(self) -> dict[str, dict[str, str]]:
        return {i.variant: {"name": i.version.name, "version": i.version.version,
                            "run_id": i.version.run_id} for i in self.infos}

    @cached_property
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document the service will serve (`services/openapi.py` on the config)."""
        return _service_openapi(self.config, self.resolved.request.services_dir)


def resolve_request(
    req: BuildRequest, settings: Settings, echo: Callable[[str], None]
) -> Resolved:
    """Validate options and resolve aliases to exact READY versions, once."""
    weights = _validate_request(req)
    refs = {"control": registry.parse_ref(req.control)}
    if req.treatment is not None:
        refs["treatment"] = registry.parse_ref(req.treatment)
    echo("Resolving model versions")
    client = registry.settings_client(settings)
    versions = {variant: registry.resolve(client, ref) for variant, ref in refs.items()}
    for variant, mv in versions.items():
        via = f" (from {mv.requested_as})" if mv.requested_as != str(mv) else ""
        echo(f"  {variant}: {mv}{via}, run {mv.run_id[:8]}")
    code = (code_version(PROJECT_ROOT) if req.services_dir is None
            else _content_version(req.services_dir))
    name = req.name or bento.service_name(versions["control"].name)
    if not _NAME.match(name):
        raise ConfigError(f"cannot use {name!r} as the service name: pass --name")
    tag = identity.image_tag(
        versions["control"].version,
        versions["treatment"].version if "treatment" in versions else None,
        code.label,
    )
    return Resolved(req, weights, versions, code, name, tag)


def plan(
    resolved: Resolved, settings: Settings, work: Path, echo: Callable[[str], None]
) -> Plan:
    """Download and verify the artifacts into `work`, check signatures and requirements."""
    from pipeline.build.base import lock_pins

    req = resolved.request
    client = registry.settings_client(settings)
    echo("Downloading and verifying artifacts")
    infos = []
    for variant, mv in resolved.versions.items():
        path = registry.download(client, mv, work / "mlflow" / variant)
        manifest = integrity.verify_or_record(client, mv, path)
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
    )
    config = _service_config(req, resolved.name, resolved.tag, resolved.code.label, infos,
                             resolved.weights)
    config_sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return Plan(resolved, infos, requirements, config, config_sha)


def build(
    req: BuildRequest,
    settings: Settings,
    echo: Callable[[str], None],
    *,
    check: Callable[[Plan], None] | None = None,
) -> BuildResult:
    """Build (or find) the image for `req`; see the module docstring for the order of things.

    `echo` takes progress lines; a `pipeline.progress.Progress` also draws bars. `check` is
    called with the plan before the first side effect (a release's API guard); it refuses by
    raising.
    """
    from pipeline.build.base import ensure_base_image, lock_pins
    from pipeline.build.engine import connect

    started = time.monotonic()
    progress = reporter(echo)
    phases = _Phases()
    resolved = resolve_request(req, settings, progress)
    client = connect()
    name, tag = resolved.name, resolved.tag
    repository = f"{settings.oci_registry}/{name}"
    if req.push and not oci.answers(settings.oci_registry):
        raise PushError(image.push_message(
            repository, f"the registry {settings.oci_registry} does not answer (connection "
            "refused or timed out), so nothing was built"))
    phases.done("resolve")

    with tempfile.TemporaryDirectory(prefix="bentoship-build-") as tmp:
        work = Path(tmp)
        p = plan(resolved, settings, work, progress)
        if check is not None:
            check(p)
        infos = p.infos
        phases.done("verify")
        progress("Preparing the base image")
        base = ensure_base_image(client, settings, echo=lambda m: progress(f"  {m}"))
        phases.done("base")
        layers = [
            identity.ModelLayer(
                variant=i.variant,
                registered_name=i.version.name,
                version=i.version.version,
                run_id=i.version.run_id,
                manifest_sha256=i.manifest_sha256,
            )
            for i in infos
        ]
        labels = identity.image_labels(
            tag=tag,
            name=name,
            revision=resolved.code.revision or resolved.code.label,
            code_label=resolved.code.label,
            source=source_url(PROJECT_ROOT),
            models=layers,
            weights=dict(zip(("control", "treatment"), resolved.weights[: len(infos)])),
            allow_pickle=req.allow_pickle,
            requirements_sha256=p.requirements.sha256,
            base_ref=base.ref,
            config_sha256=p.config_sha256,
        )
        labels[identity.OPENAPI_LABEL] = identity.openapi_sha256(p.openapi)
        examples = list(infos[0].example_rows)

        existing, digest, where = _existing(client, repository, tag, labels, progress)
        phases.done("lookup")
        if existing is not None:
            result = BuildResult(name, repository, tag, existing.id, dict(existing.labels),
                                 int(existing.attrs.get("Size", 0)), p.models, reused=True,
                                 digest=digest, example_rows_in=examples, reused_from=where)
        else:
            extras = None
            if p.requirements.extras:
                extras = image.prepare_extras(p.requirements.extras, lock_pins(),
                                              work / "extras", settings, progress)
                phases.done("wheels")
            progress("Building the Bento")
            context = _write_context(p.config, work / "bento-context", req.services_dir)
            bento_dir = bento.make_bento(infos, context, name, tag, {"bentoship.tag": tag},
                                         settings.bentoml_home, echo=lambda m: progress(f"  {m}"))
            phases.done("bento")
            docker_ctx = image.write_docker_context(bento_dir, work / "docker", base.ref, extras,
                                                    labels)
            # In the code layer, next to bento.yaml: the spec this image serves at /docs.json.
            (docker_ctx / "bento" / identity.OPENAPI_FILE).write_bytes(identity.canonical_json(p.openapi))
            image_id = image.build(client, docker_ctx, progress)
            phases.done("image")
            rows_out: list[dict[str, Any]] = []
            if req.smoke_test:
                progress("Smoke test: starting the container")
                rows_out = smoke.smoke_test(
                    client, image_id, examples, deadline_s=req.ready_timeout_s, echo=progress
                ).rows_out
                phases.done("smoke")
            _tag(client, image_id, repository, tag)
            built = client.images.get(image_id)
            result = BuildResult(name, repository, tag, image_id, labels,
                                 int(built.attrs.get("Size", 0)), p.models, reused=False,
                                 example_rows_in=examples, example_rows_out=rows_out)

    result.layer_sizes = image.group_sizes(image.layers(client, result.image_id))
    if req.push and where != "registry":
        result.digest = image.push(client, repository, tag, progress)
        phases.done("push")
    result.seconds = time.monotonic() - started
    result.phases = phases.seconds
    return result


def serve(req: BuildRequest, settings: Settings, port: int, echo: Callable[[str], None]) -> int:
    """Run the same service locally without Docker (`bentoml serve` of the built Bento)."""
    import os
    import subprocess
    import sys

    resolved = resolve_request(req, settings, echo)
    with tempfile.TemporaryDirectory(prefix="bentoship-serve-") as tmp:
        work = Path(tmp)
        p = plan(resolved, settings, work, echo)
        echo("Building the Bento")
        context = bento.write_context(p.config, work / "bento-context")
        bento_dir = bento.make_bento(p.infos, context, resolved.name, resolved.tag,
                                     {"bentoship.tag": resolved.tag}, settings.bentoml_home,
                                     echo=lambda m: echo(f"  {m}"))
    echo(f"Serving {resolved.name}:{resolved.tag} on http://127.0.0.1:{port} (Ctrl-C stops)")
    env = {**os.environ, "BENTOML_HOME": str(settings.bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    return subprocess.call(
        [str(bentoml_cli), "serve", str(bento_dir), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )


_SPEC_SCRIPT = """
import json, sys
from services.config import ServiceConfig
from services.openapi import build_spec
print(json.dumps(build_spec(ServiceConfig.model_validate_json(sys.stdin.read()))))
"""


def _service_openapi(config: dict[str, Any], services_dir: Path | None) -> dict[str, Any]:
    """`services.openapi.build_spec` of the service template the image is built from."""
    import os
    import subprocess
    import sys

    from services.config import ServiceConfig
    from services.openapi import build_spec

    validated = ServiceConfig.model_validate(config)
    if services_dir is None:
        return build_spec(validated)
    # Another copy of the template: its own openapi.py decides, imported as `services`.
    with tempfile.TemporaryDirectory(prefix="bentoship-spec-") as tmp:
        (Path(tmp) / "services").symlink_to(services_dir.resolve(), target_is_directory=True)
        proc = subprocess.run(
            [sys.executable, "-c", _SPEC_SCRIPT], input=validated.model_dump_json(), cwd=tmp,
            env={**os.environ, "PYTHONPATH": tmp}, capture_output=True, text=True, check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise ConfigError(f"{services_dir}/openapi.py cannot build the service's spec (exit "
                          f"{proc.returncode}):\n{tail}")
    return dict(json.loads(proc.stdout))


def _service_config(
    req: BuildRequest, name: str, tag: str, code_label: str,
    infos: list[bento.ModelInfo], weights: tuple[int, int],
) -> dict[str, Any]:
    first = infos[0].example_rows[0] if infos[0].example_rows else {}
    return {
        "name": name,
        "code_version": code_label,
        "image_tag": tag,
        "features": [{**f, "example": first.get(f["name"])} for f in infos[0].features],
        "variants": [
            {
                "name": info.variant,
                "model_tag": info.bento_tag,
                "registered_name": info.version.name,
                "version": info.version.version,
                "run_id": info.version.run_id,
                "flavor": info.flavor,
                "weight": weight,
            }
            for info, weight in zip(infos, weights)
        ],
        "routing": {
            "salt": req.salt or name,
            "key_field": "request_id",
            "key_header": "x-bentoship-key",
            "override_header": "x-bentoship-variant",
        },
        "max_rows": req.max_rows,
        "allow_pickle": req.allow_pickle,
        "threshold": req.threshold,
    }


def _existing(
    client: Any, repository: str, tag: str, labels: dict[str, str], echo: Callable[[str], None]
) -> tuple[Any | None, str | None, str | None]:
    """An image of this same build, here or in the registry: (image, digest, "local"|"registry").

    Same build means same identity labels (configuration, base, requirements, code, model
    manifests). One found only in the registry is pulled by digest and tagged locally.
    """
    import docker.errors

    reference = f"{repository}:{tag}"
    try:
        found = client.images.get(reference)
    except docker.errors.ImageNotFound:
        found = None
    if found is not None:
        differ = identity.differences(found.labels or {}, labels)
        if not differ:
            echo(f"Image {reference} already exists locally with this configuration: "
                 "not rebuilding")
            digests = [d.split("@", 1)[1] for d in found.attrs.get("RepoDigests") or []
                       if d.startswith(f"{repository}@")]
            return found, (digests[0] if digests else None), "local"
        echo(f"Image {reference} exists locally but differs in {', '.join(differ)}: rebuilding")
    try:
        remote = oci.find(repository, tag)
    except PushError as exc:
        echo(f"Not looking for {reference} in the registry: {exc}")
        return None, None, None
    if remote is None:
        return None, None, None
    differ = identity.differences(remote.labels, labels)
    if differ:
        echo(f"{reference} exists in the registry but differs in {', '.join(differ)}: rebuilding")
        return None, None, None
    echo(f"Image {reference} already exists in the registry as {repository}@{remote.digest} "
         "with this configuration: pulling it instead of rebuilding")
    return image.pull(client, repository, remote.digest, tag, echo), remote.digest, "registry"


class _Phases:
    """Seconds spent in each step of a build, for `--output json` and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "bentoship.json", "requirements.*")


def _content_version(services_dir: Path) -> CodeVersion:
    """The code version of a service template outside the checkout: a hash of its files."""
    if not (services_dir / "service.py").is_file():
        raise ConfigError(f"{services_dir} holds no service.py: it is not a copy of services/")
    digest = hashlib.sha256()
    for path in sorted(p for p in services_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(services_dir)
        if _IGNORED(str(path.parent), [path.name]) or "__pycache__" in rel.parts:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return CodeVersion(sha="", dirty=False, label=f"src-{digest.hexdigest()[:7]}")


def _write_context(config: dict[str, Any], dest: Path, services_dir: Path | None) -> Path:
    """`bento.write_context`, with the service code taken from `services_dir` when given."""
    context = bento.write_context(config, dest)
    if services_dir is not None:
        target = context / "services"
        written = (target / "bentoship.json").read_bytes()
        shutil.rmtree(target)
        shutil.copytree(services_dir, target, ignore=_IGNORED)
        (target / "bentoship.json").write_bytes(written)
    return context


def _tag(client: Any, image_id: str, repository: str, tag: str) -> None:
    import docker.errors

    try:
        client.api.tag(image_id, repository, tag, force=True)
    except docker.errors.APIError as exc:
        raise DockerError(f"could not tag {image_id} as {repository}:{tag}: {exc}") from exc
