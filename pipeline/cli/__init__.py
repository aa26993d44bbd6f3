"""The `bentoship` command line: click commands only (parse, call the Python API, print)."""

from pipeline.cli.root import cli, main

__all__ = ["cli", "main"]
