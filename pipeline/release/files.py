"""Release files for one image: the Spinnaker pipeline, the Kayenta canary config, the manifests.

`render_release(spec, config, outdir)` validates everything first and only then writes::

    outdir/pipeline.json              spin pipeline save --file pipeline.json
    outdir/canary-config.json         spin canary canary-config save --file canary-config.json
                                      (canary releases, and others whose answers are known)
    outdir/prometheus-scrape.yaml     the scrape job the canary's queries rely on
    outdir/k8s/deployment.yaml        production Deployment, new digest (applied on promotion)
    outdir/k8s/deployment-canary.yaml     canary Deployment, new digest         (canary releases)
    outdir/k8s/deployment-baseline.yaml   baseline Deployment, production digest (canary releases)
    outdir/k8s/service.yaml, hpa.yaml, pdb.yaml
    outdir/openapi.json               the service's OpenAPI spec, when the spec carries one
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config import ReleaseConfig, load_release_config
from pipeline.errors import ReleaseError
from pipeline.identity import parse_tag
from pipeline.release.api_spec import load_spec
from pipeline.release.kayenta import canary_config, has_output, scrape_config
from pipeline.release.kubernetes import autoscaler, deployment, disruption_budget, service
from pipeline.release.outcome import OutcomeHook
from pipeline.release.spec import ReleaseSpec, validate_spec
from pipeline.release.spinnaker import pipeline


def render_documents(
    spec: ReleaseSpec, config: ReleaseConfig, hook: OutcomeHook | None = None
) -> dict[str, str]:
    """Validate, then build every release file in memory: relative path -> text.

    With `hook` the pipeline reports its outcome (pipeline/release/outcome.py)."""
    validate_spec(spec)

    def as_yaml(doc: dict[str, Any]) -> str:
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)

    files = {
        "pipeline.json": json.dumps(pipeline(spec, config, hook), indent=2) + "\n",
        "prometheus-scrape.yaml": as_yaml(scrape_config(config)),
        "k8s/deployment.yaml": as_yaml(deployment(spec, config, "production")),
        "k8s/service.yaml": as_yaml(service(spec, config)),
        "k8s/hpa.yaml": as_yaml(autoscaler(spec, config)),
        "k8s/pdb.yaml": as_yaml(disruption_budget(spec, config)),
    }
    # A canary needs it; a direct deploy renders it when the image says what it answers (the
    # config the next release's canary will be judged like).
    if spec.mode == "canary" or has_output(spec):
        files["canary-config.json"] = json.dumps(canary_config(spec, config), indent=2) + "\n"
    if spec.mode == "canary":
        files["k8s/deployment-canary.yaml"] = as_yaml(deployment(spec, config, "canary"))
        files["k8s/deployment-baseline.yaml"] = as_yaml(deployment(spec, config, "baseline"))
    if spec.openapi is not None:
        files["openapi.json"] = json.dumps(spec.openapi, indent=2, sort_keys=True) + "\n"
    return files


_RENDERED_FILES = (
    "pipeline.json",
    "canary-config.json",
    "prometheus-scrape.yaml",
    "openapi.json",
    "k8s/deployment.yaml",
    "k8s/deployment-canary.yaml",
    "k8s/deployment-baseline.yaml",
    "k8s/service.yaml",
    "k8s/hpa.yaml",
    "k8s/pdb.yaml",
)


def render_release(
    spec: ReleaseSpec, config: ReleaseConfig, outdir: Path, hook: OutcomeHook | None = None
) -> dict[str, Path]:
    """Write the release files into `outdir`; on any error nothing is written there."""
    files = render_documents(spec, config, hook)
    outdir = outdir.resolve()
    stale = [outdir / rel for rel in _RENDERED_FILES if rel not in files]
    if outdir.exists() and not outdir.is_dir():
        raise ReleaseError(f"--out: {outdir} exists and is not a directory")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}-", dir=outdir.parent))
    try:
        for rel, text in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        written: dict[str, Path] = {}
        for rel in files:
            final = outdir / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, final)
            written[rel] = final
        for path in stale:  # e.g. canary manifests left by an earlier render into this folder
            path.unlink(missing_ok=True)
        return written
    except OSError as exc:
        raise ReleaseError(f"cannot write the release files into {outdir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def render_from_inputs(
    *,
    name: str,
    repository: str,
    digest: str,
    baseline_digest: str | None,
    control: Mapping[str, str],
    treatment: Mapping[str, str] | None,
    image_tag: str,
    code_version: str | None,
    kind: Literal["model", "hotfix", "rollback"],
    skip_canary: bool,
    openapi_file: Path | None,
    config_file: Path | None,
    outdir: Path,
) -> tuple[ReleaseSpec, dict[str, Path]]:
    """Build the spec of one release from its parts and render it into `outdir`.

    A tag that follows the tag scheme must name exactly the control and treatment versions
    given, and its code part is the code version unless `code_version` is given. The release
    configuration comes from `config_file` ([release] table; defaults without a file), the
    OpenAPI spec copied into the release from `openapi_file`. Nothing is written if any of it
    is invalid.
    """
    tag = parse_tag(image_tag)
    if tag is not None:
        tag.check_versions(control["version"], treatment["version"] if treatment else None,
                           tag_text=image_tag)
    config = load_release_config(config_file)
    openapi = load_spec(openapi_file) if openapi_file is not None else None
    models = {"control": control, **({"treatment": treatment} if treatment else {})}
    spec = ReleaseSpec(
        name=name,
        repository=repository,
        digest=digest,
        baseline_digest=baseline_digest,
        model_versions=models,
        code_version=code_version or (tag.code if tag else ""),
        image_tag=image_tag,
        kind=kind,
        skip_canary=skip_canary,
        openapi=openapi,
    )
    return spec, render_release(spec, config, outdir)
