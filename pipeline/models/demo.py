"""Demo models: a scikit-learn control and an XGBoost treatment on a bundled dataset.

Both are binary classifiers on scikit-learn's breast-cancer dataset (shipped with the
library, so nothing is downloaded), with the column names turned into snake_case so the
service's API reads well. They are registered as two versions of one registered model with
the aliases `champion` (control) and `challenger` (treatment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.models.registry import (
    ModelVersion,
    client_for,
    ensure_experiment,
    fluent_uris,
    resolve,
)

DEMO_MODEL = "demo-classifier"
DEMO_EXPERIMENT = "bentoship-demo"


@dataclass(frozen=True)
class DemoResult:
    control: ModelVersion
    treatment: ModelVersion
    control_accuracy: float
    treatment_accuracy: float


def _dataset():  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: re.sub(r"[^a-z0-9]+", "_", c.lower()).strip("_"))
    features = frame.drop(columns=["target"]).astype("float64")
    return train_test_split(features, frame["target"], test_size=0.25, random_state=7)


def _log_evaluation_rows(rows):  # type: ignore[no-untyped-def]
    """The held-out rows, logged as the run's `evaluation` input with a loadable source: what
    `bentoship rehearse` replays when it is given no traffic file."""
    import tempfile
    import warnings

    import mlflow
    import mlflow.data

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "rows.csv"
        rows.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    source = mlflow.get_artifact_uri("evaluation/rows.csv")
    with warnings.catch_warnings():  # a local path is two kinds of local source to MLflow
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(rows, source=source, name="evaluation")
    mlflow.log_input(dataset, context="evaluation")


def train(
    tracking_uri: str,
    registry_uri: str | None = None,
    *,
    artifact_root: Path | None = None,
    name: str = DEMO_MODEL,
) -> DemoResult:
    """Train, log and register both demo models; point the aliases at the new versions.

    Requirements are given explicitly: MLflow's inference records whatever modules happen
    to be imported (pytest, rich, ...), and every one of them would have to reach the image.
    """
    with fluent_uris(tracking_uri, registry_uri or tracking_uri):
        return _train(tracking_uri, registry_uri, artifact_root, name)


def _train(
    tracking_uri: str, registry_uri: str | None, artifact_root: Path | None, name: str
) -> DemoResult:
    from importlib.metadata import version as installed

    import mlflow
    import xgboost as xgb
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    client = client_for(tracking_uri, registry_uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(client, DEMO_EXPERIMENT, artifact_root))
    common = [f"{pkg}=={installed(pkg)}" for pkg in ("numpy", "pandas", "scipy")]
    x_train, x_test, y_train, y_test = _dataset()
    example = x_test.head(5)

    with mlflow.start_run(run_name="control-logreg"):
        control = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        control.fit(x_train, y_train)
        control_acc = float(control.score(x_test, y_test))
        mlflow.log_metric("accuracy", control_acc)
        _log_evaluation_rows(x_test)
        info = mlflow.sklearn.log_model(
            control,
            name="model",
            serialization_format="skops",
            skops_trusted_types=[
                "sklearn.linear_model._logistic.LogisticRegression",
                "sklearn.pipeline.Pipeline",
                "sklearn.preprocessing._data.StandardScaler",
            ],
            pyfunc_predict_fn="predict_proba",
            pip_requirements=[
                f"scikit-learn=={installed('scikit-learn')}",
                f"skops=={installed('skops')}",
                *common,
            ],
            signature=infer_signature(example, control.predict_proba(example)),
            input_example=example,
            registered_model_name=name,
        )
        control_version = str(info.registered_model_version)

    with mlflow.start_run(run_name="treatment-xgboost"):
        params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": 7}
        booster = xgb.train(params, xgb.DMatrix(x_train, label=y_train), num_boost_round=60)
        scores = booster.predict(xgb.DMatrix(x_test))
        treatment_acc = float(((scores >= 0.5).astype(int) == y_test.to_numpy()).mean())
        mlflow.log_metric("accuracy", treatment_acc)
        mlflow.log_params(params)
        _log_evaluation_rows(x_test)
        info = mlflow.xgboost.log_model(
            booster,
            name="model",
            model_format="ubj",
            pip_requirements=[f"xgboost-cpu=={installed('xgboost-cpu')}", *common],
            signature=infer_signature(example, booster.predict(xgb.DMatrix(example))),
            input_example=example,
            registered_model_name=name,
        )
        treatment_version = str(info.registered_model_version)

    client.set_registered_model_alias(name, "champion", control_version)
    client.set_registered_model_alias(name, "challenger", treatment_version)
    return DemoResult(
        control=resolve(client, f"{name}/{control_version}"),
        treatment=resolve(client, f"{name}/{treatment_version}"),
        control_accuracy=control_acc,
        treatment_accuracy=treatment_acc,
    )


def existing(
    tracking_uri: str, registry_uri: str | None = None, *, name: str = DEMO_MODEL
) -> tuple[ModelVersion, ModelVersion] | None:
    """The registered demo versions behind @champion and @challenger, if both exist."""
    from pipeline.errors import ModelNotFoundError

    client = client_for(tracking_uri, registry_uri)
    try:
        return resolve(client, f"{name}@champion"), resolve(client, f"{name}@challenger")
    except ModelNotFoundError:
        return None
