"""A rebuild's one registry check, without importing MLflow.

Importing MLflow's client costs about 1.5 s (its package imports pandas, FastAPI and its GenAI
modules) for a lookup of milliseconds: most of a rebuild that changes nothing. A build of a
reference MLflow answered before only needs to know whether that answer still holds: the
same version, READY, with the same run, source, aliases and recorded manifest digest.

`remember` keeps MLflow's answer for a reference in the build cache (`lookups/<key>.json`,
with the installed MLflow's version and, for SQLite, the database's schema revision).
`recall` asks the registry again by a path that needs no MLflow import:

- the SQLite store (`sqlite:///...`, the embedded default): the registry tables MLflow wrote,
  opened read-only, and only while the schema revision (`alembic_version`) and MLflow's
  version are those of the remembered answer;
- a tracking server (`http(s)://...`): MLflow's REST API (`model-versions/get`,
  `registered-models/alias`) with the credentials MLflow would send (a token, or a user and
  password, from the same variables); any other TLS or auth setting leaves it to MLflow.

It returns the version only when the registry's answer *equals* the remembered one. Anything
else (another version, not READY, a changed tag, an upgrade, an error, an alias `latest`, a
registry of another kind, workspaces in use) is None, and the caller asks MLflow, whose answer
or error is the authoritative one: this is a check of a cached answer, never a second client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.models.integrity import DIGEST_TAG
from pipeline.models.registry import ModelRef, ModelVersion

TIMEOUT_S = 5.0
# What MLflow's REST client would do differently from the plain request made here.
_LEFT_TO_MLFLOW = (
    "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE",
    "MLFLOW_ENABLE_WORKSPACES",
)


def remember(cache_root: Path, registry_uri: str, ref: ModelRef, mv: ModelVersion) -> None:
    """Keep MLflow's answer for `ref` (best effort: the cache is optional)."""
    record = {"answer": _comparable(mv), "mlflow": _mlflow_version(),
              "schema": _schema_revision(registry_uri)}
    folder = cache_root / "lookups"
    staging = folder / f".{_key(registry_uri, ref)}.{os.getpid()}"
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps(record, sort_keys=True))
        os.replace(staging, folder / f"{_key(registry_uri, ref)}.json")


def recall(cache_root: Path, registry_uri: str, ref: ModelRef) -> ModelVersion | None:
    """The remembered version of `ref` if the registry still answers exactly that, else None."""
    try:
        record = json.loads((cache_root / "lookups" / f"{_key(registry_uri, ref)}.json").read_text())
        answer = record["answer"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (ref.alias or "").lower() == "latest" or record.get("mlflow") != _mlflow_version():
        return None
    try:
        if registry_uri.startswith("sqlite:///"):
            if record.get("schema") is None or record["schema"] != _schema_revision(registry_uri):
                return None
            found = _from_sqlite(_sqlite_path(registry_uri), ref)
        elif registry_uri.startswith(("http://", "https://")):
            found = _from_server(registry_uri, ref)
        else:
            return None
    except (OSError, sqlite3.Error, ValueError, KeyError, TypeError):
        return None
    if found is None or _comparable(found) != answer:
        return None
    return replace(found, requested_as=str(ref))


# --- the embedded SQLite store ---------------------------------------------------------------


def _sqlite_path(uri: str) -> str:
    """`sqlite:////abs/path` and `sqlite:///relative/path`, as SQLAlchemy reads them."""
    return uri.removeprefix("sqlite:///").split("?", 1)[0]


def _connect(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():  # read-only mode would not create it, but say so plainly
        raise FileNotFoundError(path)
    return sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=TIMEOUT_S)


def _schema_revision(registry_uri: str) -> str | None:
    if not registry_uri.startswith("sqlite:///"):
        return None
    try:
        with contextlib.closing(_connect(_sqlite_path(registry_uri))) as db:
            rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except (OSError, sqlite3.Error):
        return None
    return rows[0][0] if len(rows) == 1 else None


def _from_sqlite(path: str, ref: ModelRef) -> ModelVersion | None:
    """The version as MLflow's SqlAlchemyStore reads it: not deleted, in the default workspace."""
    with contextlib.closing(_connect(path)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(model_versions)")}
        where = " AND workspace = 'default'" if "workspace" in columns else ""
        version: Any = ref.version
        if ref.alias is not None:
            row = db.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND "
                             f"alias = ?{where}", (ref.name, ref.alias)).fetchone()
            if row is None:
                return None
            version = row[0]
        found = db.execute(
            "SELECT version, run_id, source, status FROM model_versions WHERE name = ? AND "
            f"version = ? AND current_stage != 'Deleted_Internal'{where}",
            (ref.name, int(version)),
        ).fetchone()
        if found is None or found[3] != "READY":
            return None
        aliases = [r[0] for r in db.execute(
            f"SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ?{where}",
            (ref.name, found[0]))]
        digest = db.execute(
            f"SELECT value FROM model_version_tags WHERE name = ? AND version = ? AND key = ?{where}",
            (ref.name, found[0], DIGEST_TAG)).fetchone()
    return ModelVersion(name=ref.name, version=str(found[0]), run_id=found[1] or "",
                        source=found[2] or "", aliases=tuple(sorted(aliases)),
                        requested_as=str(ref), manifest_sha256=digest[0] if digest else None)


# --- a tracking server -----------------------------------------------------------------------


def _from_server(uri: str, ref: ModelRef) -> ModelVersion | None:
    if any(os.environ.get(name) for name in _LEFT_TO_MLFLOW):
        return None
    if ref.alias is not None:
        endpoint = "registered-models/alias"
        query = {"name": ref.name, "alias": ref.alias}
    else:
        endpoint, query = "model-versions/get", {"name": ref.name, "version": str(ref.version)}
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError:
        return None  # not found, refused: MLflow says which, in its words
    mv = body["model_version"]
    if mv.get("status", "READY") != "READY":
        return None
    tags = {t["key"]: t.get("value") for t in mv.get("tags") or []}
    return ModelVersion(name=mv["name"], version=str(mv["version"]), run_id=mv.get("run_id") or "",
                        source=mv.get("source") or "", aliases=tuple(sorted(mv.get("aliases") or ())),
                        requested_as=str(ref), manifest_sha256=tags.get(DIGEST_TAG))


def _auth_headers() -> dict[str, str]:
    """The Authorization header MLflow's REST client sends for the same environment."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if user and password:
        basic = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}


# --- helpers ---------------------------------------------------------------------------------


def _key(registry_uri: str, ref: ModelRef) -> str:
    return hashlib.sha256(json.dumps([registry_uri, str(ref)]).encode()).hexdigest()[:32]


def _comparable(mv: ModelVersion) -> dict[str, Any]:
    """What must not have changed: everything but how the version was asked for."""
    return {**asdict(mv), "aliases": sorted(mv.aliases), "requested_as": None}


def _mlflow_version() -> str | None:
    try:
        return metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        return None
