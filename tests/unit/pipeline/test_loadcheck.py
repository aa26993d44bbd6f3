"""The build's load check: the service's own loader, in a child process, on real MLflow models.

Each model directory is saved by MLflow (`mlflow.sklearn.save_model`, skops), inspected and put
into a build context exactly as a build does (`bento.inspect_model`, `service_config`,
`bento.write_context`); no Docker, no registry.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.build import bento
from pipeline.build.bento import ModelInfo
from pipeline.build.loadcheck import Checked, Verdict, check_models
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


def info_of(model_dir: Path, variant: str = "control", version: str = "1") -> ModelInfo:
    mv = ModelVersion(name=NAME, version=version, run_id="0" * 32, source=model_dir.as_uri(),
                      aliases=(), requested_as=f"{NAME}/{version}")
    return bento.inspect_model(variant, mv, model_dir, "0" * 64)


def checked(
    model_dirs: list[Path], work: Path, *, allow_pickle: bool = False,
    trusted_types: tuple[str, ...] = (), echo: list[str] | None = None,
) -> Checked:
    """`check_models` on a control (and treatment) model, with the context a build writes."""
    infos = [info_of(d, v, str(i + 1))
             for i, (d, v) in enumerate(zip(model_dirs, ("control", "treatment")))]
    request = BuildRequest(control=f"{NAME}/1", allow_pickle=allow_pickle,
                           trusted_types=trusted_types)
    weights = (100, 0) if len(infos) == 1 else (50, 50)
    config = service_config(request, NAME, "ctl-v1.code-test", "test", infos, weights)
    context = bento.write_context(work / "context")
    lines = echo if echo is not None else []
    started = time.monotonic()
    try:
        return check_models(infos, context, config, echo=lines.append)
    finally:
        print(f"load check of {model_dirs[0].name}: {time.monotonic() - started:.1f}s")


def check(model_dir: Path, work: Path, **options: Any) -> list[Verdict]:
    return checked([model_dir], work, **options).verdicts


def test_a_model_the_service_loads_passes_and_says_how(sound_dir: Path, tmp_path: Path) -> None:
    echo: list[str] = []
    (verdict,) = check(sound_dir, tmp_path, echo=echo)
    assert verdict.ok and verdict.rows == 3
    assert verdict.loader.startswith("sklearn Pipeline (skops, predict_proba")
    said = (f"control {NAME}/1: loaded with {verdict.loader}, answers classification "
            "with classes [0, 1]; scored its 3 example rows")
    assert echo == [said]
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
    assert f"--trust-type {XGB_TYPES[0]} --trust-type {XGB_TYPES[1]}" in message
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
    with pytest.raises(ArtifactError) as refused:
        check(model, tmp_path, allow_pickle=True, echo=echo)
    # What the model answers decides the API, so it cannot be left to the image.
    assert str(refused.value).startswith(
        f"control {NAME}/1 needs the module 'refusal_module_not_installed', which this machine "
        "lacks, so what the model answers (its task and classes) cannot be found")


def test_types_trusted_by_name_load_and_nothing_else_does(
    xgb_pipeline_dir: Path, tmp_path: Path
) -> None:
    (verdict,) = check(xgb_pipeline_dir, tmp_path / "both", trusted_types=tuple(XGB_TYPES))
    assert verdict.ok and verdict.rows == 3
    assert f"trusting {sorted(XGB_TYPES)}" in verdict.loader
    with pytest.raises(ArtifactError, match=r"outside sklearn/numpy/scipy: \['xgboost.core"):
        check(xgb_pipeline_dir, tmp_path / "one", trusted_types=(XGB_TYPES[1],))


def test_control_and_treatment_answering_differently_are_refused_naming_both(
    sound_dir: Path, models: Path, data: tuple[pd.DataFrame, pd.Series], tmp_path: Path
) -> None:
    from sklearn.linear_model import LinearRegression

    X, _ = data
    regressor = servicekit.save_sklearn(LinearRegression().fit(X, X.sum(axis=1)), X,
                                        models / "regressor")
    with pytest.raises(ArtifactError) as refused:
        checked([sound_dir, regressor], tmp_path)
    assert str(refused.value).startswith(
        f"control {NAME}/1 answers classification with classes [0, 1] but treatment {NAME}/2 "
        "answers regression with 1 target(s)")


def test_the_output_is_found_from_the_model(sound_dir: Path, tmp_path: Path) -> None:
    found = checked([sound_dir], tmp_path)
    assert found.output == {"task": "classification", "classes": [0, 1], "targets": 1,
                            "target_names": []}
    assert found.hooks is None
