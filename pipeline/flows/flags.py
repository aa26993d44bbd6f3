"""Deploy flags in commit messages.

A commit can steer its own deploy with flags, case-insensitive, anywhere in the subject or
body, with any whitespace around the words:

    [deploy: code-only]     deploy the new code with the models already released (a hotfix)
    [deploy: skip]          do not deploy this commit; `[skip deploy]` says the same
    [api: allow-breaking]   accept a breaking change of the service's OpenAPI spec

or as git trailers: `Key: value` lines in the last paragraph of the message (never the
subject) when every line of that paragraph is a trailer (git's stricter case; the block may
hold other trailers such as `Signed-off-by:`, and indented lines continue a trailer):

    Deploy: code-only
    Deploy: skip
    Api: allow-breaking

Ignored on purpose, so that a message can talk about the flags without setting them:
lines inside fenced code blocks (``` or ~~~), quoted lines (starting with `>`), inline code
spans (`` `[deploy: skip]` ``) and `Deploy:`/`Api:` lines that are not in the trailer block.

Repeating a flag is harmless. `code-only` together with `skip` is a ConfigError naming both,
and so is an unknown value such as `[deploy: now]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import ConfigError

__all__ = ["CommitDecision", "parse_commit_flags"]

Action = Literal["deploy-code-only", "skip", "none"]

_DEPLOY_VALUES = {"code-only": "deploy-code-only", "skip": "skip"}
_API_VALUES = ("allow-breaking",)

_BRACKET = re.compile(r"\[\s*(deploy|api)\s*:\s*([^\]\n]*?)\s*\]", re.IGNORECASE)
_SKIP_DEPLOY = re.compile(r"\[\s*skip\s+deploy\s*\]", re.IGNORECASE)
_TRAILER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)\s*:\s*(.*?)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_QUOTE = re.compile(r"^\s*>")
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")


@dataclass(frozen=True)
class CommitDecision:
    """What a commit message asks of the deploy.

    `reason` lists the flags that led to the decision, for logs and CI summaries.
    """

    action: Action
    allow_breaking_api: bool
    reason: str


def parse_commit_flags(message: str) -> CommitDecision:
    """Read the deploy flags of a commit message (see the module docstring for the syntax)."""
    lines = _live_lines(message)
    actions: dict[str, list[str]] = {}  # action -> where each request for it was found
    allow_breaking: list[str] = []

    for line in lines:
        if line is None:
            continue
        text = _CODE_SPAN.sub("", line)
        for match in _BRACKET.finditer(text):
            key, value = match.group(1).lower(), match.group(2).lower()
            flag = match.group(0)
            _apply(key, value, flag, actions, allow_breaking)
        for match in _SKIP_DEPLOY.finditer(text):
            actions.setdefault("skip", []).append(match.group(0))

    for key, value, line in _trailers(lines):
        if key in ("deploy", "api"):
            _apply(key, value.lower(), f"trailer {line!r}", actions, allow_breaking)

    if len(actions) > 1:
        found = "; ".join(f"{a}: {', '.join(dict.fromkeys(w))}" for a, w in sorted(actions.items()))
        raise ConfigError(
            "the commit message asks for both a code-only deploy and no deploy "
            f"({found}); keep one of `[deploy: code-only]` or `[deploy: skip]`"
        )
    action: Action = "none"
    reasons: list[str] = []
    for name, where in actions.items():
        action = "skip" if name == "skip" else "deploy-code-only"
        reasons.append(f"{action} requested by {', '.join(dict.fromkeys(where))}")
    if allow_breaking:
        reasons.append(f"breaking API change allowed by {', '.join(dict.fromkeys(allow_breaking))}")
    return CommitDecision(
        action=action,
        allow_breaking_api=bool(allow_breaking),
        reason="; ".join(reasons) or "no deploy flags in the commit message",
    )


def _apply(
    key: str, value: str, where: str, actions: dict[str, list[str]], allow_breaking: list[str]
) -> None:
    if key == "deploy":
        if value not in _DEPLOY_VALUES:
            valid = ", ".join(f"`{v}`" for v in _DEPLOY_VALUES)
            raise ConfigError(
                f"unknown deploy flag value {value!r} in {where}: valid values are {valid} "
                "(`[skip deploy]` also skips)"
            )
        actions.setdefault(_DEPLOY_VALUES[value], []).append(where)
    else:
        if value not in _API_VALUES:
            valid = ", ".join(f"`{v}`" for v in _API_VALUES)
            raise ConfigError(
                f"unknown api flag value {value!r} in {where}: the valid value is {valid}"
            )
        allow_breaking.append(where)


def _live_lines(message: str) -> list[str | None]:
    """The message's lines, with None for those inside code fences and quoted lines."""
    out: list[str | None] = []
    fence: str | None = None
    for line in message.splitlines():
        opener = _FENCE.match(line)
        if fence is not None:
            if opener and opener.group(1) == fence:
                fence = None
            out.append(None)
        elif opener:
            fence = opener.group(1)
            out.append(None)
        elif _QUOTE.match(line):
            out.append(None)
        else:
            out.append(line)
    return out


def _trailers(lines: list[str | None]) -> list[tuple[str, str, str]]:
    """(key lower-cased, value, line) for each trailer in the message's trailer block."""
    # Paragraphs are separated by blank lines; ignored (quoted, fenced) lines end one as well,
    # so a quoted trailer never makes the block below it count.
    paragraphs: list[list[str | None]] = [[]]
    for line in lines:
        if line is not None and line.strip() == "":
            paragraphs.append([])
        else:
            paragraphs[-1].append(line)
    paragraphs = [p for p in paragraphs if p]
    if len(paragraphs) < 2:  # the subject alone never holds trailers
        return []
    block = [line for line in paragraphs[-1] if line is not None]
    if len(block) != len(paragraphs[-1]):
        return []
    found: list[tuple[str, str, str]] = []
    for line in block:
        match = _TRAILER.match(line.strip())
        if match is None:
            if line[:1].isspace() and found:  # a folded continuation of the previous trailer
                continue
            return []  # not a trailer block
        found.append((match.group(1).lower(), match.group(2), line.strip()))
    return found
