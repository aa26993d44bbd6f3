"""SHA-256 manifests of model artifacts, recorded on the MLflow model version.

The first build of a version records the manifest as model-version tags; every later build
verifies the downloaded artifacts against it, so an artifact overwritten in place refuses
the build and names the files that changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ArtifactError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.models.registry import ModelVersion

MANIFEST_TAG = "bentoship.manifest"
# Written into a local artifact store by MLflow itself whenever `models:/NAME/N` is loaded
# (e.g. by `mlflow models serve`); not part of what was registered.
IGNORED = frozenset({"registered_model_meta"})
DIGEST_TAG = "bentoship.manifest_sha256"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(model_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `model_dir`."""
    result: dict[str, str] = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name not in IGNORED):
        result[path.relative_to(model_dir).as_posix()] = file_sha256(path)
    return result


def digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def verify_or_record(client: MlflowClient, mv: ModelVersion, model_dir: Path) -> str:
    """Return the manifest digest; record it on first use, refuse a mismatch afterwards.

    The digest `mv` was resolved with is compared first (no round trip); the registry is
    asked only when `mv` carries none, and for the recorded file list when they differ.
    """
    current = manifest(model_dir)
    current_digest = digest(current)
    if mv.manifest_sha256 == current_digest:
        return current_digest
    tags = client.get_model_version(mv.name, mv.version).tags or {}
    if DIGEST_TAG not in tags:
        client.set_model_version_tag(mv.name, mv.version, MANIFEST_TAG, json.dumps(current))
        client.set_model_version_tag(mv.name, mv.version, DIGEST_TAG, current_digest)
        return current_digest
    if tags[DIGEST_TAG] == current_digest:
        return current_digest
    try:
        recorded: dict[str, str] = json.loads(tags.get(MANIFEST_TAG, "{}"))
    except json.JSONDecodeError:
        recorded = {}
    changed = sorted(p for p in current.keys() & recorded.keys() if current[p] != recorded[p])
    added = sorted(current.keys() - recorded.keys())
    removed = sorted(recorded.keys() - current.keys())
    parts = [f"changed: {', '.join(changed)}"] if changed else []
    parts += [f"added: {', '.join(added)}"] if added else []
    parts += [f"missing: {', '.join(removed)}"] if removed else []
    raise ArtifactError(
        f"the artifacts of {mv} no longer match the manifest recorded at its first build "
        f"({'; '.join(parts) or 'manifest digest differs'}). Someone overwrote them in place: "
        "register the new artifacts as a new version instead."
    )
