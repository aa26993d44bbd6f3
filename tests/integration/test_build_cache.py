"""The build cache: what a code-only rebuild and a nothing-changed build reuse, and what they never do.

Real MLflow (a SQLite store of this module's own), real BentoML, the real Docker engine. Each
test builds into a repository of its own (`cachetest-<random>`), removed at the end; code
changes are made in copies of `services/`, whose code version is a hash of their content.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.build import image, smoke
from pipeline.build.base import BaseImage
from pipeline.build.bento import SERVICES_DIR
from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import BuildRequest
from pipeline.errors import ArtifactError, SmokeTestError
from pipeline.models import demo, integrity
from pipeline.models.registry import client_for
from pipeline.settings import Settings
from tests.stores import store_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = demo.DEMO_MODEL
XGBOOST = "2"  # the demo's XGBoost version: its answers are checked against the booster's own


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = store_settings(tmp_path / "home")
    demo.train(settings.tracking_uri, artifact_root=settings.artifact_root)
    return settings


@pytest.fixture
def name(docker_client: Any, base_image: BaseImage) -> Iterator[str]:
    chosen = f"cachetest-{secrets.token_hex(3)}"
    yield chosen
    for found in docker_client.images.list(name=f"127.0.0.1:5000/{chosen}"):
        docker_client.images.remove(found.id, force=True)


def _services(root: Path, change: str | None, module: str = "routing.py", code: str = "") -> Path:
    copy = root / f"services-{change or 'orig'}" / "services"
    shutil.copytree(SERVICES_DIR, copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "bentoship.json"))
    if change is not None:
        with (copy / module).open("a") as f:
            f.write(f"\n# a code-only change: {change}\n{code}")
    return copy


# A hotfix gone wrong: the service's loader refuses every model.
BREAKS_LOADING = """
def load_variant(config, model_dir):
    raise RuntimeError("this hotfix breaks loading")
