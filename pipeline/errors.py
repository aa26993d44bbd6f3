"""Every error the pipeline raises on purpose.

The CLI turns these into exit code 1 with the message; anything else is a bug and
keeps its traceback.

    PipelineError
    ├── ConfigError            bad configuration or conflicting options
    ├── ModelRegistryError     talking to the MLflow Model Registry
    │   ├── ModelNotFoundError     unknown model name, alias or version
    │   ├── VersionNotReadyError   the version's status is not READY
    │   └── ArtifactError          artifacts missing, broken or tampered with
    ├── DockerError            the Docker engine or an image
    │   ├── EngineUnavailableError no engine reachable
    │   ├── ImageBuildError        `docker build` failed
    │   ├── SmokeTestError         the built container did not serve
    │   └── PushError              the OCI registry refused or is down
    └── ReleaseError           rendering or recording a release
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """Configuration or options are invalid; the message names the key."""


class ModelRegistryError(PipelineError):
    """The MLflow Model Registry could not give what was asked."""


class ModelNotFoundError(ModelRegistryError):
    """Unknown registered model, alias or version."""


class VersionNotReadyError(ModelRegistryError):
    """The model version exists but its status is not READY."""


class ArtifactError(ModelRegistryError):
    """A model version's artifacts are missing, unreadable or changed since first build."""


class DockerError(PipelineError):
    """The Docker engine or an image misbehaved."""


class EngineUnavailableError(DockerError):
    """No Docker engine answers."""


class ImageBuildError(DockerError):
    """Building an image failed."""


class SmokeTestError(DockerError):
    """The built container did not become ready or answered wrongly."""


class PushError(DockerError):
    """The OCI registry is unreachable or refused the push."""


class ReleaseError(PipelineError):
    """Rendering or recording a release failed."""
