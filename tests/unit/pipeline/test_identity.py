from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.identity import code_version, image_tag, source_url


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "service.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_clean_tree_is_the_short_sha(repo: Path) -> None:
    version = code_version(repo)
    assert not version.dirty
    assert version.label == version.sha[:7]
    assert version.revision == version.sha


def test_dirty_trees_are_marked_and_told_apart(repo: Path) -> None:
    (repo / "service.py").write_text("x = 2\n")
    first = code_version(repo)
    (repo / "service.py").write_text("x = 3\n")
    second = code_version(repo)
    assert first.dirty and first.label.startswith(f"{first.sha[:7]}-dirty-")
    assert first.revision.endswith("-dirty")
    assert first.label != second.label


def test_untracked_files_make_the_tree_dirty(repo: Path) -> None:
    (repo / "hooks.py").write_text("y = 1\n")
    assert code_version(repo).dirty


def test_not_a_git_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a git checkout"):
        code_version(tmp_path)


def test_source_url_drops_credentials_and_local_paths(repo: Path) -> None:
    assert source_url(repo) == "urn:bentoship:local"
    git(repo, "remote", "add", "origin", "https://bot:s3cret@git.example.com/ml/bentoship.git")
    assert source_url(repo) == "https://git.example.com/ml/bentoship.git"


def test_tag_carries_both_model_versions_and_the_code_version() -> None:
    assert image_tag("1", "2", "1a2b3c4") == "ctl-v1.trt-v2.code-1a2b3c4"
    assert image_tag("12", None, "1a2b3c4-dirty-abcdef") == "ctl-v12.code-1a2b3c4-dirty-abcdef"
