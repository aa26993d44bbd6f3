from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.build.plan import BuildRequest, plan, resolve_request
from pipeline.cli import cli
from pipeline.config import BuildConfig, load_build_config
from pipeline.errors import ConfigError
from pipeline.models.registry import client_for, ensure_experiment, fluent_uris
from pipeline.models.requirements import (
    ModelRequirements,
    read_requirements,
    resolve_requirements,
)
from pipeline.settings import Settings
from tests import servicekit
from tests.stores import store_settings

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


# --- tools MLflow inferred from the training session ----------------------------------------------


def test_test_tools_are_dropped_with_a_note_naming_package_model_and_reason(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(
        "mlflow==3.17.2\npytest==8.3.4\npluggy==1.5.0  # via pytest\nlightgbm==4.6.0\n"
    )
    resolved = resolve_requirements(
        [read_requirements("fraud/3", tmp_path)], BASE, needs_pyfunc=False
    )

    assert resolved.requirements == ("lightgbm==4.6.0",)
    assert resolved.extras == ("lightgbm==4.6.0",)
    assert [d.as_dict() for d in resolved.dropped] == [
        {"package": "pytest", "requirement": "pytest==8.3.4", "model": "fraud/3",
         "reason": "a test tool, imported by the training session's tests, never by the service"},
        {"package": "pluggy", "requirement": "pluggy==1.5.0", "model": "fraud/3",
         "reason": "a test tool, imported by the training session's tests, never by the service"},
    ]
    assert resolved.dropped[0].note == (
        "fraud/3: not installing pytest==8.3.4: a test tool, imported by the training session's "
        'tests, never by the service (keep it with [build] keep_requirements = ["pytest"])'
    )


def test_notebook_and_lint_tools_are_dropped_from_every_model() -> None:
    resolved = resolve_requirements(
        [reqs("a/1", "IPyKernel==6.29.5", "numpy==2.4.6"), reqs("b/2", "jupyter_client", "black")],
        BASE,
        needs_pyfunc=False,
    )
    assert resolved.requirements == ("numpy==2.4.6",)
    assert [(d.model, d.package) for d in resolved.dropped] == [
        ("a/1", "ipykernel"), ("b/2", "jupyter-client"), ("b/2", "black")
    ]
    assert "notebook tool" in resolved.dropped[0].reason
    assert "lint" in resolved.dropped[2].reason


def test_a_dropped_tool_cannot_conflict_with_the_base() -> None:
    # The base pins no pytest; a second model pinning another one is no conflict either.
    resolved = resolve_requirements(
        [reqs("a/1", "pytest==8.3.4"), reqs("b/1", "pytest==7.4.0")], BASE, needs_pyfunc=False
    )
    assert resolved.requirements == () and len(resolved.dropped) == 2


def test_dropping_changes_the_requirements_hash_only_by_what_is_installed() -> None:
    plain = resolve_requirements([reqs("m/1", "numpy==2.4.6")], BASE, needs_pyfunc=False)
    with_tools = resolve_requirements([reqs("m/1", "numpy==2.4.6", "pytest", "ruff==0.9.0")],
                                      BASE, needs_pyfunc=False)
    assert with_tools.sha256 == plain.sha256


def test_keep_requirements_installs_a_default_drop_and_drop_requirements_adds_one() -> None:
    resolved = resolve_requirements(
        [reqs("m/1", "pytest==8.3.4", "pluggy==1.5.0", "lightgbm==4.6.0", "numpy==2.4.6")],
        BASE,
        needs_pyfunc=False,
        keep=("pytest", "Pluggy"),
        drop=("lightgbm",),
    )
    assert resolved.requirements == ("numpy==2.4.6", "pluggy==1.5.0", "pytest==8.3.4")
    [dropped] = resolved.dropped
    assert (dropped.package, dropped.reason) == (
        "lightgbm", "dropped by [build] drop_requirements in bentoship.toml"
    )
    assert dropped.note == (
        "m/1: not installing lightgbm==4.6.0: dropped by [build] drop_requirements in "
        "bentoship.toml"
    )


# --- the [build] table of bentoship.toml ----------------------------------------------------------


def test_build_table_overrides_reach_the_resolution(tmp_path: Path) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text('[release]\nnamespace = "ml"\n\n[build]\nkeep_requirements = ["PyTest"]\n'
                    'drop_requirements = ["lightgbm"]\n')
    config = load_build_config(path)
    assert config.keep_requirements == ("pytest",)
    resolved = resolve_requirements(
        [reqs("m/1", "pytest==8.3.4", "lightgbm==4.6.0")], BASE, needs_pyfunc=False,
        keep=config.keep_requirements, drop=config.drop_requirements,
    )
    assert resolved.requirements == ("pytest==8.3.4",)
    assert [d.package for d in resolved.dropped] == ["lightgbm"]


def test_no_file_or_no_build_table_means_the_default_list(tmp_path: Path) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text('[ci]\ntreatment_weight = 20\n')
    assert load_build_config(path).keep_requirements == load_build_config(None).keep_requirements
    assert load_build_config(path).drop_requirements == BuildConfig().drop_requirements == ()
    assert load_build_config(path).service.hooks is None
    assert BuildConfig().keep_requirements == BuildConfig().drop_requirements == ()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('keep = ["pytest"]',
         "build.keep: unknown key; allowed keys here: drop_requirements, keep_requirements"),
        ('drop_requirements = ["lightgbm==4.6.0"]',
         "build.drop_requirements: 'lightgbm==4.6.0' is not a package name"),
        ('keep_requirements = ["pytest"]\ndrop_requirements = ["PyTest"]',
         "build: pytest cannot be in both keep_requirements and drop_requirements"),
    ],
)
def test_build_table_errors_name_the_file_the_key_and_what_is_allowed(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text(f"[build]\n{table}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_build_config(path)
    assert str(excinfo.value).startswith(f"{path}: invalid build configuration")
    assert message in str(excinfo.value)


# --- through a build's plan (a real MLflow store, no Docker) --------------------------------------


def _register_with_test_tools(settings: Settings) -> str:
    """A small scikit-learn model whose requirements.txt names pytest and pluggy, as MLflow's
    inference writes it for a model logged from a test session."""
    from importlib.metadata import version as installed

    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    X, y = servicekit.make_data(n=60, seed=1)
    model = servicekit.train_sklearn(X, y)
    client = client_for(settings.tracking_uri)
    with fluent_uris(settings.tracking_uri, settings.registry_uri):
        mlflow.set_experiment(
            experiment_id=ensure_experiment(client, "requirements", settings.artifact_root)
        )
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format="skops",
                skops_trusted_types=[
                    "sklearn.linear_model._logistic.LogisticRegression",
                    "sklearn.pipeline.Pipeline",
                    "sklearn.preprocessing._data.StandardScaler",
                ],
                pyfunc_predict_fn="predict_proba",
                pip_requirements=[
                    *(f"{pkg}=={installed(pkg)}"
                      for pkg in ("scikit-learn", "skops", "numpy", "pandas", "scipy")),
                    "pytest==8.3.4",
                    "pluggy==1.5.0",
                ],
                signature=infer_signature(X, model.predict_proba(X)[:, 1]),
                input_example=X.head(3),
                registered_model_name="tools-model",
            )
    return f"tools-model/{info.registered_model_version}"


@pytest.fixture(scope="module")
def tools_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    settings = store_settings(tmp_path_factory.mktemp("requirements-store"))
    return settings, _register_with_test_tools(settings)


def test_a_builds_plan_leaves_test_tools_out_and_says_so(
    tools_store: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, ref = tools_store
    said: list[str] = []
    planned = plan(resolve_request(BuildRequest(control=ref), settings, said.append), settings,
                   tmp_path, said.append)

    names = {r.split("==")[0] for r in planned.requirements.requirements}
    assert "scikit-learn" in names and not names & {"pytest", "pluggy"}
    assert [(d.package, d.model) for d in planned.requirements.dropped] == [
        ("pytest", ref), ("pluggy", ref)
    ]
    assert (
        f"  {ref}: not installing pytest==8.3.4: a test tool, imported by the training session's "
        'tests, never by the service (keep it with [build] keep_requirements = ["pytest"])'
    ) in said


def test_a_builds_plan_follows_the_build_table(
    tools_store: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, ref = tools_store
    request = BuildRequest(control=ref, build_config=BuildConfig(keep_requirements=("pytest",)))
    planned = plan(resolve_request(request, settings, lambda _: None), settings, tmp_path,
                   lambda _: None)

    assert "pytest==8.3.4" in planned.requirements.extras
    assert [d.package for d in planned.requirements.dropped] == ["pluggy"]


# --- `bentoship build --config` -------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [True, False], ids=["--config", "./bentoship.toml"])
def test_build_refuses_an_unknown_build_key_before_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, explicit: bool
) -> None:
    (tmp_path / "bentoship.toml").write_text('[build]\nkeep = ["pytest"]\n')
    monkeypatch.chdir(tmp_path)
    args = ["build", "--model", "fraud@champion", *(["--config", "bentoship.toml"] * explicit)]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "BENTOSHIP_HOME": str(tmp_path)}

    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)

    assert result.exit_code == 1
    assert "bentoship.toml: invalid build configuration" in result.output
    assert "build.keep: unknown key; allowed keys here: drop_requirements, keep_requirements" in (
        result.output
    )
    assert not (tmp_path / "mlflow.db").exists()  # refused before the registry was opened


def test_service_batching_table_is_validated_with_the_service_config_fields(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text("[service.batching]\nenabled = true\nmax_rows = 32\nmax_wait_ms = 2\n")
    batching = load_build_config(path).service.batching
    assert (batching.enabled, batching.max_rows, batching.max_wait_ms) == (True, 32, 2.0)
    assert load_build_config(None).service.batching.enabled is False
    path.write_text("[service.batching]\nmax_row = 32\n")
    with pytest.raises(ConfigError) as info:
        load_build_config(path)
    assert ("service.batching.max_row: unknown key; allowed keys here: enabled, max_rows, "
            "max_wait_ms") in str(info.value)
