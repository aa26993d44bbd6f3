from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.errors import ArtifactError, ConfigError, ModelNotFoundError, VersionNotReadyError
from pipeline.models.registry import ModelRef, client_for, download, parse_ref, resolve
from pipeline.settings import Settings
from tests.stores import set_status


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("demo@champion", ModelRef("demo", alias="champion")),
        ("demo/3", ModelRef("demo", version="3")),
        ("models:/demo/3", ModelRef("demo", version="3")),
        ("models:/demo@champion", ModelRef("demo", alias="champion")),
        ("team.fraud-model@prod_2", ModelRef("team.fraud-model", alias="prod_2")),
    ],
)
def test_parse_ref_accepts_alias_and_version(text: str, expected: ModelRef) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["demo", "demo@", "demo/", "demo/latest", "demo/1/2", "@x", ""])
def test_parse_ref_rejects_other_shapes_with_a_hint(text: str) -> None:
    with pytest.raises(ConfigError, match="NAME@ALIAS|must be a number"):
        parse_ref(text)


def test_alias_resolves_to_exact_version(demo_store: Settings) -> None:
    client = client_for(demo_store.tracking_uri)
    champion = resolve(client, "demo-classifier@champion")
    challenger = resolve(client, "demo-classifier@challenger")
    assert (champion.version, challenger.version) == ("1", "2")
    assert champion.aliases == ("champion",)
    assert champion.requested_as == "demo-classifier@champion"
    assert champion.uri == "models:/demo-classifier/1"
    assert champion.run_id and champion.run_id != challenger.run_id


def test_unknown_model_lists_registered_models(demo_store: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match="no registered model named 'fraud'") as info:
        resolve(client_for(demo_store.tracking_uri), "fraud@champion")
    assert "demo-classifier" in str(info.value)


def test_unknown_alias_lists_versions_and_aliases(demo_store: Settings) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve(client_for(demo_store.tracking_uri), "demo-classifier@prod")
    message = str(info.value)
    assert "no alias @prod" in message
    assert "Versions: 1, 2" in message
    assert "@champion -> 1" in message and "@challenger -> 2" in message


def test_unknown_version_lists_versions(demo_store: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no version 7\. Versions: 1, 2"):
        resolve(client_for(demo_store.tracking_uri), "demo-classifier/7")


def test_version_not_ready_is_refused(fresh_demo_store: Settings) -> None:
    set_status(fresh_demo_store, "demo-classifier", "2", "PENDING_REGISTRATION")
    client = client_for(fresh_demo_store.tracking_uri)
    with pytest.raises(VersionNotReadyError, match="PENDING_REGISTRATION, not READY"):
        resolve(client, "demo-classifier@challenger")
    assert resolve(client, "demo-classifier/1").version == "1"


def test_download_gives_the_mlflow_model_directory(demo_store: Settings, tmp_path: Path) -> None:
    client = client_for(demo_store.tracking_uri)
    path = download(client, resolve(client, "demo-classifier/2"), tmp_path)
    assert {"MLmodel", "model.ubj", "requirements.txt", "input_example.json"} <= {
        p.name for p in path.iterdir()
    }


def test_deleted_artifacts_are_a_clear_error(fresh_demo_store: Settings, tmp_path: Path) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    mv = resolve(client, "demo-classifier/1")
    for mlmodel in list(fresh_demo_store.artifact_root.rglob("MLmodel")):
        shutil.rmtree(mlmodel.parent)
    with pytest.raises(ArtifactError, match="demo-classifier/1"):
        download(client, mv, tmp_path)


def test_fluent_uris_leave_mlflow_as_they_found_it(demo_store: Settings, tmp_path: Path) -> None:
    import os

    import mlflow
    from mlflow import MlflowClient

    from pipeline.models.registry import fluent_uris

    other = f"sqlite:///{tmp_path}/other.db"
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with fluent_uris(other, other):
        assert mlflow.get_registry_uri() == other
    assert {k: os.environ.get(k) for k in before} == before
    # A client given only a tracking URI must use it for the registry too, not a leftover.
    client = MlflowClient(demo_store.tracking_uri)
    assert str(client.get_model_version("demo-classifier", "1").version) == "1"
