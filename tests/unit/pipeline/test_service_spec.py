"""The OpenAPI document of a build from a copy of services/: made in a child beside the build."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.build.bento import SERVICES_DIR, TEMPLATE_IGNORE
from pipeline.build.service import service_openapi, start_service_openapi
from pipeline.errors import ConfigError
from tests.servicekit import make_config


def _config() -> dict[str, Any]:
    return make_config([{"name": "control", "model_tag": "demo-classifier:v1",
                         "registered_name": "demo-classifier", "flavor": "xgboost",
                         "version": "1", "weight": 100}]).model_dump(mode="json")


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "services-copy"
    shutil.copytree(SERVICES_DIR, copy, ignore=TEMPLATE_IGNORE)
    return copy


def test_a_copy_of_the_template_documents_what_the_checkout_does(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    pending = start_service_openapi(_config(), copy, tmp_path / "spec")  # runs meanwhile
    spec = pending()
    assert spec == service_openapi(_config(), None)
    assert "/predict" in spec["paths"]
    assert pending() is spec  # asked again: the same answer, no second child


def test_a_copy_whose_openapi_py_breaks_is_refused_naming_it(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    (copy / "openapi.py").write_text("raise RuntimeError('no spec today')\n")
    pending = start_service_openapi(_config(), copy, tmp_path / "spec")
    with pytest.raises(ConfigError, match=r"openapi\.py cannot build the service's spec") as err:
        pending()
    assert "no spec today" in str(err.value)
