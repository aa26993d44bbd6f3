"""A release compares its OpenAPI spec with production's and refuses a breaking change.

Real parts: an MLflow store with three tiny registered versions of one model, the Docker
engine, the OCI registry, the release ledger. Version 1 takes four columns; version 2 adds an
optional fifth (compatible); version 3 drops one (breaking). Releases run in that order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pipeline.build.plan import BuildRequest
from pipeline.cli import cli
from pipeline.config import parse_release_config
from pipeline.models.registry import client_for, ensure_experiment, fluent_uris
from pipeline.release import handoff, ledger
from pipeline.settings import Settings
from tests import servicekit
from tests.stores import ALLOW_DIRTY, CHECKOUT_DIRTY, promote, store_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "guard-model"
SERVICE = "api-guard"


@dataclass(frozen=True)
class Store:
    settings: Settings
    versions: dict[str, str]  # "base", "optional", "dropped" -> registered version

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.settings.tracking_uri,
            "BENTOSHIP_HOME": str(self.settings.home),
        }

    def ref(self, which: str) -> str:
        return f"{MODEL}/{self.versions[which]}"


def _register(settings: Settings, X: pd.DataFrame, y: pd.Series) -> str:
    """Log a small imputer + logistic regression with skops, as a new version of MODEL."""
    from importlib.metadata import version as installed

    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression()).fit(X, y)
    client = client_for(settings.tracking_uri)
    # Scoped: MLflow's setters also write MLFLOW_*_URI into os.environ for every later test.
    with fluent_uris(settings.tracking_uri, settings.registry_uri):
        mlflow.set_experiment(
            experiment_id=ensure_experiment(client, "api-guard", settings.artifact_root)
        )
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format="skops",
                skops_trusted_types=[
                    "numpy.dtype",
                    "sklearn.impute._base.SimpleImputer",
                    "sklearn.linear_model._logistic.LogisticRegression",
                    "sklearn.pipeline.Pipeline",
                    "sklearn.preprocessing._data.StandardScaler",
                ],
                pyfunc_predict_fn="predict_proba",
                pip_requirements=[
                    f"{pkg}=={installed(pkg)}"
                    for pkg in ("scikit-learn", "skops", "numpy", "pandas", "scipy")
                ],
                # NaN in a column makes MLflow record it as optional (`required: false`).
                signature=infer_signature(X, model.predict_proba(X)[:, 1]),
                input_example=X.head(3),
                registered_model_name=MODEL,
            )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    settings = store_settings(tmp_path_factory.mktemp("api-guard-store"))
    X, y = servicekit.make_data(n=200, seed=3)
    extra = np.random.default_rng(3).normal(size=len(X))
    extra[10::7] = np.nan  # optional: missing in some rows (never in the example rows)
    versions = {
        "base": _register(settings, X, y),
        "optional": _register(settings, X.assign(extra_signal=extra), y),
        "dropped": _register(settings, X.drop(columns=["worst_area"]), y),
    }
    return Store(settings, versions)


@pytest.fixture(scope="module")
def production(
    store: Store, docker_client: Any, base_image: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[handoff.Handoff, handoff.Handoff]:  # type: ignore[no-untyped-def]
    """The first release (version 1), then a compatible one (version 2) on top of it."""
    out = tmp_path_factory.mktemp("guard-releases")
    config = parse_release_config({})
    first = handoff.release(
        BuildRequest(control=store.ref("base"), name=SERVICE),
        store.settings,
        config,
        out / "first",
        echo=print,
        allow_dirty=CHECKOUT_DIRTY,
    )
    promote(store.settings, first.record.release_id)
    compatible = handoff.release(
        BuildRequest(control=store.ref("optional"), name=SERVICE),
        store.settings,
        config,
        out / "compatible",
        echo=print,
        allow_dirty=CHECKOUT_DIRTY,
    )
    promote(store.settings, compatible.record.release_id)
    return first, compatible


def _ledger(store: Store) -> list[ledger.ReleaseRecord]:
    return ledger.list_releases(client_for(store.settings.tracking_uri), limit=100)


def _artifact(store: Store, release_id: str, path: str) -> Any:
    client = client_for(store.settings.tracking_uri)
    local = client.download_artifacts(release_id, path)
    return json.loads(Path(local).read_text())


def test_a_first_release_has_nothing_to_compare_with(production, store: Store) -> None:  # type: ignore[no-untyped-def]
    first, _ = production
    assert first.api is not None and first.api.decision == "none"
    assert (
        ledger.get_release(
            client_for(store.settings.tracking_uri), first.record.release_id
        ).api_change
        == "none"
    )


def test_an_added_optional_column_is_compatible_and_recorded(production, store: Store) -> None:  # type: ignore[no-untyped-def]
    first, compatible = production
    assert compatible.spec.baseline_digest == first.spec.digest
    assert compatible.record.api_change == "compatible"
    diff = _artifact(store, compatible.record.release_id, "openapi-diff.json")
    assert diff["decision"] == "compatible"
    assert diff["production_release"] == first.record.release_id
    assert {
        "kind": "compatible",
        "path": "POST /predict request rows[].extra_signal",
        "message": "new optional property",
    } in diff["changes"]
    spec = _artifact(store, compatible.record.release_id, "openapi.json")
    assert spec == compatible.spec.openapi
    assert "extra_signal" not in spec["components"]["schemas"]["Row"]["required"]


def test_a_breaking_release_is_refused_and_records_nothing(
    production,
    store: Store,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    _, compatible = production
    before = [r.release_id for r in _ledger(store)]
    out = tmp_path / "refused"
    result = CliRunner().invoke(
        cli,
        ["release", "--model", store.ref("dropped"), "--name", SERVICE, "--out", str(out),
         *ALLOW_DIRTY],
        env=store.env,
    )
    assert result.exit_code == 1, result.output
    assert f"refusing to release {SERVICE}" in result.output
    assert f"production release {compatible.record.short_id}" in result.output
    assert "POST /predict request rows[].worst_area: property removed" in result.output
    assert "--allow-breaking-api" in result.output and "[api: allow-breaking]" in result.output
    assert "Nothing was built, pushed or recorded." in result.output
    assert "Building the Bento" not in result.output  # refused before the first side effect
    assert [r.release_id for r in _ledger(store)] == before
    assert not out.exists()


def test_a_breaking_release_goes_through_when_allowed_and_says_so(
    production,
    store: Store,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    _, compatible = production
    result = CliRunner().invoke(
        cli,
        [
            "release",
            "--model",
            store.ref("dropped"),
            "--name",
            SERVICE,
            "--allow-breaking-api",
            *ALLOW_DIRTY,
            "--out",
            str(tmp_path / "allowed"),
            "--output",
            "json",
            "--quiet",
        ],
        env=store.env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["api"]["decision"] == "breaking-allowed"
    assert done["release"]["api_change"] == "breaking-allowed"
    assert done["baseline"] == compatible.spec.image
    release_id = done["release"]["release_id"]
    diff = _artifact(store, release_id, "openapi-diff.json")
    breaking = {(c["path"], c["message"]) for c in diff["changes"] if c["kind"] == "breaking"}
    assert ("POST /predict request rows[].worst_area", "property removed") in breaking
    shown = CliRunner().invoke(cli, ["releases", "show", release_id[:12]], env=store.env)
    assert shown.exit_code == 0, shown.output
    assert "API       breaking-allowed" in shown.output
    assert "openapi.json" in shown.output and "openapi-diff.json" in shown.output
