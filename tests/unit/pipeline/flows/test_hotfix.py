"""The commit flow: deploy flags decide, and a hotfix ships exactly the clean checked-out HEAD."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline import flows
from pipeline.errors import ConfigError
from tests.unit.pipeline.flows.support import invoke


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Fix the docs\n\nNo flags here.", ("no deploy flags in the commit message: nothing to "
         "deploy. A code-only deploy needs `[deploy: code-only]`")),
        ("Tidy up [deploy: skip]", "skip requested by [deploy: skip]: not deploying this commit"),
        ("Tidy up [skip deploy]", "skip requested by [skip deploy]"),
        ("Explain `[deploy: code-only]` in the docs", "no deploy flags"),
    ],
)
def test_on_commit_without_the_flag_does_nothing_and_says_why(
    tmp_path: Path, message: str, reason: str
) -> None:
    result = invoke(["ci", "on-commit", "--message", message, "--sha", "0" * 40,
                      "--out", str(tmp_path / "out"), "--output", "json"], tmp_path)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["action"] == "skipped" and answer["release"] is None
    assert answer["reason"].startswith(reason)
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_on_commit_with_conflicting_flags_fails_naming_both(tmp_path: Path) -> None:
    result = invoke(["ci", "on-commit", "--message", "x [deploy: code-only] [deploy: skip]",
                      "--sha", "0" * 40], tmp_path)
    assert result.exit_code == 1
    assert "asks for both a code-only deploy and no deploy" in result.output


def test_on_commit_refuses_a_sha_that_is_not_head(tmp_path: Path) -> None:
    result = invoke(["ci", "on-commit", "--message", "Fix [deploy: code-only]",
                      "--sha", "0000000"], tmp_path)
    assert result.exit_code == 1
    assert "--sha 0000000 is not the checked-out commit: HEAD of" in result.output
    assert not (tmp_path / "home").exists()


@pytest.fixture
def git_checkout(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "checkout"
    (root / "services").mkdir(parents=True)
    (root / "services" / "service.py").write_text("VERSION = 1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    return root, git("rev-parse", "HEAD")


def test_check_commit_accepts_head_by_full_or_short_sha(git_checkout: tuple[Path, str]) -> None:
    root, sha = git_checkout
    assert flows.check_commit(root, sha) == sha[:7]
    assert flows.check_commit(root, sha[:7].upper()) == sha[:7]


def test_check_commit_refuses_a_dirty_checkout(git_checkout: tuple[Path, str]) -> None:
    root, sha = git_checkout
    (root / "services" / "service.py").write_text("VERSION = 2\n")
    with pytest.raises(ConfigError, match=r"has uncommitted changes \(code version "
                       rf"{sha[:7]}-dirty-[0-9a-f]{{6}}\): a hotfix ships exactly commit"):
        flows.check_commit(root, sha)


def test_check_commit_refuses_what_is_not_a_sha(git_checkout: tuple[Path, str]) -> None:
    root, _ = git_checkout
    with pytest.raises(ConfigError, match="is not a git commit sha"):
        flows.check_commit(root, "main")

