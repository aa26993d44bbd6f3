"""A rebuild's one registry check, without importing MLflow.

Importing MLflow's client costs about 1.5 s (its package imports pandas, FastAPI and its GenAI
modules) for a lookup of milliseconds: most of a rebuild that changes nothing. A build of a
reference MLflow answered before only needs to know whether that answer still holds: the
same version, READY, with the same run, source, aliases and recorded manifest digest.

`record` is what the build cache keeps of MLflow's answer for a reference (`cache.keep_lookup`):
the answer, the installed MLflow's version and, for SQLite, the database's schema revision.
`confirm` asks the registry again by a path that needs no MLflow import:

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


def record(registry_uri: str, mv: ModelVersion) -> dict[str, Any]:
    """What to keep of MLflow's answer `mv`, for `confirm` to check later."""
    revision = None
    if registry_uri.startswith("sqlite:///"):
        with contextlib.suppress(OSError, sqlite3.Error), \
                contextlib.closing(_connect(_sqlite_path(registry_uri))) as db:
            revision = _schema_revision(db)
    return {"answer": _comparable(mv), "mlflow": _mlflow_version(), "schema": revision}


def confirm(kept: dict[str, Any], registry_uri: str, ref: ModelRef) -> ModelVersion | None:
    """The version `kept` (a `record`) holds if the registry still answers exactly that, else
    None."""
    answer = kept.get("answer")
    if (ref.alias or "").lower() == "latest" or kept.get("mlflow") != _mlflow_version():
        return None
    try:
        if registry_uri.startswith("sqlite:///"):
            with contextlib.closing(_connect(_sqlite_path(registry_uri))) as db:
                found = (_from_sqlite(db, ref) if kept.get("schema") is not None
                         and kept["schema"] == _schema_revision(db) else None)
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


def _schema_revision(db: sqlite3.Connection) -> str | None:
    rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if len(rows) == 1 else None


def _from_sqlite(db: sqlite3.Connection, ref: ModelRef) -> ModelVersion | None:
    """The version as MLflow's SqlAlchemyStore reads it: not deleted, in the default workspace."""
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


def _comparable(mv: ModelVersion) -> dict[str, Any]:
    """What must not have changed: everything but how the version was asked for."""
    return {**asdict(mv), "aliases": sorted(mv.aliases), "requested_as": None}


def _mlflow_version() -> str | None:
    try:
        return metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        return None
