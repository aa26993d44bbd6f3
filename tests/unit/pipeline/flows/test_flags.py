"""Deploy flags read from commit messages: one row per message."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.flows.flags import CommitDecision, parse_commit_flags

NONE = ("none", False)
CODE_ONLY = ("deploy-code-only", False)
SKIP = ("skip", False)

MESSAGES: dict[str, tuple[str, tuple[str, bool]]] = {
    "no flags": ("Tune the classifier threshold\n\nBetter recall on the holdout set.", NONE),
    "empty message": ("", NONE),
    "code-only in the subject": ("fix: NaN in score [deploy: code-only]", CODE_ONLY),
    "code-only in the body": ("fix: NaN in score\n\nHotfix. [deploy: code-only]\n", CODE_ONLY),
    "upper case": ("FIX [DEPLOY: CODE-ONLY]", CODE_ONLY),
    "extra whitespace": ("fix [  Deploy :   code-only  ]", CODE_ONLY),
    "no whitespace": ("fix [deploy:code-only]", CODE_ONLY),
    "repeated flag": ("[deploy: code-only] fix\n\nagain: [Deploy: Code-Only]", CODE_ONLY),
    "skip": ("docs: typo [deploy: skip]", SKIP),
    "skip deploy": ("docs: typo [skip deploy]", SKIP),
    "skip deploy with extra spaces and capitals": ("docs [ Skip   Deploy ]", SKIP),
    "both skip spellings": ("docs [skip deploy]\n\n[deploy: skip]", SKIP),
    "allow breaking api": ("feat!: drop mean_texture [api: allow-breaking]", ("none", True)),
    "allow breaking with code-only": (
        "feat: new field [deploy: code-only] [api: allow-breaking]",
        ("deploy-code-only", True),
    ),
    "trailer code-only": ("fix: NaN\n\nHotfix for the scorer.\n\nDeploy: code-only", CODE_ONLY),
    "trailer skip among other trailers": (
        "docs: typo\n\nDeploy: skip\nSigned-off-by: A Dev <a@example.com>",
        SKIP,
    ),
    "trailer api, lower case, trailing blank lines": (
        "feat!: rename\n\napi: ALLOW-BREAKING\n\n\n",
        ("none", True),
    ),
    "trailer and bracket agree": ("fix [deploy: code-only]\n\nDeploy: code-only", CODE_ONLY),
    "trailer-like line in the body is not a trailer": (
        "docs: explain\n\nDeploy: skip is how you skip.\nThe next paragraph explains more.\n\nEnd.",
        NONE,
    ),
    "a subject alone is never a trailer": ("Deploy: skip", NONE),
    "trailer paragraph with prose is not a trailer block": (
        "fix\n\nAs discussed\nDeploy: skip",
        NONE,
    ),
    "inside a code fence": (
        "docs: flags\n\n```\ngit commit -m 'fix [deploy: skip]'\n```\n",
        NONE,
    ),
    "inside a tilde fence with an info string": (
        "docs: flags\n\n~~~text\n[deploy: code-only]\n[skip deploy]\n~~~\n",
        NONE,
    ),
    "quoted line": ("revert: x\n\n> fix [deploy: skip]\n> [api: allow-breaking]", NONE),
    "quoted trailer": ("revert: x\n\n> Deploy: skip", NONE),
    "inline code": ("docs: document the `[deploy: skip]` flag", NONE),
    "flag after a closed fence counts": (
        "docs\n\n```\n[deploy: skip]\n```\n\nReal one: [deploy: code-only]",
        CODE_ONLY,
    ),
    "other bracket tags are not flags": ("chore [skip ci] [deploy] deploy: skip", NONE),
}


@pytest.mark.parametrize(("message", "expected"), MESSAGES.values(), ids=MESSAGES)
def test_parse_commit_flags(message: str, expected: tuple[str, bool]) -> None:
    decision = parse_commit_flags(message)

    assert (decision.action, decision.allow_breaking_api) == expected


def test_reason_names_the_flags_found() -> None:
    decision = parse_commit_flags(
        "fix [deploy: code-only]\n\nbody\n\nApi: allow-breaking\nDeploy: code-only"
    )

    assert decision == CommitDecision(
        action="deploy-code-only",
        allow_breaking_api=True,
        reason="deploy-code-only requested by [deploy: code-only], trailer 'Deploy: code-only'; "
        "breaking API change allowed by trailer 'Api: allow-breaking'",
    )
    assert parse_commit_flags("fix").reason == "no deploy flags in the commit message"


@pytest.mark.parametrize(
    "message",
    [
        "fix [deploy: code-only] [deploy: skip]",
        "fix [deploy: code-only]\n\n[skip deploy]",
        "fix [skip deploy]\n\nDeploy: code-only",
    ],
)
def test_code_only_and_skip_conflict(message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_commit_flags(message)

    error = str(excinfo.value)
    assert "both a code-only deploy and no deploy" in error
    assert "deploy-code-only: " in error
    assert "skip: " in error


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("fix [deploy: now]", "unknown deploy flag value 'now' in [deploy: now]"),
        ("fix [deploy: code only]", "unknown deploy flag value 'code only'"),
        ("fix [deploy:]", "unknown deploy flag value ''"),
        ("fix\n\nDeploy: yes", "unknown deploy flag value 'yes' in trailer 'Deploy: yes'"),
    ],
)
def test_unknown_deploy_value_lists_the_valid_ones(message: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_commit_flags(message)

    assert str(excinfo.value).startswith(expected)
    assert "valid values are `code-only`, `skip`" in str(excinfo.value)


def test_unknown_api_value_names_the_valid_one() -> None:
    with pytest.raises(ConfigError, match="unknown api flag value 'allow' .* `allow-breaking`"):
        parse_commit_flags("feat [api: allow]")
