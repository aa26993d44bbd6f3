"""Options and output helpers shared by every CLI command.

Human output (progress, tables) goes to stderr; `--output json` prints exactly one JSON
object on stdout so CI can parse it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="`json` prints one machine-readable object on stdout (for CI); progress stays on stderr.",
)

quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="Print only errors and the final result."
)


def say(message: str, *, quiet: bool = False) -> None:
    """Progress for humans: stderr, so stdout stays clean for --output json."""
    if not quiet:
        click.echo(message, err=True)


def emit(result: dict[str, Any], output: str, text: str) -> None:
    """Print the final result: `text` for humans, or `result` as one JSON object."""
    if output == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text)


def fail(message: str) -> None:
    click.secho(f"Error: {message}", fg="red", err=True)
    sys.exit(1)
