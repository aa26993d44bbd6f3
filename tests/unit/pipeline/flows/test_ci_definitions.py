"""ci/github-actions.yml and ci/Jenkinsfile: the same `bentoship` commands, and only those."""

from __future__ import annotations

import re
import shlex
from typing import Any

import click
import yaml

from pipeline.cli import cli
from tests.unit.pipeline.flows.support import ROOT

PLACEHOLDERS = {
    "COMMIT_MESSAGE": "Fix the hook [deploy: code-only]",
    "COMMIT_SHA": "0" * 40,
    "MODEL_NAME": "demo-classifier",
    "MODEL_VERSION": "3",
    "ROLLBACK_TO": "",
    "RELEASE_DIR": "/tmp/bentoship",
}


def github_workflow() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "ci" / "github-actions.yml").read_text()))


def _commands(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.strip().startswith("bentoship ")]


def github_commands() -> list[str]:
    return [command for job in github_workflow()["jobs"].values() for step in job["steps"]
            for command in _commands(step.get("run", ""))]


def jenkins_commands() -> list[str]:
    return _commands((ROOT / "ci" / "Jenkinsfile").read_text())


def test_both_ci_definitions_run_the_same_bentoship_commands() -> None:
    assert len(github_commands()) == 3
    assert sorted(github_commands()) == sorted(jenkins_commands())


def test_ci_definitions_call_only_ci_and_rollback_commands_that_exist() -> None:
    for command in github_commands():
        line = command.split(" | ")[0]
        line = re.sub(r'"\$([A-Z_]+)([^"]*)"', lambda m: shlex.quote(PLACEHOLDERS[m[1]] + m[2]),
                      line)
        args = shlex.split(line)[1:]
        group: click.Command = cli
        path = []
        while isinstance(group, click.Group):
            path.append(args[0])
            group = group.commands[args.pop(0)]
        assert path in (["ci", "on-commit"], ["ci", "on-model-registered"], ["rollback"]), path
        ctx = group.make_context(" ".join(path), args)  # raises on unknown or missing options
        assert ctx.params["output"] == "json"
        assert str(ctx.params["outdir"]).startswith("/tmp/bentoship/")  # outside the checkout


ALLOWED = ("bash ci/setup.sh", 'echo "$PWD/.venv/bin" >> "$GITHUB_PATH"', 'mkdir -p "$RELEASE_DIR"')


def test_github_steps_hold_no_logic_and_no_expression_injection() -> None:
    for name, job in github_workflow()["jobs"].items():
        for step in job["steps"]:
            script = step.get("run", "")
            assert "${{" not in script, f"{name}: pass values through env:, not into the script"
            for line in script.splitlines():
                line = line.strip()
                assert (not line or line.startswith("bentoship ") or line in ALLOWED), (name, line)
