from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.models.requirements import ModelRequirements, resolve_requirements

BASE = {"scikit-learn": "1.9.1", "numpy": "2.4.6", "xgboost-cpu": "3.2.0", "pandas": "3.1.1"}


def reqs(model: str, *lines: str) -> ModelRequirements:
    return ModelRequirements(model, lines)


def test_cuda_xgboost_maps_to_cpu_build_and_mlflow_is_dropped() -> None:
    resolved = resolve_requirements(
        [reqs("m/1", "mlflow==3.17.2", "xgboost==3.2.0", "xgboost-cpu==3.2.0", "numpy==2.4.6")],
        BASE,
        needs_pyfunc=False,
    )
    assert resolved.requirements == ("numpy==2.4.6", "xgboost-cpu==3.2.0")
    assert resolved.extras == ()


def test_pyfunc_models_get_mlflow_skinny_not_the_whole_server() -> None:
    resolved = resolve_requirements([reqs("m/1", "mlflow==3.17.2")], BASE, needs_pyfunc=True)
    assert resolved.extras == ("mlflow-skinny==3.17.2",)


def test_packages_the_base_lacks_become_extras() -> None:
    resolved = resolve_requirements(
        [reqs("m/1", "scikit-learn>=1.5", "lightgbm==4.6.0 ; python_version >= '3.9'",
              "pywin32==1 ; sys_platform == 'win32'")],
        BASE,
        needs_pyfunc=False,
    )
    assert resolved.extras == ("lightgbm==4.6.0",)
    assert "scikit-learn==1.9.1" in resolved.requirements


def test_models_pinning_different_versions_conflict_before_anything_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_requirements(
            [reqs("demo/1", "scikit-learn==1.8.0"), reqs("demo/2", "scikit-learn==1.9.1")],
            BASE,
            needs_pyfunc=False,
        )
    message = str(info.value)
    assert "demo/1 needs scikit-learn==1.8.0" in message
    assert "demo/2 needs scikit-learn==1.9.1" in message
    assert "base image pins scikit-learn==1.9.1" in message


def test_two_models_disagreeing_on_a_package_the_base_lacks() -> None:
    with pytest.raises(ConfigError, match="no version satisfies both"):
        resolve_requirements(
            [reqs("a/1", "lightgbm==4.5.0"), reqs("b/1", "lightgbm==4.6.0")], BASE,
            needs_pyfunc=False,
        )


def test_requirements_hash_is_stable_and_order_independent() -> None:
    one = resolve_requirements([reqs("m/1", "numpy==2.4.6", "pandas==3.1.1")], BASE,
                               needs_pyfunc=False)
    two = resolve_requirements([reqs("m/1", "pandas==3.1.1", "numpy==2.4.6")], BASE,
                               needs_pyfunc=False)
    assert one.sha256 == two.sha256 and len(one.sha256) == 64
