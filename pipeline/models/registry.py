"""Resolving model references against the MLflow Model Registry.

A reference is `NAME@ALIAS`, `NAME/VERSION` or `models:/NAME/VERSION` (or `models:/NAME@ALIAS`).
Aliases are resolved to an exact version once, at the start of a build; everything after
that works with the `ModelVersion` it returned, never with the alias again. Resolving a
reference is one registry round trip (the version, its aliases and its tags, the recorded
manifest digest among them); listing what exists instead costs more, and only on a miss.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pipeline.errors import ArtifactError, ConfigError, ModelNotFoundError, VersionNotReadyError
from pipeline.models.integrity import DIGEST_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.settings import Settings

_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_REF = re.compile(
    r"^(?:models:/)?(?P<name>[^@/]+?)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>[^/@]+))$"
)


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, before it is resolved."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelVersion:
    """One exact, READY registered model version."""

    name: str
    version: str
    run_id: str
    source: str
    aliases: tuple[str, ...]
    requested_as: str
    # The artifacts' manifest digest the registry records (integrity.DIGEST_TAG), None before
    # the version's first build records it.
    manifest_sha256: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


def parse_ref(text: str) -> ModelRef:
    """Parse `NAME@ALIAS` or `NAME/VERSION`; a bad shape is a usage error."""
    match = _REF.match(text.strip())
    if not match:
        raise ConfigError(
            f"cannot read model reference {text!r}: use NAME@ALIAS (e.g. demo-classifier@champion)"
            " or NAME/VERSION (e.g. demo-classifier/3)"
        )
    version = match["version"]
    if version is not None and not version.isdigit():
        raise ConfigError(f"model version must be a number in {text!r}, got {version!r}")
    return ModelRef(name=match["name"], alias=match["alias"], version=version)


def client_for(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def settings_client(settings: Settings) -> MlflowClient:
    """The MLflow client of `settings` (the embedded store's folder made first)."""
    if settings.uses_embedded_store:
        settings.home.mkdir(parents=True, exist_ok=True)
    return client_for(settings.tracking_uri, settings.registry_uri)


def resolve(client: MlflowClient, ref: ModelRef | str) -> ModelVersion:
    """Resolve a reference to one READY version, or explain what exists instead."""
    from mlflow.exceptions import MlflowException

    if isinstance(ref, str):
        ref = parse_ref(ref)
    try:
        if ref.alias is not None:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        _explain_missing(client, ref)
    if mv.status != "READY":
        raise VersionNotReadyError(
            f"{ref.name}/{mv.version} has status {mv.status}, not READY"
            + (f" ({mv.status_message})" if mv.status_message else "")
            + ": wait for registration to finish or pick another version"
        )
    return ModelVersion(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        source=mv.source or "",
        aliases=tuple(sorted(getattr(mv, "aliases", None) or ())),
        requested_as=str(ref),
        manifest_sha256=(mv.tags or {}).get(DIGEST_TAG),
    )


def _explain_missing(client: MlflowClient, ref: ModelRef) -> NoReturn:
    """Raise ModelNotFoundError saying what exists instead of `ref` (a model, or a version)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        known = ", ".join(names) if names else "none: run `bentoship demo train` for a demo model"
        raise ModelNotFoundError(
            f"no registered model named {ref.name!r} in {client.tracking_uri}. "
            f"Registered models: {known}"
        ) from None
    aliases: dict[str, str] = dict(getattr(registered, "aliases", {}) or {})
    versions = sorted(
        (str(v.version) for v in client.search_model_versions(f"name='{ref.name}'")), key=int
    )
    alias_text = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    what = f"alias @{ref.alias}" if ref.alias else f"version {ref.version}"
    raise ModelNotFoundError(
        f"model {ref.name!r} has no {what}. Versions: {', '.join(versions) or 'none'}; "
        f"aliases: {alias_text}"
    ) from None


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Return the experiment's id, creating it (artifacts under `artifact_root`) if needed.

    With the embedded SQLite store MLflow would otherwise put artifacts in `./mlruns` of
    whatever directory the command ran in.
    """
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = (artifact_root / name).as_uri() if artifact_root else None
    return str(client.create_experiment(name, artifact_location=location))


@contextmanager
def fluent_uris(tracking_uri: str, registry_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at the store for the duration, then put everything back.

    `log_model(registered_model_name=...)` registers through the process-wide URIs, and
    MLflow's setters also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into os.environ,
    which bentoship's settings read: left as they are, they would redirect later commands.
    """
    import mlflow

    saved = {key: os.environ.get(key) for key in _URI_ENV}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    try:
        yield
    finally:
        # MLflow's setters keep their value in os.environ as well, so the variables say what
        # was set before; None puts a setter back to "not set" (resolved from the environment).
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def download(client: MlflowClient, mv: ModelVersion, dest: Path) -> Path:
    """Download the version's MLflow model directory into `dest` and check it is a model."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dest.mkdir(parents=True, exist_ok=True)
    try:
        # The version's own artifact location: a `models:/` URI would be resolved against the
        # process-wide registry URI instead of this client's.
        location = client.get_model_version_download_uri(mv.name, mv.version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location,
            dst_path=str(dest),
            tracking_uri=client.tracking_uri,
        )
    except (MlflowException, OSError) as exc:
        raise ArtifactError(f"cannot download the artifacts of {mv}: {exc}") from exc
    path = Path(local)
    if not (path / "MLmodel").is_file():
        raise ArtifactError(
            f"the artifacts of {mv} (source {mv.source}) have no MLmodel file: "
            "it is not an MLflow model, or its artifacts were deleted"
        )
    return path


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
