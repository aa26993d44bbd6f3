"""Helpers for tests that need real models, a real BentoML store and a real server.

- :func:`train_sklearn` / :func:`train_xgboost`: tiny binary classifiers on synthetic data;
- :func:`save_sklearn` / :func:`save_xgboost`: MLflow model directories (signature and input
  example included) via ``mlflow.sklearn.save_model`` / ``mlflow.xgboost.save_model``;
- :func:`import_model`: put an MLflow model directory into a BentoML store under a given
  ``BENTOML_HOME`` following contract 1 (runs in a subprocess, so the caller's BentoML
  configuration is untouched);
- :func:`make_config` / :func:`write_build_context`: a ``ServiceConfig`` and a build
  context (a copy of ``services/`` plus ``services/bentoship.json``);
- :func:`serve`: ``bentoml serve`` a build context on a free port, wait for ``/readyz``,
  stop it afterwards (:func:`start_server` + :func:`wait_ready` when a test wants to watch
  a server that should never become ready).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SERVICES_SRC = REPO / "services"
FEATURES: tuple[str, ...] = ("mean_radius", "mean_texture", "mean_smoothness", "worst_area")


# --- models -----------------------------------------------------------------------------


def make_data(
    n: int = 300, seed: int = 0, features: Sequence[str] = FEATURES
) -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic binary classification data with float64 columns named ``features``."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, len(features))), columns=list(features))
    logits = (
        X.iloc[:, 0] - 0.5 * X.iloc[:, 1] + 0.25 * X.iloc[:, -1] + rng.normal(scale=0.5, size=n)
    )
    y = (logits > 0).astype(int).rename("label")
    return X, y


def train_sklearn(X: pd.DataFrame, y: pd.Series) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)


def clip_outliers(X: Any) -> Any:
    """A custom transformer function: skops can only load it by trusting this module."""
    return np.clip(X, -3, 3)


def train_sklearn_custom(X: pd.DataFrame, y: pd.Series) -> Any:
    """A pipeline whose skops file holds a non-sklearn type (``tests.servicekit.clip_outliers``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return make_pipeline(FunctionTransformer(clip_outliers), LogisticRegression()).fit(X, y)


def train_xgboost(X: pd.DataFrame, y: pd.Series, *, raw_booster: bool = False) -> Any:
    import xgboost

    if raw_booster:
        return xgboost.train(
            {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1},
            xgboost.DMatrix(X, label=y),
            num_boost_round=10,
        )
    return xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(X, y)


def save_sklearn(
    model: Any,
    X: pd.DataFrame,
    path: Path,
    *,
    serialization_format: str = "skops",
    skops_trusted_types: list[str] | None = None,
    infer_requirements: bool = False,
) -> Path:
    """``mlflow.sklearn.save_model`` with a signature and an input example.

    Requirements are MLflow's defaults for the flavor, pinned (fast); with
    ``infer_requirements`` MLflow infers them as ``log_model`` would (~5 s, and it picks up
    whatever the test process imported).
    """
    import mlflow.sklearn
    from mlflow.models import infer_signature

    requirements = None
    if not infer_requirements:
        requirements = [
            f"mlflow=={mlflow.__version__}",
            *mlflow.sklearn.get_default_pip_requirements(
                include_cloudpickle=serialization_format == "cloudpickle",
                include_skops=serialization_format == "skops",
            ),
        ]
    signature = infer_signature(
        X, model.predict_proba(X)[:, 1] if hasattr(model, "predict_proba") else model.predict(X)
    )
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format=serialization_format,
        skops_trusted_types=skops_trusted_types,
        signature=signature,
        input_example=X.head(3),
        pip_requirements=requirements,
    )
    return path


def save_xgboost(
    model: Any, X: pd.DataFrame, path: Path, *, infer_requirements: bool = False
) -> Path:
    """``mlflow.xgboost.save_model`` (ubj) with a signature and an input example."""
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    if isinstance(model, xgboost.Booster):
        output = model.inplace_predict(X.to_numpy())
    else:
        output = model.predict_proba(X)[:, 1]
    requirements = None
    if not infer_requirements:
        requirements = [
            f"mlflow=={mlflow.__version__}",
            *mlflow.xgboost.get_default_pip_requirements(),
        ]
    mlflow.xgboost.save_model(
        model,
        str(path),
        signature=infer_signature(X, output),
        input_example=X.head(3),
        pip_requirements=requirements,
    )
    return path


