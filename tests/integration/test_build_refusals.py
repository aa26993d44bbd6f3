"""Models the service cannot serve fail the build fast: before `docker build`, or as soon as the
container's worker dies. Real MLflow store, real BentoML, real Docker engine."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from importlib.metadata import version as installed
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.build import bento, smoke
from pipeline.build.builder import BuildResult
from pipeline.cli import cli
from pipeline.errors import SmokeTestError
from pipeline.identity import BENTO_DIR
from pipeline.models.registry import client_for, ensure_experiment, fluent_uris
from pipeline.settings import Settings
from tests.stores import store_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# MLflow saves a scikit-learn model with skops and refuses types it does not trust unless named.
XGB_TYPES = ["xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"]


@pytest.fixture(scope="module")
def xgb_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    """A fresh store with version 1 of Pipeline(StandardScaler, XGBClassifier), via log_model."""
    import mlflow
    import xgboost
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    settings = store_settings(tmp_path_factory.mktemp("refusal-store"))
    name = f"refusal-xgb-pipeline-{uuid.uuid4().hex[:6]}"
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.rename(columns=lambda c: c.replace(" ", "_"))
    model = make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=20, max_depth=3))
    model.fit(X, y)
    example = X.head(5)
    with fluent_uris(settings.tracking_uri, settings.tracking_uri):
        client = client_for(settings.tracking_uri)
        mlflow.set_experiment(
            experiment_id=ensure_experiment(client, "refusals", settings.artifact_root)
        )
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                model,
                name="model",
                skops_trusted_types=XGB_TYPES,
                signature=infer_signature(example, model.predict_proba(example)),
                input_example=example,
                pip_requirements=[f"{p}=={installed(p)}" for p in (
                    "scikit-learn", "skops", "xgboost-cpu", "numpy", "pandas", "scipy")],
                registered_model_name=name,
            )
    return settings, name


def test_a_model_the_service_cannot_load_fails_before_docker_build(
    xgb_pipeline: tuple[Settings, str], docker_client, base_image,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, name = xgb_pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("BENTOSHIP_HOME", str(settings.home))
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["build", "--model", f"{name}/1"], catch_exceptions=False)
    print(f"refused build: exit {result.exit_code} after {time.monotonic() - started:.1f}s")
    assert result.exit_code == 1, result.output
    assert f"control model {name}/1 cannot be loaded by the service" in result.output
    assert "types outside sklearn/numpy/scipy" in result.output
    assert all(t in result.output for t in XGB_TYPES)
    assert "--allow-pickle" in result.output and "Nothing was built." in result.output
    # Nothing left behind: no image of that repository, nothing in BentoML's store.
    service = bento.service_name(name)
    assert docker_client.images.list(name=f"{settings.oci_registry}/{service}") == []
    assert not (settings.bentoml_home / "models" / bento.bento_name(name)).exists()
    assert not (settings.bentoml_home / "bentos" / service).exists()


def test_a_sound_model_still_builds(ab_build: BuildResult, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert ab_build.models["control"]["name"] == "demo-classifier"
    assert docker_client.images.get(ab_build.reference).id == ab_build.image_id
    assert ab_build.reused or "loadcheck" in ab_build.phases
    assert len(ab_build.example_rows_out) == len(ab_build.example_rows_in)


@pytest.fixture
def worker_fails_image(ab_build: BuildResult, docker_client, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The demo image with its control model file overwritten by garbage: every worker dies in
    `__init__` and BentoML starts another, while the container stays up."""
    model_file = f"{BENTO_DIR}/models/demo-classifier/v1/mlflow_model/model.skops"
    (tmp_path / "model.skops").write_bytes(b"not a zip file")
    (tmp_path / "Dockerfile").write_text(f"FROM {ab_build.image_id}\nCOPY model.skops {model_file}\n")
    tag = f"refusal-worker-fails:{uuid.uuid4().hex[:8]}"
    docker_client.images.build(path=str(tmp_path), tag=tag, network_mode="none", rm=True)
    try:
        yield tag
    finally:
        docker_client.images.remove(tag, force=True)


def test_smoke_test_fails_as_soon_as_the_worker_fails_to_start(
    worker_fails_image: str, docker_client  # type: ignore[no-untyped-def]
) -> None:
    started = time.monotonic()
    with pytest.raises(SmokeTestError) as failed:
        smoke.start(docker_client, worker_fails_image, deadline_s=120.0)
    print(f"smoke test failed after {time.monotonic() - started:.1f}s of a 120s deadline")
    message = str(failed.value)
    assert "worker failed to start" in message and "never become ready" in message
    assert "ModelLoadError" in message and "not a readable skops file" in message
    assert "Last log lines:" in message
    assert docker_client.containers.list(all=True, filters={"ancestor": worker_fails_image}) == []
