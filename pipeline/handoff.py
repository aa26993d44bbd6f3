"""The canary handoff: build (or reuse) and push, render the release files, record the release.

Order matters: the release configuration is validated before anything is built, the ledger is
written only after the image is pushed and the files are rendered, so a failure at any earlier
point records nothing.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pipeline import ledger, registry
from pipeline.build import BuildRequest, BuildResult, build
from pipeline.errors import ReleaseError
from pipeline.release import ReleaseConfig, ReleaseSpec, render_release
from pipeline.settings import Settings

CONFIG_IN_IMAGE = "/home/bentoship/bento/src/services/bentoship.json"


@dataclass(frozen=True)
class Handoff:
    build: BuildResult | None
    spec: ReleaseSpec
    record: ledger.ReleaseRecord
    files: dict[str, Path]
    submitted: bool
    submit_note: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "release": self.record.to_dict(),
            "image": self.spec.image,
            "baseline": self.spec.baseline_image,
            "mode": self.spec.mode,
            "files": {k: str(v) for k, v in self.files.items()},
            "submitted": self.submitted,
            "submit_note": self.submit_note,
            "build": self.build.as_dict() if self.build else None,
        }


def service_spec(client: Any, image: str) -> dict[str, Any]:
    """The OpenAPI spec of the service inside `image`, from the configuration it carries."""
    import docker.errors

    from services.config import ServiceConfig
    from services.openapi import build_spec

    try:
        container = client.containers.create(image, entrypoint=["true"])
    except docker.errors.APIError as exc:
        raise ReleaseError(f"cannot open {image}: {exc.explanation or exc}") from exc
    try:
        stream, _ = container.get_archive(CONFIG_IN_IMAGE)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("bentoship.json")
            raw = member.read() if member else b""
    except docker.errors.NotFound as exc:
        raise ReleaseError(f"{image} is not a bentoship image: it has no {CONFIG_IN_IMAGE}") from exc
    finally:
        container.remove(force=True)
    return dict(build_spec(ServiceConfig.model_validate(json.loads(raw))))


def _ledger_client(settings: Settings) -> Any:
    return registry.client_for(settings.tracking_uri, settings.registry_uri)


def _artifact_root(settings: Settings) -> Path | None:
    return settings.artifact_root if settings.uses_embedded_store else None


def release(
    req: BuildRequest,
    settings: Settings,
    config: ReleaseConfig,
    outdir: Path,
    echo: Callable[[str], None],
    *,
    kind: Literal["model", "hotfix"] = "model",
    submit: bool = False,
) -> Handoff:
    """Build and push `req`, render the canary release against production, record it."""
    from pipeline.engine import connect

    _check_submit(submit)
    mlflow_client = _ledger_client(settings)
    result = build(replace(req, push=True), settings, echo)
    assert result.digest is not None  # push=True either sets it or raises
    name = result.name
    production = ledger.latest_successful(mlflow_client, name=name)
    baseline = production.image.partition("@")[2] if production else None
    if baseline == result.digest:
        echo(f"Production already runs {result.pinned}: rendering a direct deploy, no canary")
        baseline = None
    spec = ReleaseSpec(
        name=name,
        repository=result.repository,
        digest=result.digest,
        baseline_digest=baseline,
        model_versions=result.models,
        code_version=result.labels.get("io.bentoship.code.version", ""),
        image_tag=result.tag,
        kind=kind,
        openapi=service_spec(connect(), result.reference),
    )
    return _finish(spec, config, outdir, settings, echo, result, submit)


def _finish(
    spec: ReleaseSpec,
    config: ReleaseConfig,
    outdir: Path,
    settings: Settings,
    echo: Callable[[str], None],
    result: BuildResult | None,
    submit: bool,
) -> Handoff:
    echo(f"Rendering the {spec.mode} release into {outdir}")
    files = render_release(spec, config, outdir)
    submitted, note = _submit(files, submit)
    record = ledger.record_release(
        _ledger_client(settings), spec, files, artifact_root=_artifact_root(settings)
    )
    echo(f"Recorded release {record.short_id} ({spec.kind}) in the ledger")
    return Handoff(result, spec, record, files, submitted, note)


def _check_submit(submit: bool) -> None:
    """Refuse --submit up front, before anything is built, when it cannot work."""
    if submit and shutil.which("spin") is None:
        raise ReleaseError(
            "--submit needs the `spin` CLI on PATH, configured with your Spinnaker gate "
            "(~/.spin/config). Without it, hand over the rendered files: "
            "`spin pipeline save --file pipeline.json`."
        )


def _submit(files: dict[str, Path], submit: bool) -> tuple[bool, str]:
    """Save the pipeline with `spin` when asked; otherwise the files are the handoff."""
    import subprocess

    if not submit:
        return False, "not submitted (no --submit): the rendered files are the handoff"
    pipeline_file = next(p for rel, p in files.items() if rel.endswith("pipeline.json"))
    proc = subprocess.run(
        ["spin", "pipeline", "save", "--file", str(pipeline_file)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise ReleaseError(f"`spin pipeline save` failed: {proc.stderr.strip() or proc.stdout}")
    return True, "saved with `spin pipeline save`"
