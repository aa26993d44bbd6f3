"""bentoship.toml: one file, one table per concern (`[release]`, `[ci]`).

Each table is validated by its own frozen pydantic model (pipeline/release.py, pipeline/flows.py);
this module only reads the file, with errors that name it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


def read_table(path: Path, table: str) -> dict[str, Any]:
    """The `[table]` of a TOML file, `{}` when the file has none."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    value = document.get(table, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{table}] must be a table, got {type(value).__name__}")
    return value
