"""Every error the pipeline raises on purpose, and the one place foreign errors are mapped.

The CLI turns these into `exit_code` (click's style: the code lives on the class) with the
message; anything else is a bug and keeps its traceback.

    PipelineError                  exit 1: a failure the user can act on
    ├── ConfigError                bad configuration or conflicting options
    ├── ModelRegistryError         talking to the MLflow Model Registry
    │   ├── ModelNotFoundError     unknown model name, alias or version
    │   ├── VersionNotReadyError   the version's status is not READY
    │   └── ArtifactError          artifacts missing, broken or tampered with
    ├── DockerError                the Docker engine or an image
    │   ├── EngineUnavailableError no engine reachable
    │   ├── ImageBuildError        `docker build` failed
    │   ├── SmokeTestError         the built container did not serve
    │   └── PushError              the OCI registry refused the push or a lookup
    │       └── RegistryUnreachable    the registry does not answer at all
    ├── ReleaseError               rendering or recording a release
    │   ├── LedgerUnavailable      a rollback was rendered, the ledger could not record it
    │   ├── ReleaseNotFound        no recorded release has this id (or prefix)
    │   ├── BadTransition          a release's status cannot change to the one asked for
    │   ├── RehearsalFailed        `release --rehearse`: the canary failed here; not handed off
    │   └── ReleaseConflict        another release of the same service got in the way
    │       ├── LeaseHeld          its release lease is held: waited --wait, names the holder
    │       └── LeaseLost          this release's lease lapsed or was taken: nothing recorded
    └── WebhookRejected            a webhook delivery that is not provably from our MLflow

Docker SDK and MLflow exceptions become these in one place, `map_exceptions` (httpx's
`_exceptions.map_exceptions` style): a module says which of our errors a foreign failure
means and what it was doing, and never catches `docker.errors` or `MlflowException` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""

    exit_code = 1


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


class RegistryUnreachable(PushError):
    """The registry does not answer (connection refused, timeout, bad TLS)."""


class ReleaseError(PipelineError):
    """Rendering or recording a release failed."""


class LedgerUnavailable(ReleaseError):
    """The rollback was rendered, but the ledger (MLflow) could not record it.

    `result` holds what was rendered (a `pipeline.flows.RollbackResult`), so the CLI still
    prints it.
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class ReleaseNotFound(ReleaseError):
    """No recorded release has this id, or no release is recorded at all."""


class BadTransition(ReleaseError):
    """The release's current status does not allow the status asked for."""


class RehearsalFailed(ReleaseError):
    """The release's canary, rehearsed here, did not pass: recorded as rehearsal_failed."""


class ReleaseConflict(ReleaseError):
    """Another release of the same service: production moved, or the lease is not ours."""


class LeaseHeld(ReleaseConflict):
    """The service's release lease is held by another release; `holder` says by whom.

    `holder` is a `pipeline.release.lease.Holder` (CI job, host, pid, since, expires).
    """

    def __init__(self, message: str, holder: Any) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(ReleaseConflict):
    """This release's lease expired or was taken over before the release was recorded."""


WebhookReason = Literal[
    "missing_header", "malformed_header", "bad_signature", "stale_timestamp", "malformed_body"
]


class WebhookRejected(PipelineError):
    """A delivery that is not provably from our MLflow, or that we cannot read.

    `reason` is one of `missing_header`, `malformed_header`, `bad_signature`,
    `stale_timestamp`, `malformed_body`; the message says more.
    """

    def __init__(self, reason: WebhookReason, message: str) -> None:
        super().__init__(message)
        self.reason: WebhookReason = reason


# --- foreign exceptions ---------------------------------------------------------------------------

Describe = Callable[[BaseException], str]


def _foreign(kind: str) -> tuple[type[BaseException], ...]:
    """The exception classes of one integrated system, imported only when needed."""
    if kind == "docker":
        import docker.errors

        return (docker.errors.DockerException,)
    if kind == "docker-api":
        import docker.errors

        return (docker.errors.APIError,)
    if kind == "docker-connection":  # the engine went away mid-request (restarted, killed)
        import requests.exceptions
        import urllib3.exceptions

        return (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.ProtocolError)
    if kind == "mlflow":
        from mlflow.exceptions import MlflowException

        return (MlflowException,)
    raise ValueError(f"unknown kind of foreign exception {kind!r}")


@contextmanager
def map_exceptions(mapping: Mapping[str, tuple[type[PipelineError], Describe]]) -> Iterator[None]:
    """Re-raise a Docker or MLflow exception as the PipelineError `mapping` names for it.

    `mapping` maps a kind (`docker`: any Docker SDK error, `docker-api`: the engine answered
    with an error, `docker-connection`: the engine's connection broke mid-request, `mlflow`:
    any MlflowException) to the error class and a function that
    words the message from the original exception, which stays attached as `__cause__`::

        with map_exceptions({"docker-api": (PushError, lambda e: f"push failed: {e}")}):
            client.images.push(...)
    """
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        for kind, (error, describe) in mapping.items():
            if isinstance(exc, _foreign(kind)):
                raise error(describe(exc)) from exc
        raise


def explanation(exc: BaseException) -> str:
    """The engine's own words for a Docker APIError (its `explanation`), else `str(exc)`."""
    return str(getattr(exc, "explanation", None) or exc)
