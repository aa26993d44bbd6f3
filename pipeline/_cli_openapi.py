"""`bentoship openapi ...`: compare the HTTP API of two service versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline._options import emit, output_option
from pipeline.errors import PipelineError
from pipeline.openapi import Change, diff_specs, load_spec, validate_spec

_spec_path = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group("openapi")
def openapi() -> None:
    """Compare and check the OpenAPI specs of bentoship services."""


@openapi.command("diff")
@click.argument("old", type=_spec_path)
@click.argument("new", type=_spec_path)
@click.option(
    "--validate",
    is_flag=True,
    help="Also check both files against the OpenAPI schema first. Off by default: "
    "BentoML 1.4 writes `type: null` into its OpenAPI 3.0 specs, which strict validation rejects.",
)
@output_option
@click.pass_context
def diff(ctx: click.Context, old: Path, new: Path, validate: bool, output: str) -> None:
    """List the API changes from OLD to NEW (JSON or YAML files) and flag the breaking ones.

    A change is breaking when a caller of OLD can fail against NEW: an endpoint, request
    property, response property or status code removed; a request property newly required or
    its type narrowed; a response type changed; an error body changed.

    \b
    Exit codes:
      0  no changes, or only compatible ones
      1  at least one breaking change
      2  usage error: OLD or NEW missing, unreadable, not JSON/YAML,
         or (with --validate) not a valid OpenAPI document
    """
    old_spec = _read(old, "OLD", validate)
    new_spec = _read(new, "NEW", validate)
    try:
        changes = diff_specs(old_spec, new_spec)
    except PipelineError as exc:  # an unresolvable $ref: the file is not one we can read
        raise click.UsageError(f"cannot compare {old} and {new}: {exc}", ctx) from exc
    breaking = [c for c in changes if c.kind == "breaking"]
    compatible = [c for c in changes if c.kind == "compatible"]
    result: dict[str, Any] = {
        "breaking": [_as_json(c) for c in breaking],
        "compatible": [_as_json(c) for c in compatible],
    }
    emit(result, output, _table(changes, old, new))
    if breaking:
        ctx.exit(1)


# `bentoship openapi export` (write a service's spec to a file) is added here, next to `diff`.


def _read(path: Path, name: str, validate: bool) -> dict[str, Any]:
    try:
        spec = load_spec(path)
        if validate:
            validate_spec(spec, source=str(path))
    except PipelineError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from exc
    return spec


def _as_json(change: Change) -> dict[str, str]:
    return {"path": change.path, "message": change.message}


def _table(changes: list[Change], old: Path, new: Path) -> str:
    if not changes:
        return f"No API changes from {old} to {new}."
    width = max(len(c.path) for c in changes)
    lines = [f"{'KIND':<10}  {'WHERE':<{width}}  CHANGE"]
    lines += [f"{c.kind:<10}  {c.path:<{width}}  {c.message}" for c in changes]
    n_breaking = sum(c.kind == "breaking" for c in changes)
    lines.append(
        f"\n{n_breaking} breaking, {len(changes) - n_breaking} compatible change(s) "
        f"from {old} to {new}."
    )
    return "\n".join(lines)