"""


def _build(settings: Settings, name: str, services: Path, lines: list[str]) -> BuildResult:
    request = BuildRequest(control=f"{MODEL}/{XGBOOST}", name=name, services_dir=services)
    return build(request, settings, echo=lines.append)


def _booster_scores(settings: Settings, rows: list[dict[str, Any]], tmp_path: Path) -> list[float]:
    """What the registered model itself answers for `rows` (no bentoship code involved)."""
    import mlflow.artifacts
    import pandas as pd
    import xgboost as xgb

    client = client_for(settings.tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(MODEL, XGBOOST),
        dst_path=str(tmp_path / "own"), tracking_uri=settings.tracking_uri)
    booster = xgb.Booster()
    booster.load_model(str(Path(local) / "model.ubj"))
    return [float(s) for s in booster.predict(xgb.DMatrix(pd.DataFrame(rows)))]


def _model_layers(docker_client: Any, result: BuildResult) -> list[str]:
    return [layer.diff_id for layer in image.layers(docker_client, result.image_id)
            if layer.group == "models"]


def _cached_model_file(settings: Settings) -> Path:
    (found,) = (settings.build_cache / "models").glob("*/model.ubj")
    return found


def test_code_only_rebuild_reuses_the_cached_models_and_answers_as_the_model(
    settings: Settings, name: str, docker_client: Any, tmp_path: Path
) -> None:
    cold_lines: list[str] = []
    cold = _build(settings, name, _services(tmp_path, None), cold_lines)
    assert cold.cache == {"plan": False, "models": []}

    changed = _services(tmp_path, "one")
    lines: list[str] = []
    code_only = _build(settings, name, changed, lines)
    assert not code_only.reused and code_only.tag != cold.tag
    assert code_only.cache == {"plan": False, "models": ["control"]}
    assert any("artifacts from the build cache" in line for line in lines)
    # The load check's findings too: the smoke test loads the models with the new code.
    assert any("Load check: in the build cache" in line for line in lines)
    assert not any("Loading the models" in line for line in lines)
    assert _model_layers(docker_client, code_only) == _model_layers(docker_client, cold)
    # The smoke test of the new image answered with the registered model's own scores.
    own = _booster_scores(settings, code_only.example_rows_in, tmp_path)
    assert [row["score"] for row in code_only.example_rows_out] == pytest.approx(own, abs=1e-6)

    again: list[str] = []
    unchanged = _build(settings, name, changed, again)
    assert unchanged.reused and unchanged.image_id == code_only.image_id
    assert unchanged.cache == {"plan": True, "models": []}
    assert not any("Downloading" in line or "Loading the models" in line for line in again)
    assert any("the registry confirms the last build's answers" in line for line in again)

    # A code-only rebuild whose code cannot load the models is refused by its smoke test (the
    # load check it skipped would have said the same), and tags nothing.
    broken = _services(tmp_path, "broken", "loading.py", BREAKS_LOADING)
    with pytest.raises(SmokeTestError, match="this hotfix breaks loading"):
        _build(settings, name, broken, [])
    tags = {t for i in docker_client.images.list(name=f"127.0.0.1:5000/{name}") for t in i.tags}
    assert tags == {code_only.reference, cold.reference}


def test_a_tampered_cached_artifact_is_never_used(
    settings: Settings, name: str, docker_client: Any, tmp_path: Path
) -> None:
    _build(settings, name, _services(tmp_path, None), [])
    cached = _cached_model_file(settings)
    good = cached.read_bytes()
    cached.write_bytes(good + b"\0")
    # The BentoML store's copy too: what the Bento (and so the image) would be made of.
    (stored,) = settings.bentoml_home.glob(f"models/{MODEL}/v{XGBOOST}/mlflow_model/model.ubj")
    stored.write_bytes(good + b"\0")

    lines: list[str] = []
    rebuilt = _build(settings, name, _services(tmp_path, "two"), lines)
    assert rebuilt.cache["models"] == []
    assert any("cached artifacts" in line and "downloading them again" in line
               for line in lines)
    assert any("BentoML store's copy does not match" in line for line in lines)
    container = docker_client.containers.create(rebuilt.image_id)
    try:
        in_image = smoke.read_file(
            container, f"/home/bentoship/bento/models/{MODEL}/v{XGBOOST}/mlflow_model/model.ubj")
    finally:
        container.remove(force=True)
    assert in_image == good
    assert _cached_model_file(settings).read_bytes() == good  # cached again, intact
    own = _booster_scores(settings, rebuilt.example_rows_in, tmp_path)
    assert [row["score"] for row in rebuilt.example_rows_out] == pytest.approx(own, abs=1e-6)


def test_a_version_the_registry_changed_is_not_served_from_the_cache(
    settings: Settings, name: str, docker_client: Any, tmp_path: Path
) -> None:
    services = _services(tmp_path, None)
    _build(settings, name, services, [])
    client = client_for(settings.tracking_uri)
    recorded = json.loads(client.get_model_version(MODEL, XGBOOST).tags[integrity.MANIFEST_TAG])
    recorded["model.ubj"] = "0" * 64  # the registry now records other artifacts
    client.set_model_version_tag(MODEL, XGBOOST, integrity.MANIFEST_TAG, json.dumps(recorded))
    client.set_model_version_tag(MODEL, XGBOOST, integrity.DIGEST_TAG,
                                 integrity.digest(recorded))
    images_before = {i.id for i in docker_client.images.list(name=f"127.0.0.1:5000/{name}")}

    lines: list[str] = []
    with pytest.raises(ArtifactError, match=r"no longer match the manifest.*changed: model\.ubj"):
        _build(settings, name, services, lines)
    assert any("Downloading" in line for line in lines)
    assert not any("artifacts from the build cache" in line for line in lines)
    assert {i.id for i in docker_client.images.list(name=f"127.0.0.1:5000/{name}")} \
        == images_before
