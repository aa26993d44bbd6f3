"""What is released: one image, referred to by digest, and what is in it (`ReleaseSpec`).

Images are referred to by digest everywhere; a tag is refused. `validate_spec` names the first
field that cannot be released; every release file is rendered from a validated spec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import ReleaseError
from pipeline.identity import TAG_SCHEME, parse_tag

TRACKS = ("baseline", "canary", "production")
KINDS = ("model", "hotfix", "rollback")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)*$")
_VARIANT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class ReleaseSpec:
    """One image to release, by digest, and what is in it."""

    name: str
    repository: str
    digest: str
    baseline_digest: str | None
    model_versions: Mapping[str, Mapping[str, str]]
    code_version: str
    image_tag: str
    kind: Literal["model", "hotfix", "rollback"] = "model"
    skip_canary: bool = False
    openapi: Mapping[str, Any] | None = field(default=None, compare=False)
    # Production's models (the release it is compared with), when known: a canary variant that
    # serves the same model as one of production's is compared with that one, else with
    # production's control.
    baseline_model_versions: Mapping[str, Mapping[str, str]] | None = field(
        default=None, compare=False
    )

    @property
    def image(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def baseline_image(self) -> str | None:
        return f"{self.repository}@{self.baseline_digest}" if self.baseline_digest else None

    @property
    def mode(self) -> Literal["canary", "direct"]:
        return "direct" if self.baseline_digest is None or self.skip_canary else "canary"


def parse_image_reference(reference: str, option: str = "image") -> tuple[str, str]:
    """Split `REPO@sha256:<64 hex>` into repository and digest; a tag is refused."""
    repository, at, digest = reference.strip().partition("@")
    if not at:
        raise ReleaseError(
            f"{option}: {reference!r} is not referred to by digest; a release needs "
            "REPOSITORY@sha256:<64 hex digits> (the digest `docker push` printed), never a tag"
        )
    _check_repository(repository, option)
    _check_digest(digest, option)
    return repository, digest


def baseline_digest_in(repository: str, baseline: tuple[str, str] | None) -> str | None:
    """The digest of `baseline` (a parsed REPOSITORY@sha256 reference), if it is in `repository`.

    A canary compares two images of one repository; a baseline from another one is refused.
    """
    if baseline is None:
        return None
    if baseline[0] != repository:
        raise ReleaseError(
            f"the baseline is in {baseline[0]}, the image in {repository}: a canary compares "
            "two images of one repository"
        )
    return baseline[1]


def _check_repository(repository: str, key: str) -> None:
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        raise ReleaseError(
            f"{key}: {repository!r} carries a tag; give the repository alone and the image by "
            "digest (REPOSITORY@sha256:...)"
        )
    if not _REPOSITORY.match(repository):
        raise ReleaseError(
            f"{key}: {repository!r} is not an image repository such as 127.0.0.1:5000/demo-classifier"
        )


def _check_digest(digest: str, key: str) -> None:
    if not _DIGEST.match(digest):
        raise ReleaseError(
            f"{key}: {digest!r} is not a digest: use sha256:<64 lowercase hex digits>"
        )


def validate_spec(spec: ReleaseSpec) -> None:
    """Raise ReleaseError naming the first field that cannot be released."""
    if len(spec.name) > 54 or not _DNS_LABEL.match(spec.name):
        raise ReleaseError(
            f"name: {spec.name!r} must be a DNS-1123 label of at most 54 characters (lowercase "
            "letters, digits, '-') so that '<name>-baseline' is still a valid Kubernetes name"
        )
    _check_repository(spec.repository, "repository")
    _check_digest(spec.digest, "digest")
    if spec.baseline_digest is not None:
        _check_digest(spec.baseline_digest, "baseline_digest")
        if spec.baseline_digest == spec.digest:
            raise ReleaseError(
                f"baseline_digest: the new image {spec.image} is already production; "
                "there is nothing to release"
            )
    if spec.kind not in KINDS:
        raise ReleaseError(f"kind: {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.skip_canary and spec.kind != "rollback":
        raise ReleaseError(
            f"skip_canary: only a rollback skips the canary analysis, this release is a {spec.kind}"
        )
    if parse_tag(spec.image_tag) is None or len(spec.image_tag) > 63:
        raise ReleaseError(
            f"image_tag: {spec.image_tag!r} does not follow the tag scheme "
            f"{TAG_SCHEME} (docs/contracts.md, contract 6)"
        )
    if not spec.code_version.strip():
        raise ReleaseError("code_version: must not be empty")
    if not spec.model_versions:
        raise ReleaseError("model_versions: a release holds at least the control model")
    for variant, model in spec.model_versions.items():
        if not _VARIANT.match(variant):
            raise ReleaseError(
                f"model_versions: variant {variant!r} must be lowercase letters, digits and '_'"
            )
        missing = {"name", "version"} - {k for k, v in model.items() if str(v).strip()}
        if missing:
            raise ReleaseError(f"model_versions.{variant}: missing {', '.join(sorted(missing))}")
