from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.errors import ArtifactError
from pipeline.models import integrity
from pipeline.models.registry import client_for, download, resolve


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
