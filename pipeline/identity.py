"""The image identity contract: what an image is, written once and read back the same way.

docs/contracts.md (contract 6) is the prose of this module:

- the tag `ctl-v<N>[.trt-v<M>].code-<sha7>[-dirty-<hash6>]`, formatted by `image_tag` and parsed
  by `parse_tag` (the one regex, `TAG`);
- the labels (`image_labels` writes them, `ImageIdentity.from_labels` reads them back: no other
  module reads an `io.bentoship.*` label by its string key);
- the code version (`code_version`): the git commit of the service code. A clean tree gives the
  short sha (`1a2b3c4`); a dirty tree appends `-dirty-` and a hash of the uncommitted changes,
  so two different dirty builds never share a tag;
- where things are inside the image (`BENTO_DIR`, `BENTOML_HOME`), its port and its user, which
  the Dockerfile, the smoke test and the Kubernetes manifests must agree on (Dockerfile.base
  creates uid `UID`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, ImageBuildError

PORT = 3000
UID = 10001  # the non-root user of Dockerfile.base; its group id is the same
BENTO_DIR = "/home/bentoship/bento"
BENTOML_HOME = "/home/bentoship/bentoml"
LABEL_PREFIX = "io.bentoship"
# The service's OpenAPI document, stored in the code layer next to bento.yaml, and the label
# with the SHA-256 of its canonical JSON (`openapi_sha256`).
OPENAPI_FILE = "openapi.json"
OPENAPI_LABEL = f"{LABEL_PREFIX}.openapi_sha256"
# Where the build puts the service configuration and the spec inside the image.
CONFIG_IN_IMAGE = f"{BENTO_DIR}/src/services/bentoship.json"
OPENAPI_IN_IMAGE = f"{BENTO_DIR}/{OPENAPI_FILE}"
# Labels that say what an image was built from; two images agreeing on them are the same build
# (`org.opencontainers.image.created` and the like do not count).
_IDENTITY = ("config_sha256", "base", "requirements_sha256", "code.version")
_MODEL_FIELDS = ("name", "version", "run_id")

TAG = re.compile(
    r"^ctl-v(?P<control>\d+)(?:\.trt-v(?P<treatment>\d+))?"
    r"\.code-(?P<code>[0-9a-f]{7}(?:-dirty-[0-9a-f]{6})?)$"
)
TAG_SCHEME = "ctl-v<N>[.trt-v<M>].code-<sha7>[-dirty-<hash6>]"


# --- the tag --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTag:
    control: str
    treatment: str | None
    code: str

    def check_versions(self, control: str, treatment: str | None, *, tag_text: str) -> None:
        """Refuse model versions that differ from the ones this tag names."""
        if (self.control, self.treatment) != (control, treatment):
            raise ConfigError(
                f"--tag {tag_text} names control v{self.control}"
                + (f" and treatment v{self.treatment}" if self.treatment else " and no treatment")
                + f", but the options give control v{control}"
                + (f" and treatment v{treatment}" if treatment else " and no treatment")
            )


def image_tag(control_version: str, treatment_version: str | None, code_label: str) -> str:
    tag = f"ctl-v{control_version}"
    if treatment_version is not None:
        tag += f".trt-v{treatment_version}"
    tag += f".code-{code_label}"
    if len(tag) > 128:
        raise ImageBuildError(f"image tag {tag!r} is longer than Docker's 128 characters")
    return tag


def parse_tag(text: str) -> ImageTag | None:
    """The versions a tag names, or None when `text` does not follow the tag scheme."""
    match = TAG.match(text)
    if match is None:
        return None
    return ImageTag(match["control"], match["treatment"], match["code"])


# --- the labels -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLayer:
    variant: str
    registered_name: str
    version: str
    run_id: str
    manifest_sha256: str


def image_labels(
    *,
    tag: str,
    name: str,
    revision: str,
    code_label: str,
    source: str,
    models: Sequence[ModelLayer],
    weights: Mapping[str, int],
    allow_pickle: bool,
    requirements_sha256: str,
    base_ref: str,
    config_sha256: str,
    trusted_types: Sequence[str] = (),
) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.title": name,
        f"{LABEL_PREFIX}.code.version": code_label,
        f"{LABEL_PREFIX}.weights": ",".join(f"{k}={v}" for k, v in weights.items()),
        f"{LABEL_PREFIX}.allow_pickle": str(allow_pickle).lower(),
        f"{LABEL_PREFIX}.trusted_types": ",".join(sorted(trusted_types)),
        f"{LABEL_PREFIX}.requirements_sha256": requirements_sha256,
        f"{LABEL_PREFIX}.base": base_ref,
        f"{LABEL_PREFIX}.config_sha256": config_sha256,
    }
    for m in models:
        prefix = f"{LABEL_PREFIX}.model.{m.variant}"
        labels[f"{prefix}.name"] = m.registered_name
        labels[f"{prefix}.version"] = m.version
        labels[f"{prefix}.run_id"] = m.run_id
        labels[f"{prefix}.manifest_sha256"] = m.manifest_sha256
    return labels


@dataclass(frozen=True)
class ImageIdentity:
    """An image's labels read back: what `image_labels` wrote, typed."""

    title: str
    tag: str
    code_version: str
    allow_pickle: bool
    trusted_types: tuple[str, ...]  # skops types the build trusted by name
    models: Mapping[str, Mapping[str, str]]  # variant -> {name, version, run_id}
    manifests: Mapping[str, str]  # variant -> the SHA-256 of its artifact manifest
    weights: Mapping[str, str]
    openapi_sha256: str | None
    labels: Mapping[str, str] = field(repr=False, compare=False)

    @classmethod
    def from_labels(cls, labels: Mapping[str, str] | None) -> ImageIdentity:
        labels = dict(labels or {})
        models: dict[str, dict[str, str]] = {}
        manifests: dict[str, str] = {}
        prefix = f"{LABEL_PREFIX}.model."
        for key, value in labels.items():
            if key.startswith(prefix):
                variant, _, part = key[len(prefix):].partition(".")
                if part in _MODEL_FIELDS:
                    models.setdefault(variant, {})[part] = value
                elif part == "manifest_sha256":
                    manifests[variant] = value
        weights = dict(
            part.split("=", 1)
            for part in labels.get(f"{LABEL_PREFIX}.weights", "").split(",")
            if "=" in part
        )
        return cls(
            title=labels.get("org.opencontainers.image.title", ""),
            tag=labels.get("org.opencontainers.image.version", ""),
            code_version=labels.get(f"{LABEL_PREFIX}.code.version", ""),
            allow_pickle=labels.get(f"{LABEL_PREFIX}.allow_pickle") == "true",
            trusted_types=tuple(t for t in labels.get(f"{LABEL_PREFIX}.trusted_types", "")
                                .split(",") if t),
            models=models,
            manifests=manifests,
            weights=weights,
            openapi_sha256=labels.get(OPENAPI_LABEL),
            labels=labels,
        )

    @property
    def treatment_weight(self) -> int | None:
        weight = self.weights.get("treatment", "")
        return int(weight) if weight.isdigit() else None


