from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ArtifactError
from pipeline.models import integrity
from pipeline.models.registry import client_for, download, resolve
from pipeline.settings import Settings


def test_first_use_records_the_manifest_and_later_uses_verify_it(
    fresh_demo_store: Settings, tmp_path: Path
) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    mv = resolve(client, "demo-classifier/2")
    first = integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "a"))
    tags = client.get_model_version("demo-classifier", "2").tags
    assert tags[integrity.DIGEST_TAG] == first
    second = integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "b"))
    assert second == first


def test_an_artifact_overwritten_in_place_is_refused_naming_the_file(
    fresh_demo_store: Settings, tmp_path: Path
) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    mv = resolve(client, "demo-classifier/2")
    integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "a"))
    [stored] = [p for p in fresh_demo_store.artifact_root.rglob("model.ubj")]
    stored.write_bytes(stored.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ArtifactError, match=r"changed: model\.ubj"):
        integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "b"))


def test_mlflows_own_registered_model_meta_file_is_not_a_tampering(
    fresh_demo_store: Settings, tmp_path: Path
) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    mv = resolve(client, "demo-classifier/2")
    first = integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "a"))
    [model_dir] = [p.parent for p in fresh_demo_store.artifact_root.rglob("model.ubj")]
    # What MLflow writes when something loads models:/demo-classifier/2 from this store.
    (model_dir / "registered_model_meta").write_text("model_name: demo-classifier\n")
    assert integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "b")) == first


def test_a_file_changed_in_place_in_a_nested_folder_changes_the_manifest(tmp_path: Path) -> None:
    weights = tmp_path / "artifacts" / "sub" / "weights.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\x01" * 64)
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    before = integrity.manifest(tmp_path)
    assert set(before) == {"MLmodel", "artifacts/sub/weights.bin"}

    weights.write_bytes(b"\x01" * 63 + b"\x02")  # same size, same name, one byte different
    after = integrity.manifest(tmp_path)

    assert [p for p in before if before[p] != after[p]] == ["artifacts/sub/weights.bin"]
    assert integrity.digest(after) != integrity.digest(before)


def test_a_nested_artifact_overwritten_in_place_is_refused_naming_its_path(
    fresh_demo_store: Settings, tmp_path: Path
) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    mv = resolve(client, "demo-classifier/2")
    [model_dir] = [p.parent for p in fresh_demo_store.artifact_root.rglob("model.ubj")]
    stored = model_dir / "artifacts" / "sub" / "weights.bin"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"\x01" * 64)  # registered with the version, before its first build
    first = integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "a"))
    assert "artifacts/sub/weights.bin" in json.loads(
        client.get_model_version("demo-classifier", "2").tags[integrity.MANIFEST_TAG]
    )

    stored.write_bytes(b"\x01" * 63 + b"\x02")
    with pytest.raises(ArtifactError) as excinfo:
        integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "b"))
    message = str(excinfo.value)
    assert "demo-classifier/2" in message
    assert "changed: artifacts/sub/weights.bin" in message
    assert "added" not in message and "missing" not in message
    # The recorded manifest is left as it was: the next build is refused too.
    assert client.get_model_version("demo-classifier", "2").tags[integrity.DIGEST_TAG] == first


def test_a_nested_file_added_after_the_first_build_is_named(
    fresh_demo_store: Settings, tmp_path: Path
) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    mv = resolve(client, "demo-classifier/2")
    [model_dir] = [p.parent for p in fresh_demo_store.artifact_root.rglob("model.ubj")]
    integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "a"))
    extra = model_dir / "artifacts" / "sub" / "extra.bin"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"\x00")
    with pytest.raises(ArtifactError, match=r"added: artifacts/sub/extra\.bin"):
        integrity.verify_or_record(client, mv, download(client, mv, tmp_path / "b"))
