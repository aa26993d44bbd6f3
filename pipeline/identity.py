"""The code version an image is built from: the git commit of the service code.

A clean tree gives the short sha (`1a2b3c4`); a dirty tree appends `-dirty-` and a hash of
the uncommitted changes, so two different dirty builds never share a tag.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError


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