def differences(found: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """The identity labels (config, base, requirements, code, model manifests) that differ."""
    keys = [f"{LABEL_PREFIX}.{k}" for k in _IDENTITY]
    keys += sorted(k for k in wanted.keys() | found.keys() if k.endswith(".manifest_sha256")
                   and k.startswith(f"{LABEL_PREFIX}.model."))
    return [k for k in keys if found.get(k) != wanted.get(k)]


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The one byte form a JSON document is hashed in: sorted keys, no whitespace."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def openapi_sha256(spec: Mapping[str, Any]) -> str:
    """The value of the `io.bentoship.openapi_sha256` label for `spec`."""
    return hashlib.sha256(canonical_json(spec)).hexdigest()


# --- the code version -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeVersion:
    sha: str  # full commit sha, or "" outside git
    dirty: bool
    label: str  # what goes into tags: "1a2b3c4" or "1a2b3c4-dirty-9f8e7d"

    @property
    def revision(self) -> str:
        """Value for the org.opencontainers.image.revision label."""
        return f"{self.sha}-dirty" if self.dirty else self.sha


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


def code_version(root: Path) -> CodeVersion:
    """Describe the working tree at `root` (the folder holding `services/`)."""
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise ConfigError(
            f"{root} is not a git checkout with at least one commit: the code version of an "
            "image is its git commit. Commit the service code first."
        ) from exc
    status = _git(root, "status", "--porcelain", "--untracked-files=all")
    if not status.strip():
        return CodeVersion(sha=sha, dirty=False, label=sha[:7])
    digest = hashlib.sha256(_git(root, "diff", "HEAD", "--binary").encode())
    for line in sorted(status.splitlines()):
        if line.startswith("??"):
            path = root / line[3:]
            digest.update(line.encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return CodeVersion(sha=sha, dirty=True, label=f"{sha[:7]}-dirty-{digest.hexdigest()[:6]}")


def dirty_files(root: Path) -> list[str]:
    """The paths `git status` reports under `root`: changed tracked files first, then untracked."""
    status = _git(root, "status", "--porcelain", "--untracked-files=all")
    entries = {(line.startswith("??"), line[3:].split(" -> ")[-1])
               for line in status.splitlines() if line.strip()}
    return [path for _, path in sorted(entries)]


def check_clean(root: Path, *, allow_dirty: bool, what: str = "release") -> CodeVersion:
    """The code version of `root`; ConfigError naming the dirty files unless `allow_dirty`.

    An image built from uncommitted code carries `-dirty-<hash>` in its tag, and nobody can
    check that code out again: a release refuses it unless told otherwise.
    """
    code = code_version(root)
    if code.dirty and not allow_dirty:
        files = dirty_files(root)
        shown = "".join(f"\n  {path}" for path in files[:5])
        more = f"\n  ... and {len(files) - 5} more" if len(files) > 5 else ""
        raise ConfigError(
            f"refusing to {what} from a dirty work tree: {root} has {len(files)} uncommitted "
            f"file(s) (code version {code.label}):{shown}{more}\nIts code could never be "
            "checked out again. Commit them (or `git stash -u`) and run again; to release "
            "anyway, pass --allow-dirty (recorded in the ledger as allow_dirty=true). "
            "Nothing was built or recorded."
        )
    return code


def source_url(root: Path) -> str:
    """The repository URL for org.opencontainers.image.source, without credentials or host paths."""
    try:
        url = _git(root, "config", "--get", "remote.origin.url").strip()
    except subprocess.CalledProcessError:
        return "urn:bentoship:local"
    if "@" in url and "://" in url:  # https://user:token@host/... -> https://host/...
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://{rest.split('@', 1)[1]}"
    if url.startswith(("/", "file:", ".")):
        return "urn:bentoship:local"
    return url
