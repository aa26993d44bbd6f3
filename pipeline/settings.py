"""The one place that reads environment variables.

Everything else receives a `Settings` object. Variables:

- `BENTOSHIP_HOME`: project state folder (default `.bentoship` in the working directory):
  the embedded MLflow store, the BentoML store, prepared wheels.
- `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI`: any MLflow tracking/registry URI; by default a
  SQLite file in the state folder with artifacts beside it.
- `BENTOSHIP_REGISTRY`: OCI registry host[:port] images are pushed to (default `127.0.0.1:5000`).
- `BENTOSHIP_WEBHOOK_SECRET`: the secret of the MLflow registry webhook that `bentoship ci
  webhook` verifies deliveries with (HMAC-SHA256); the receiver refuses to start without it.
- `DOCKER_HOST`: read by the Docker SDK itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_REGISTRY = "127.0.0.1:5000"


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    registry_uri: str
    oci_registry: str
    webhook_secret: str = field(default="", repr=False)  # never printed with the settings

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def wheel_cache(self) -> Path:
        return self.home / "wheels"

    @property
    def webhook_dir(self) -> Path:
        """The webhook receiver's delivery journal (duplicates, resumable deliveries)."""
        return self.home / "webhook"

    @property
    def uses_embedded_store(self) -> bool:
        return self.tracking_uri.startswith("sqlite:///") and self.tracking_uri.endswith(
            str(self.home / "mlflow.db")
        )


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("BENTOSHIP_HOME", ".bentoship")).resolve()
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    registry_uri = env.get("MLFLOW_REGISTRY_URI") or tracking_uri
    return Settings(
        home=home,
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
        oci_registry=env.get("BENTOSHIP_REGISTRY", DEFAULT_REGISTRY),
        webhook_secret=env.get("BENTOSHIP_WEBHOOK_SECRET", ""),
    )
