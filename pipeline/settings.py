"""The environment, read once (`load_settings`): everything else receives a `Settings` object.

Variables:

- `BENTOSHIP_HOME`: project state folder (default `.bentoship` in the working directory):
  the embedded MLflow store, the BentoML store, prepared wheels, the build cache (`cache/`).
- `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI`: any MLflow tracking/registry URI; by default a
  SQLite file in the state folder with artifacts beside it.
- `BENTOSHIP_REGISTRY`: OCI registry host[:port] images are pushed to (default `127.0.0.1:5000`).
- `BENTOSHIP_WEBHOOK_SECRET`: the secret of the MLflow registry webhook that `bentoship ci
  webhook` verifies deliveries with (HMAC-SHA256); the receiver refuses to start without it.
- `BENTOSHIP_LEASE_TTL`: seconds a release lease lives without renewal (default 120; the
  holder renews it every third of that). A crashed release blocks others this long at most.
- `BENTOSHIP_CI_JOB`: who is releasing, as the lease names it to a release that waits; by
  default the CI job's URL from GitHub Actions (`GITHUB_SERVER_URL`, `GITHUB_REPOSITORY`,
  `GITHUB_RUN_ID`, `GITHUB_JOB`), Jenkins (`BUILD_URL`) or GitLab (`CI_JOB_URL`).
- `DOCKER_CONFIG`: the folder of the Docker config (`config.json`) whose registry credentials
  (and credential helpers) push and registry lookups use; default `~/.docker`.
- `DOCKER_HOST`: read by the Docker SDK itself.

bentoship.toml, the project's own configuration, is `pipeline/config.py`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

DEFAULT_REGISTRY = "127.0.0.1:5000"


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    registry_uri: str
    oci_registry: str
    webhook_secret: str = field(default="", repr=False)  # never printed with the settings
    lease_ttl_s: float = 120.0
    ci_job: str = ""
    docker_config: Path | None = None  # the folder holding config.json; None: ~/.docker

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
    def build_cache(self) -> Path:
        """What a build keeps for the next one (verified model artifacts, plans):
        `pipeline/build/cache.py`. Removing it is always safe."""
        return self.home / "cache"

    @property
    def webhook_dir(self) -> Path:
        """The webhook receiver's delivery journal (duplicates, resumable deliveries)."""
        return self.home / "webhook"

    @property
    def embedded_artifact_root(self) -> Path | None:
        """Where new MLflow runs put artifacts: the state folder with the embedded store, else
        None (the tracking server decides)."""
        return self.artifact_root if self.uses_embedded_store else None

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
        lease_ttl_s=_seconds(env, "BENTOSHIP_LEASE_TTL", 120.0, minimum=3.0),
        ci_job=_ci_job(env),
        docker_config=Path(env["DOCKER_CONFIG"]).expanduser() if env.get("DOCKER_CONFIG")
        else None,
    )


def _seconds(env: Mapping[str, str], key: str, default: float, *, minimum: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < minimum:
        raise ConfigError(f"{key}={raw!r}: use a number of seconds, at least {minimum:g}")
    return value


def _ci_job(env: Mapping[str, str]) -> str:
    """The CI job this process runs in, as a URL where the CI system gives one."""
    if env.get("BENTOSHIP_CI_JOB"):
        return env["BENTOSHIP_CI_JOB"]
    if env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        job = f" ({env['GITHUB_JOB']})" if env.get("GITHUB_JOB") else ""
        return f"{server}/{env.get('GITHUB_REPOSITORY', '?')}/actions/runs/{env['GITHUB_RUN_ID']}{job}"
    return env.get("BUILD_URL") or env.get("CI_JOB_URL") or ""
