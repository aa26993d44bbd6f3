"""The model versions a release or an image carries: compared, described, read from labels.

A flow trusts the registry's labels of an image only once they name the models the ledger
recorded for it; `remote_identity` reads them without pulling the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.build import oci
from pipeline.errors import ReleaseError
from pipeline.identity import ImageIdentity

__all__ = ["describe_models", "remote_identity", "same_models"]

Models = Mapping[str, Mapping[str, str]]  # variant -> {"name": ..., "version": ..., ...}


def same_models(a: Models, b: Models) -> bool:
    """Whether both name the same model name and version for each variant (run ids aside)."""

    def key(models: Models) -> dict[str, tuple[str, str]]:
        return {v: (m.get("name", ""), m.get("version", "")) for v, m in models.items()}

    return key(a) == key(b)


def describe_models(models: Models) -> str:
    """`control=NAME/VERSION, treatment=NAME/VERSION`, for messages."""
    return ", ".join(f"{v}={m.get('name')}/{m.get('version')}" for v, m in sorted(models.items()))


def remote_identity(
    repository: str, digest: str, docker_config: Path | None = None
) -> ImageIdentity:
    """The labels of `repository@digest` as the registry serves them; ReleaseError if gone."""
    found = oci.find(repository, digest, docker_config=docker_config)
    if found is None:
        raise ReleaseError(
            f"{repository}@{digest} is not in the registry any more (deleted or garbage-"
            "collected): it cannot be deployed. `bentoship releases list` shows other releases."
        )
    return ImageIdentity.from_labels(found.labels)
