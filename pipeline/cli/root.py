"""The `bentoship` command line: a thin click layer over the pipeline's Python API.

This module holds the root group, the error edge and the registration of the commands, which
live in build.py (demo, base, build, run, serve, push), release.py, rehearse.py, openapi.py
and ci.py.

Exit codes: 0 success, 1 a failure the user can act on (the message says what exists and
what to do), 2 a usage error. `--debug` re-raises with the traceback.
"""

from __future__ import annotations

import gc
import sys

import click

from pipeline.cli.options import results_only_on_stdout
from pipeline.errors import PipelineError


class _Group(click.Group):
    """Translates PipelineError into exit code 1 at the edge, unless --debug."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            with results_only_on_stdout():
                return super().invoke(ctx)
        except PipelineError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of short error messages.")
@click.version_option(package_name="bentoship")
def cli(debug: bool) -> None:
    """bentoship: ship an MLflow registry model version to a canary release.

    \b
    Typical flow:
      bentoship demo train                       # register two demo model versions
      bentoship build --model demo-classifier@champion \\
                      --treatment demo-classifier@challenger
    """


def main() -> None:
    try:
        cli()
    finally:
        # The process ends next. Its last collections would walk everything MLflow, SQLAlchemy
        # and pydantic made (~500,000 objects): about a second of every command, a third of a
        # build that finds its image. Frozen, they are left to the operating system.
        gc.freeze()


def _register() -> None:
    from pipeline.cli.build import base, build, demo, push, run, serve
    from pipeline.cli.ci import ci, rollback
    from pipeline.cli.openapi import openapi
    from pipeline.cli.rehearse import rehearse
    from pipeline.cli.release import release, render
    from pipeline.cli.releases import releases

    cli.add_command(demo)
    cli.add_command(base)
    cli.add_command(build)
    cli.add_command(run)
    cli.add_command(serve)
    cli.add_command(push)
    cli.add_command(openapi)
    cli.add_command(release)
    cli.add_command(releases)
    cli.add_command(render)
    cli.add_command(rehearse)
    cli.add_command(ci)
    cli.add_command(rollback)


_register()
