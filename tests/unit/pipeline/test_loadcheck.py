"""The build's load check: the service's own loader, in a child process, on real MLflow models.

Each model directory is saved by MLflow (`mlflow.sklearn.save_model`, skops), inspected and put
into a build context exactly as a build does (`bento.inspect_model`, `service_config`,
`bento.write_context`); no Docker, no registry.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.build import bento
from pipeline.build.loadcheck import Verdict, check_models
from pipeline.build.plan import BuildRequest
from pipeline.build.service import service_config
from pipeline.errors import ArtifactError
from pipeline.models.registry import ModelVersion
from tests import servicekit

NAME = "refusal-unit"
# MLflow refuses to save a skops file with types it does not trust unless they are named.
XGB_TYPES = ["xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    return servicekit.make_data()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loadcheck-models")


@pytest.fixture(scope="module")
def sound_dir(models: Path, data: tuple[pd.DataFrame, pd.Series]) -> Path:
    X, y = data
    return servicekit.save_sklearn(servicekit.train_sklearn(X, y), X, models / "sound")


@pytest.fixture(scope="module")
def xgb_pipeline_dir(models: Path, data: tuple[pd.DataFrame, pd.Series]) -> Path:
    import xgboost
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    model = make_pipeline(
        StandardScaler(), xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1)
    ).fit(X, y)
    return servicekit.save_sklearn(model, X, models / "xgb-pipeline", skops_trusted_types=XGB_TYPES)


def check(
    model_dir: Path, work: Path, *, allow_pickle: bool = False, echo: list[str] | None = None
) -> list[Verdict]:
    """`check_models` on one control model, with the context a build would write."""
    mv = ModelVersion(name=NAME, version="1", run_id="0" * 32, source=model_dir.as_uri(),
                      aliases=(), requested_as=f"{NAME}/1")
    info = bento.inspect_model("control", mv, model_dir, "0" * 64)
    request = BuildRequest(control=f"{NAME}/1", allow_pickle=allow_pickle)
    config = service_config(request, NAME, "ctl-v1.code-test", "test", [info], (100, 0))
    context = bento.write_context(config, work / "context")
    lines = echo if echo is not None else []
    started = time.monotonic()
    try:
        return check_models([info], context, echo=lines.append)
    finally:
        print(f"load check of {model_dir.name}: {time.monotonic() - started:.1f}s")


def test_a_model_the_service_loads_passes_and_says_how(sound_dir: Path, tmp_path: Path) -> None:
    echo: list[str] = []
    (verdict,) = check(sound_dir, tmp_path, echo=echo)
    assert verdict.ok and verdict.rows == 3
    assert verdict.loader.startswith("sklearn Pipeline (skops, predict_proba")
    assert echo == [f"control {NAME}/1: loaded with {verdict.loader}, scored its 3 example rows"]
    assert not list((tmp_path / "context").rglob("__pycache__"))  # the Bento's code stays clean


def test_xgboost_inside_a_sklearn_pipeline_is_refused_naming_the_types(
    xgb_pipeline_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError) as refused:
        check(xgb_pipeline_dir, tmp_path)
    message = str(refused.value)
    assert message.startswith(f"control model {NAME}/1 cannot be loaded by the service")
    assert "contains types outside sklearn/numpy/scipy" in message
    assert all(t in message for t in XGB_TYPES)
    assert "--allow-pickle" in message and message.endswith("Nothing was built.")
    assert str(tmp_path) not in message and f"models:/{NAME}/1" in message


def test_allow_pickle_is_the_builds_policy_in_the_check_too(
    xgb_pipeline_dir: Path, tmp_path: Path
) -> None:
    (verdict,) = check(xgb_pipeline_dir, tmp_path, allow_pickle=True)
    assert verdict.ok and verdict.rows == 3
    assert verdict.loader.startswith("sklearn Pipeline (skops")


def test_an_unreadable_model_file_is_refused_without_suggesting_pickle(
    sound_dir: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(sound_dir, tmp_path / "broken")
    (broken / "model.skops").write_bytes(b"not a zip file")
    with pytest.raises(ArtifactError) as refused:
        check(broken, tmp_path)
    message = str(refused.value)
    assert f"models:/{NAME}/1/model.skops: not a readable skops file (BadZipFile" in message
    assert "allow-pickle" not in message and "allow_pickle" not in message


def test_a_module_this_machine_lacks_is_left_to_the_smoke_test(
    sound_dir: Path, tmp_path: Path
) -> None:
    # A pyfunc-only model whose loader module is not installed here (the image may have it).
    model = shutil.copytree(sound_dir, tmp_path / "pyfunc")
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    del mlmodel["flavors"]["sklearn"]
    mlmodel["flavors"]["python_function"]["loader_module"] = "refusal_module_not_installed"
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    echo: list[str] = []
    (verdict,) = check(model, tmp_path, allow_pickle=True, echo=echo)
    assert not verdict.ok and verdict.missing == "refusal_module_not_installed"
    said = (f"control {NAME}/1: not checked here, this machine lacks the module "
            "'refusal_module_not_installed' (the smoke test loads it in the image)")
    assert echo == [said]
