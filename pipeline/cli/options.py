"""Options and output helpers shared by every CLI command.

Human output (progress, tables) goes to stderr; `--output json` prints exactly one JSON
object on stdout so CI can parse it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

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


wait_option = click.option(
    "--wait", "wait_s", type=click.FloatRange(min=0), default=600, show_default=True,
    metavar="SECONDS",
    help="How long to wait while another release of the same service holds its lease in "
    "MLflow; then exit 1 naming the holder (CI job, host, since when).",
)

allow_dirty_option = click.option(
    "--allow-dirty", is_flag=True,
    help="Release even with uncommitted changes in the checkout (the image's code version is "
    "then <sha>-dirty-<hash>, which nobody can check out). Recorded in the ledger.",
)


def say(message: str, *, quiet: bool = False) -> None:
    """Progress for humans: stderr, so stdout stays clean for --output json."""
    if not quiet:
        click.echo(message, err=True)


_result_stream: list[TextIO] = []


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """Send whatever libraries print (MLflow's registration notices...) to stderr.

    stdout then carries only what `emit` writes, so `--output json` parses.
    """
    _result_stream.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _result_stream.pop()


def emit(result: dict[str, Any], output: str, text: str) -> None:
    """Print the final result: `text` for humans, or `result` as one JSON object."""
    stream = _result_stream[-1] if _result_stream else sys.stdout
    if output == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str), file=stream)
    else:
        click.echo(text, file=stream)


def model_ref(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a malformed NAME@ALIAS / NAME/VERSION is a usage error (exit 2)."""
    from pipeline.errors import ConfigError
    from pipeline.models.registry import parse_ref

    if value is None:
        return None
    try:
        parse_ref(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def check_treatment_options(treatment: str | None, treatment_weight: int | None) -> None:
    if treatment is None and treatment_weight is not None:
        raise click.UsageError(
            "--treatment-weight needs --treatment: with one model it gets all the traffic"
        )


def model_options(func: F) -> F:
    """--model, --treatment, --treatment-weight and --allow-pickle, as every building command has."""
    options = [
        click.option("--model", "control", required=True, metavar="NAME@ALIAS|NAME/VERSION",
                     callback=model_ref,
                     help="The control model version (aliases are resolved once, now)."),
        click.option("--treatment", metavar="NAME@ALIAS|NAME/VERSION", callback=model_ref,
                     help="An optional treatment model version, A/B-tested against the control."),
        click.option("--treatment-weight", type=int, metavar="PERCENT",
                     help="Share of traffic for the treatment. [default: 10 with --treatment]"),
        click.option("--allow-pickle", is_flag=True,
                     help="Allow models that only load by unpickling (mlflow.pyfunc). Off by "
                     "default: unpickling runs arbitrary code. Recorded in the image labels."),
        click.option("--trust-type", "trusted_types", multiple=True, metavar="TYPE",
                     help="Trust this type by its full name in a skops model (repeatable), e.g. "
                     "xgboost.sklearn.XGBClassifier; the build names the types it refuses. Adds "
                     "to [build] trusted_types. Recorded in the image labels and the ledger."),
        click.option("--hooks", metavar="MODULE|FILE.py",
                     help="The team's pre/post-processing hooks: a module under services/ or a "
                     ".py file (see services/hooks.py). [default: [service] hooks]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func
