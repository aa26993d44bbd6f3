"""The registry check without MLflow (`recall.py`): it confirms MLflow's earlier answer or says
nothing, against a real SQLite store that MLflow's own client changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.build import cache
from pipeline.build.plan import BuildRequest, resolve_request
from pipeline.models import integrity, recall
from pipeline.models.registry import ModelRef, ModelVersion, client_for, parse_ref, resolve
from pipeline.settings import Settings
from tests.stores import set_status

MODEL = "demo-classifier"


def _remembered(settings: Settings, text: str) -> tuple[ModelRef, ModelVersion]:
    """Resolve `text` with MLflow and keep its answer, as a build does."""
    ref = parse_ref(text)
    mv = resolve(client_for(settings.tracking_uri), ref)
    cache.keep_lookup(settings.build_cache, settings.registry_uri, text,
                      recall.record(settings.registry_uri, mv))
    return ref, mv


def _recall(settings: Settings, ref: ModelRef) -> ModelVersion | None:
    kept = cache.load_lookup(settings.build_cache, settings.registry_uri, str(ref))
    return recall.confirm(kept, settings.registry_uri, ref) if kept is not None else None


@pytest.mark.parametrize("text", [f"{MODEL}@champion", f"{MODEL}/2"])
def test_an_unchanged_answer_is_confirmed_without_mlflow(
    fresh_demo_store: Settings, text: str
) -> None:
    ref, mv = _remembered(fresh_demo_store, text)
    assert _recall(fresh_demo_store, ref) == mv


def test_nothing_is_recalled_that_mlflow_never_answered(fresh_demo_store: Settings) -> None:
    assert _recall(fresh_demo_store, parse_ref(f"{MODEL}@champion")) is None


def test_a_moved_alias_is_left_to_mlflow_and_the_build_follows_it(
    fresh_demo_store: Settings,
) -> None:
    ref, _ = _remembered(fresh_demo_store, f"{MODEL}@champion")
    client_for(fresh_demo_store.tracking_uri).set_registered_model_alias(MODEL, "champion", "2")
    assert _recall(fresh_demo_store, ref) is None

    resolved = resolve_request(BuildRequest(control=f"{MODEL}@champion"), fresh_demo_store,
                               echo=lambda _: None)
    assert resolved.versions["control"].version == "2"
    # MLflow's new answer is remembered: the next build confirms it without MLflow.
    assert _recall(fresh_demo_store, ref) == resolved.versions["control"]


def test_a_version_no_longer_ready_or_deleted_is_left_to_mlflow(
    fresh_demo_store: Settings,
) -> None:
    ref, _ = _remembered(fresh_demo_store, f"{MODEL}/2")
    set_status(fresh_demo_store, MODEL, "2", "FAILED_REGISTRATION")
    assert _recall(fresh_demo_store, ref) is None
    set_status(fresh_demo_store, MODEL, "2", "READY")
    assert _recall(fresh_demo_store, ref) is not None
    client_for(fresh_demo_store.tracking_uri).delete_model_version(MODEL, "2")
    assert _recall(fresh_demo_store, ref) is None


def test_a_changed_tag_or_alias_set_is_a_changed_answer(fresh_demo_store: Settings) -> None:
    client = client_for(fresh_demo_store.tracking_uri)
    ref, _ = _remembered(fresh_demo_store, f"{MODEL}/1")
    client.set_model_version_tag(MODEL, "1", integrity.DIGEST_TAG, "0" * 64)
    assert _recall(fresh_demo_store, ref) is None

    ref, _ = _remembered(fresh_demo_store, f"{MODEL}/1")
    client.set_registered_model_alias(MODEL, "blessed", "1")
    assert _recall(fresh_demo_store, ref) is None


@pytest.mark.parametrize("field", ["mlflow", "schema"])
def test_another_mlflow_or_schema_revision_is_left_to_mlflow(
    fresh_demo_store: Settings, field: str
) -> None:
    ref, mv = _remembered(fresh_demo_store, f"{MODEL}@champion")
    kept = recall.record(fresh_demo_store.registry_uri, mv)
    assert recall.confirm(kept, fresh_demo_store.registry_uri, ref) == mv
    assert recall.confirm({**kept, field: "another"}, fresh_demo_store.registry_uri, ref) is None


def test_the_alias_latest_and_other_registries_are_left_to_mlflow(
    fresh_demo_store: Settings, tmp_path: Path
) -> None:
    ref, mv = _remembered(fresh_demo_store, f"{MODEL}@champion")
    uri = fresh_demo_store.registry_uri
    assert recall.confirm(recall.record(uri, mv), "databricks", ref) is None
    latest = ModelRef(MODEL, alias="latest")
    assert recall.confirm(recall.record(uri, mv), uri, latest) is None
    missing = f"sqlite:///{tmp_path / 'gone.db'}"
    assert recall.confirm(recall.record(missing, mv), missing, ref) is None
    assert not (tmp_path / "gone.db").exists()  # read-only: never creates a store


def test_a_confirmed_rebuild_resolves_without_importing_mlflow(fresh_demo_store: Settings) -> None:
    _remembered(fresh_demo_store, f"{MODEL}@champion")
    _remembered(fresh_demo_store, f"{MODEL}/2")
    script = (
        "import sys\n"
        "from pipeline.build.plan import BuildRequest, resolve_request\n"
        "from pipeline.settings import load_settings\n"
        f"r = resolve_request(BuildRequest(control='{MODEL}@champion', treatment='{MODEL}/2'),"
        " load_settings(), print)\n"
        "print(sorted(m.version for m in r.versions.values()))\n"
        "print('mlflow imported' if 'mlflow' in sys.modules else 'no mlflow')\n"
    )
    env = {**os.environ, "BENTOSHIP_HOME": str(fresh_demo_store.home),
           "MLFLOW_TRACKING_URI": fresh_demo_store.tracking_uri}
    env.pop("MLFLOW_REGISTRY_URI", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "the registry confirms the last build's answers" in out
    assert out.splitlines()[-2:] == ["['1', '2']", "no mlflow"]
