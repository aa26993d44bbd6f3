"""What a build keeps for the next build of the same models: `$BENTOSHIP_HOME/cache/`.

Three kinds of entries, all written only after a build ended with a smoke-tested image (built
or found), so a failed build leaves none behind:

- `models/<key>/`: a model version's MLflow model directory as downloaded and verified. The
  key is a hash of the registered name, version, run id and the manifest digest the registry
  records for the version (`integrity.DIGEST_TAG`). Before every use the copy's files are
  hashed again and must give the digest the registry records *now*: a copy that does not is
  deleted and the artifacts downloaded (and verified) as on a first build. A version whose run
  id or recorded digest changed has another key, so it never finds the old copy.
- `checks/<key>.json`: what the load check found (what the models answer, the smoke test's
  rows) for artifacts by manifest digest and the service's settings, whatever the code. A
  code-only rebuild of cached artifacts without hooks takes them from here instead of loading
  the models in a child process first: its smoke test loads them with the new code, and the
  service refuses to start if they answer otherwise (`services.predictor.check_output`).
- `plans/<key>.json`: what planning found for one exact build (resolved versions with their
  run ids and digests, code version, options, the base image's lock, bentoship's own code):
  the inputs of the image's identity labels and the smoke test's rows. With it, a build whose
  image already exists finds that image after the one registry check per model, without
  downloading or loading the models.

BentoML's store (`$BENTOSHIP_HOME/bentoml`) keeps the imported models too; `bento.make_bento`
verifies the copy it exports against the same digest. Besides these, `lookups/<key>.json`
holds MLflow's answer for each model reference a build resolved (`pipeline/models/recall.py`
says what is kept and when it still holds), written when MLflow answered. Nothing else lives
under `cache/`:
`rm -rf $BENTOSHIP_HOME/cache` clears it, and the next build downloads and checks everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.models import integrity
from pipeline.models.registry import ModelVersion
from pipeline.progress import Echo

_PIPELINE_DIR = Path(__file__).resolve().parents[1]


def model_key(mv: ModelVersion, manifest_sha256: str) -> str:
    text = json.dumps([mv.name, mv.version, mv.run_id, manifest_sha256])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_model(root: Path, mv: ModelVersion, echo: Echo) -> Path | None:
    """The verified cached copy of `mv`'s artifacts, or None (not cached, or not intact).

    Only a version whose manifest the registry records can be served from the cache; a copy
    whose files no longer hash to that digest is removed (never used).
    """
    if mv.manifest_sha256 is None:
        return None
    path = root / "models" / model_key(mv, mv.manifest_sha256)
    if not (path / "MLmodel").is_file():
        return None
    if integrity.digest(integrity.manifest(path)) == mv.manifest_sha256:
        return path
    echo(f"the cached artifacts of {mv} do not match the manifest the registry records: "
         "discarded, downloading them again")
    shutil.rmtree(path, ignore_errors=True)
    return None


def keep_model(root: Path, mv: ModelVersion, manifest_sha256: str, source: Path) -> None:
    """Copy verified artifacts into the cache (atomically: a reader sees all or nothing)."""
    target = root / "models" / model_key(mv, manifest_sha256)
    if target.is_dir() or source.resolve().is_relative_to(target.parent.resolve()):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
    try:
        shutil.copytree(source, staging / "model")
        os.replace(staging / "model", target)
    except OSError:
        pass  # another build cached it meanwhile, or the disk is full: the cache is optional
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def plan_key(fields: dict[str, Any], versions: dict[str, ModelVersion]) -> str:
    """The key of one exact build: `fields` (options, code version, lock) and the versions,
    and bentoship's own code, which derives the plan from them."""
    document = {
        "fields": fields,
        # How a version was asked for, and its aliases, do not change what is built from it.
        "versions": {v: asdict(mv) | {"requested_as": None, "aliases": None}
                     for v, mv in versions.items()},
        "pipeline": _pipeline_fingerprint(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def load_plan(root: Path, key: str) -> dict[str, Any] | None:
    return _load(root / "plans", key)


def keep_plan(root: Path, key: str, summary: dict[str, Any]) -> None:
    _keep(root / "plans", key, summary)


def check_key(manifests: dict[str, str], config: dict[str, Any], target_names: list[str]) -> str:
    """The key of a load check's findings: the artifacts (by manifest digest) and the service's
    configuration apart from the code version (and the tag that names it), with the base
    image's lock: what the models answer does not depend on the code that asks them."""
    from pipeline.build.base import lock_pins

    settings = {k: v for k, v in config.items() if k not in ("code_version", "image_tag")}
    document = {"manifests": manifests, "config": settings, "target_names": target_names,
                "lock": lock_pins()}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def load_check(root: Path, key: str) -> dict[str, Any] | None:
    return _load(root / "checks", key)


def keep_check(root: Path, key: str, found: dict[str, Any]) -> None:
    _keep(root / "checks", key, found)


def load_lookup(root: Path, registry_uri: str, ref: str) -> dict[str, Any] | None:
    return _load(root / "lookups", _lookup_key(registry_uri, ref))


def keep_lookup(root: Path, registry_uri: str, ref: str, kept: dict[str, Any]) -> None:
    _keep(root / "lookups", _lookup_key(registry_uri, ref), kept)


def _lookup_key(registry_uri: str, ref: str) -> str:
    return hashlib.sha256(json.dumps([registry_uri, ref]).encode()).hexdigest()[:32]


def _load(folder: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / f"{key}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _keep(folder: Path, key: str, document: dict[str, Any]) -> None:
    """Write `folder/<key>.json` atomically: a reader sees all of it or nothing. Keys keep
    their order: the example rows' columns are the model's order, as a first build has them."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{key}.{os.getpid()}"
    staging.write_text(json.dumps(document))
    os.replace(staging, folder / f"{key}.json")


def _pipeline_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(_PIPELINE_DIR.rglob("*.py")):
        digest.update(path.relative_to(_PIPELINE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
