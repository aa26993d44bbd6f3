"""A release refuses a dirty work tree unless --allow-dirty, before it waits, builds or records."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import release_service
from pipeline.build.plan import BuildRequest
from pipeline.cli import cli
from pipeline.config import ReleaseConfig
from pipeline.errors import ConfigError
from pipeline.models.registry import settings_client
from pipeline.release import lease, ledger
from pipeline.settings import load_settings


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def dirty_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "service.py").write_text("x = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    (repo / "service.py").write_text("x = 2\n")
    for n in range(6):
        (repo / f"scratch-{n}.txt").write_text("notes\n")
    return repo


def test_a_dirty_tree_is_refused_naming_the_files_and_the_way_out(
    dirty_repo: Path, tmp_path: Path
) -> None:
    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path / "home")})
    with pytest.raises(ConfigError) as refused:
        release_service(BuildRequest(control="demo-classifier@champion"), settings,
                        ReleaseConfig(), tmp_path / "out", print, root=dirty_repo)
    message = str(refused.value)
    assert "refusing to release from a dirty work tree" in message
    assert "7 uncommitted file(s)" in message
    assert "scratch-0.txt" in message and "service.py" in message
    assert "... and 2 more" in message
    assert "--allow-dirty" in message and "git stash -u" in message
    client = settings_client(settings)
    assert ledger.list_releases(client) == []  # nothing recorded, no lease taken
    assert lease.current(client, "demo-classifier") is None
    assert not (tmp_path / "out").exists()


def test_allow_dirty_is_an_option_of_every_command_that_builds_a_release() -> None:
    for command in (["release"], ["ci", "on-model-registered"]):
        shown = CliRunner().invoke(cli, [*command, "--help"], catch_exceptions=False)
        assert "--allow-dirty" in shown.output and "--wait SECONDS" in shown.output
    for command in (["ci", "on-commit"], ["rollback"]):
        shown = CliRunner().invoke(cli, [*command, "--help"], catch_exceptions=False)
        assert "--wait SECONDS" in shown.output