# --- BentoML store (contract 1) ---------------------------------------------------------


def bento_model_name(registered_name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", registered_name.lower())


def model_tag(registered_name: str, version: str | int) -> str:
    return f"{bento_model_name(registered_name)}:v{version}"


_IMPORT_SCRIPT = """
import json, shutil, sys
import bentoml
spec = json.loads(sys.argv[1])
with bentoml.models.create(spec["tag"], metadata=spec["metadata"]) as model:
    shutil.copytree(spec["source"], model.path_of("mlflow_model"))
print(model.tag)
"""


def import_model(
    mlflow_dir: Path,
    bentoml_home: Path,
    *,
    registered_name: str,
    version: str | int,
    flavor: str,
    run_id: str = "0123456789abcdef0123456789abcdef",
) -> str:
    """Copy an MLflow model directory into the BentoML store at ``bentoml_home``; returns the tag."""
    tag = model_tag(registered_name, version)
    spec = {
        "tag": tag,
        "source": str(mlflow_dir),
        "metadata": {
            "registered_name": registered_name,
            "version": str(version),
            "run_id": run_id,
            "source": f"models:/{registered_name}/{version}",
            "flavor": flavor,
        },
    }
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(
        [sys.executable, "-c", _IMPORT_SCRIPT, json.dumps(spec)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return tag


# --- config and build context -----------------------------------------------------------


def make_config(
    variants: Sequence[dict[str, Any]],
    *,
    features: Sequence[str] = FEATURES,
    examples: Sequence[float] | None = None,
    name: str = "demo-classifier",
    **overrides: Any,
) -> Any:
    """A ``ServiceConfig`` with double features; ``variants`` are dicts of Variant fields."""
    from services.config import ServiceConfig

    examples = list(examples) if examples is not None else [0.5] * len(features)
    data: dict[str, Any] = {
        "name": name,
        "code_version": "1a2b3c4",
        "image_tag": "ctl-v1.trt-v2.code-1a2b3c4",
        "features": [
            {"name": f, "type": "double", "required": True, "example": e}
            for f, e in zip(features, examples)
        ],
        "variants": list(variants),
        "routing": {
            "salt": name,
            "key_field": "request_id",
            "key_header": "x-bentoship-key",
            "override_header": "x-bentoship-variant",
        },
        # The models of this kit are binary classifiers of 0/1 (make_data).
        "output": {"task": "classification", "classes": [0, 1]},
    }
    data.update(overrides)
    return ServiceConfig.model_validate(data)


def write_build_context(dest: Path, config: Any, services_src: Path = SERVICES_SRC) -> Path:
    """``dest/services/`` = a copy of ``services/`` plus ``bentoship.json``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "services"
    shutil.copytree(
        services_src,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "bentoship.json"),
        dirs_exist_ok=False,
    )
    (target / "bentoship.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    return dest


# --- serving ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def start_server(
    context_dir: Path,
    bentoml_home: Path,
    *,
    target: str = "services.service:Bentoship",
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """Run ``bentoml serve`` in ``context_dir`` without waiting for it; stopped on exit."""
    port = port or free_port()
    log = context_dir / f"serve-{port}.log"
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        **(extra_env or {}),
    }
    bentoml_bin = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml_bin), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--working-dir", str(context_dir)],
            cwd=context_dir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Served(url=f"http://127.0.0.1:{port}", process=process, log=log)
    finally:
        stop(process)


def wait_ready(served: Served, timeout: float = 120.0) -> None:
    """Poll ``/readyz`` until 200; raise with the server log if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if served.process.poll() is not None:
            raise RuntimeError(
                f"bentoml serve exited with {served.process.returncode}:\n{served.log_text()[-4000:]}"
            )
        try:
            if httpx.get(served.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"/readyz not 200 after {timeout}s:\n{served.log_text()[-4000:]}")
        time.sleep(0.25)


@contextlib.contextmanager
def serve(
    context_dir: Path,
    bentoml_home: Path,
    *,
    target: str = "services.service:Bentoship",
    port: int | None = None,
    timeout: float = 120.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """Run ``bentoml serve`` in ``context_dir``; yields once ``/readyz`` answers 200."""
    with start_server(
        context_dir, bentoml_home, target=target, port=port, extra_env=extra_env
    ) as served:
        wait_ready(served, timeout)
        yield served


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and its children."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
