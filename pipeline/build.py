"""`bentoship build`: registry versions -> Bento -> smoke-tested image (-> pushed by digest).

Everything that can be checked is checked before the first side effect: references parse,
the Docker engine answers, versions resolve (aliases once), artifacts download and match their
manifests, signatures agree, requirements do not conflict. Only then are models imported, the
Bento built, the image built, smoke-tested, tagged and pushed. A failing step leaves no tag
behind: the image is tagged only after the smoke test passed.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import bento, image, integrity, registry, smoke
from pipeline.errors import ConfigError, DockerError
from pipeline.requirements import ResolvedRequirements, read_requirements, resolve_requirements
from pipeline.settings import Settings
from pipeline.version import CodeVersion, code_version, source_url

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
            "smoke_test_rows": self.example_rows_out,
            "seconds": round(self.seconds, 1),
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


def resolve_request(
    req: BuildRequest, settings: Settings, echo: Callable[[str], None]
) -> Resolved:
    """Validate options and resolve aliases to exact READY versions, once."""
    weights = _validate_request(req)
    refs = {"control": registry.parse_ref(req.control)}
    if req.treatment is not None:
        refs["treatment"] = registry.parse_ref(req.treatment)
    echo("Resolving model versions")
    client = registry.client_for(settings.tracking_uri, settings.registry_uri)
    versions = {variant: registry.resolve(client, ref) for variant, ref in refs.items()}
    for variant, mv in versions.items():
        via = f" (from {mv.requested_as})" if mv.requested_as != str(mv) else ""
        echo(f"  {variant}: {mv}{via}, run {mv.run_id[:8]}")
    code = code_version(PROJECT_ROOT)
    name = req.name or bento.bento_name(versions["control"].name).replace("_", "-").replace(".", "-")
    if not _NAME.match(name):
        raise ConfigError(f"cannot use {name!r} as the service name: pass --name")
    tag = image.image_tag(
        versions["control"].version,
        versions["treatment"].version if "treatment" in versions else None,
        code.label,
    )
    return Resolved(req, weights, versions, code, name, tag)


def plan(
    resolved: Resolved, settings: Settings, work: Path, echo: Callable[[str], None]
) -> Plan:
    """Download and verify the artifacts into `work`, check signatures and requirements."""
    from pipeline.base import lock_pins

    req = resolved.request
    client = registry.client_for(settings.tracking_uri, settings.registry_uri)
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


def build(req: BuildRequest, settings: Settings, echo: Callable[[str], None]) -> BuildResult:
    from pipeline.base import ensure_base_image, prepare_wheels
    from pipeline.engine import connect

    started = time.monotonic()
    resolved = resolve_request(req, settings, echo)
    client = connect()
    name, tag = resolved.name, resolved.tag
    repository = f"{settings.oci_registry}/{name}"

    with tempfile.TemporaryDirectory(prefix="bentoship-build-") as tmp:
        work = Path(tmp)
        p = plan(resolved, settings, work, echo)
        infos = p.infos
        echo("Preparing the base image")
        base = ensure_base_image(client, settings, echo=lambda m: echo(f"  {m}"))
        layers = [
            image.ModelLayer(
                variant=i.variant,
                registered_name=i.version.name,
                version=i.version.version,
                run_id=i.version.run_id,
                manifest_sha256=i.manifest_sha256,
            )
            for i in infos
        ]
        labels = image.image_labels(
            tag=tag,
            name=name,
            revision=resolved.code.revision,
            code_label=resolved.code.label,
            source=source_url(PROJECT_ROOT),
            models=layers,
            weights=dict(zip(("control", "treatment"), resolved.weights[: len(infos)])),
            allow_pickle=req.allow_pickle,
            requirements_sha256=p.requirements.sha256,
            base_ref=base.ref,
            config_sha256=p.config_sha256,
        )
        examples = list(infos[0].example_rows)

        existing = _existing(client, f"{repository}:{tag}", p.config_sha256, base.ref)
        if existing is not None:
            echo(f"Image {repository}:{tag} already exists with this configuration: not rebuilding")
            result = BuildResult(name, repository, tag, existing.id, dict(existing.labels),
                                 int(existing.attrs.get("Size", 0)), p.models, reused=True,
                                 example_rows_in=examples)
        else:
            echo("Building the Bento")
            context = bento.write_context(p.config, work / "bento-context")
            bento_dir = bento.make_bento(infos, context, name, tag, {"bentoship.tag": tag},
                                         settings.bentoml_home, echo=lambda m: echo(f"  {m}"))
            wheels = []
            if p.requirements.extras:
                echo(f"Preparing wheels for extra dependencies: {', '.join(p.requirements.extras)}")
                wheels = prepare_wheels(list(p.requirements.extras), work / "extras", no_deps=False)
            docker_ctx = image.write_docker_context(bento_dir, work / "docker", base.ref, wheels)
            echo("Building the image (no network)")
            image_id = image.build(client, docker_ctx, labels, echo)
            rows_out: list[dict[str, Any]] = []
            if req.smoke_test:
                echo("Smoke test: starting the container")
                rows_out = smoke.smoke_test(
                    client, image_id, examples, deadline_s=req.ready_timeout_s, echo=echo
                ).rows_out
            _tag(client, image_id, repository, tag)
            built = client.images.get(image_id)
            result = BuildResult(name, repository, tag, image_id, labels,
                                 int(built.attrs.get("Size", 0)), p.models, reused=False,
                                 example_rows_in=examples, example_rows_out=rows_out)

    if req.push:
        echo(f"Pushing {repository}:{tag}")
        result.digest = image.push(client, repository, tag, echo=lambda m: echo(f"  {m}"))
    result.seconds = time.monotonic() - started
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


def _existing(client: Any, reference: str, config_sha: str, base_ref: str) -> Any | None:
    import docker.errors

    try:
        found = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    labels = found.labels or {}
    if (labels.get(f"{image.LABEL_PREFIX}.config_sha256") == config_sha
            and labels.get(f"{image.LABEL_PREFIX}.base") == base_ref):
        return found
    return None


def _tag(client: Any, image_id: str, repository: str, tag: str) -> None:
    import docker.errors

    try:
        client.api.tag(image_id, repository, tag, force=True)
    except docker.errors.APIError as exc:
        raise DockerError(f"could not tag {image_id} as {repository}:{tag}: {exc}") from exc
