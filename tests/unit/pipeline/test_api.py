"""The public Python API: every name in `pipeline.__all__` is importable, and lazily."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", pipeline.__all__)
def test_every_public_name_resolves_to_what_its_module_defines(name: str) -> None:
    value = getattr(pipeline, name)
    module, attribute = pipeline._EXPORTS[name]
    assert value is getattr(importlib.import_module(module), attribute)
    assert getattr(value, "__module__", "") == module, (name, module)


def test_all_lists_exactly_the_exports() -> None:
    assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pipeline.nope  # type: ignore[attr-defined]


def test_importing_the_api_pulls_in_neither_docker_nor_mlflow() -> None:
    probe = (
        "import json, sys, pipeline\n"
        "from pipeline import BuildRequest, load_settings\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('docker', 'mlflow', 'bentoml'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == []
