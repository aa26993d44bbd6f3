"""`bentoship serve` and `bentoship run` end to end, over HTTP, against the models themselves.

Both commands run as real subprocesses (`python -m pipeline ...`) on the session's demo store;
their answers are compared with the registered model versions loaded by MLflow in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.build.builder import BuildResult
from pipeline.settings import Settings
from tests.stores import free_port

pytestmark = pytest.mark.slow

MODEL = "demo-classifier"
VARIANTS = {"control": "champion", "treatment": "challenger"}
Scorer = Callable[[Sequence[dict[str, Any]]], list[float]]


@dataclass(frozen=True)
class Reference:
    """The registered versions behind the demo aliases, loaded by MLflow: what they answer."""

    versions: dict[str, str]  # variant -> model version
    scorers: dict[str, Scorer]  # variant -> the model's own predict_proba[:, 1]
    example_rows: list[dict[str, Any]]  # the control's logged input example


@pytest.fixture(scope="module")
def reference(demo_store: Settings, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    import mlflow.artifacts
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(demo_store.tracking_uri, demo_store.registry_uri)
    versions: dict[str, str] = {}
    scorers: dict[str, Scorer] = {}
    examples: list[dict[str, Any]] = []
    for variant, alias in VARIANTS.items():
        version = client.get_model_version_by_alias(MODEL, alias).version
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(MODEL, version),
            dst_path=str(tmp_path_factory.mktemp(f"model-{variant}")),
            tracking_uri=demo_store.tracking_uri,
        )
        model = Model.load(path)
        versions[variant], scorers[variant] = str(version), _scorer(path, model)
        if variant == "control":
            example = model.load_input_example(path)
            assert isinstance(example, pd.DataFrame), example
            examples = example.to_dict(orient="records")
    return Reference(versions, scorers, examples)


def _scorer(path: str, mlmodel: Any) -> Scorer:
    import mlflow.sklearn
    import mlflow.xgboost
    import pandas as pd
    import xgboost as xgb

    columns = mlmodel.signature.inputs.input_names()  # the order the model was fitted with

    def frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        return pd.DataFrame(list(rows))[columns]

    if "xgboost" in mlmodel.flavors:
        booster = mlflow.xgboost.load_model(path)
        if isinstance(booster, xgb.Booster):  # binary:logistic: its output is P(class 1)
            return lambda rows: [float(s) for s in booster.predict(xgb.DMatrix(frame(rows)))]
        return lambda rows: [float(s) for s in booster.predict_proba(frame(rows))[:, 1]]
    model = mlflow.sklearn.load_model(path)
    return lambda rows: [float(s) for s in model.predict_proba(frame(rows))[:, 1]]


def check_answers(reference: Reference, rows_in: list[dict[str, Any]], rows_out: list[Any]) -> set[str]:
    """Each answered row is what its variant's model says for that row; returns the variants."""
    assert len(rows_out) == len(rows_in)
    for row_in, row_out in zip(rows_in, rows_out):
        variant = row_out["variant"]
        assert row_out["model_version"] == reference.versions[variant], row_out
        expected = reference.scorers[variant]([row_in])[0]
        assert row_out["score"] == pytest.approx(expected, abs=1e-6), (variant, row_in)
        assert row_out["prediction"] == int(row_out["score"] >= 0.5)
    return {r["variant"] for r in rows_out}


# --- bentoship serve -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path  # stderr: progress and the server's log
    stdout: Path  # nothing: serve has no result to print
    tmpdir: Path  # the server's TMPDIR: where serve puts its Bento folder

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def bento_folders(self) -> list[Path]:
        return sorted(self.tmpdir.glob("bentoship-serve-*"))


def start_serve(store: Settings, root: Path, *models: str) -> Server:
    """`python -m pipeline serve` on a free port; returns once /readyz answers 200."""
    port = free_port()
    tmpdir = root / "tmp"
    tmpdir.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri,
           "BENTOSHIP_HOME": str(store.home), "TMPDIR": str(tmpdir)}
    log, stdout = root / "serve.log", root / "serve.stdout"
    with log.open("wb") as err, stdout.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", *models, "--port", str(port)],
            env=env, stdout=out, stderr=err,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log, stdout, tmpdir)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"bentoship serve exited {process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            shutdown(server)
            pytest.fail(f"bentoship serve was not ready in 180s:\n{server.log_text()}")
        time.sleep(0.5)


def stop(server: Server, signum: int, timeout: float = 60) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signum)
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
        pytest.fail(f"bentoship serve did not stop within {timeout:.0f}s of signal {signum}:\n"
                    f"{server.log_text()}")


def shutdown(server: Server) -> None:
    """Whatever a test left running: SIGTERM (serve forwards it; a SIGKILL would orphan the
    server, which runs in its own process group), SIGKILL only if that is not enough."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def assert_stopped_cleanly(server: Server, code: int) -> None:
    assert code == 0, server.log_text()
    assert server.stdout.read_bytes() == b"", "progress and logs belong on stderr"
    assert "Server stopped (exit code 0)" in server.log_text()
    assert server.bento_folders() == [], server.log_text()
    with pytest.raises(httpx.TransportError):  # nothing of the server is left listening
        httpx.get(f"{server.url}/readyz", timeout=2)


@pytest.fixture(scope="module")
def served(demo_store: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_serve(demo_store, tmp_path_factory.mktemp("serve-ab"),
                         "--model", f"{MODEL}@champion", "--treatment", f"{MODEL}@challenger")
    try:
        yield server
    finally:
        shutdown(server)


def test_serve_keeps_its_bento_folder_while_it_runs(served: Server) -> None:
    (folder,) = served.bento_folders()
    assert (folder / "bento" / "bento.yaml").is_file()
    assert {"v1", "v2"} <= {p.name for p in (folder / "bento" / "models" / MODEL).iterdir()}


def test_serve_answers_like_the_models_themselves(served: Server, reference: Reference) -> None:
    rows = reference.example_rows
    assert len(rows) == 5
    response = httpx.post(f"{served.url}/predict", json={"rows": rows}, timeout=30)
    assert response.status_code == 200, response.text
    check_answers(reference, rows, response.json()["rows"])
    for variant in VARIANTS:  # and each variant on every row, whatever the split chose above
        response = httpx.post(f"{served.url}/predict", json={"rows": rows}, timeout=30,
                              headers={"x-bentoship-variant": variant})
        assert response.status_code == 200, response.text
        assert check_answers(reference, rows, response.json()["rows"]) == {variant}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"rows": [{"mean_radius": 1.0}]}', 422),  # missing features
        (b'{"rows": [{"no_such_feature": 1.0}]}', 422),
        (b'{"rows": "not a list"}', 422),
        (b"[]", 422),
    ],
    ids=["not-json", "missing-features", "unknown-feature", "rows-not-a-list", "not-an-object"],
)
def test_serve_answers_invalid_requests_with_4xx_and_the_error_shape(
    served: Server, reference: Reference, body: bytes, status: int
) -> None:
    response = httpx.post(f"{served.url}/predict", content=body, timeout=30,
                          headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "detail"}
    assert isinstance(error["error"], str) and error["error"]
    assert isinstance(error["detail"], list) and error["detail"]


def test_serve_wrong_types_are_4xx_too(served: Server, reference: Reference) -> None:
    row = {**reference.example_rows[0], "mean_radius": "large"}
    response = httpx.post(f"{served.url}/predict", json={"rows": [row]}, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["error"] and response.json()["detail"]


def test_serve_stops_on_ctrl_c_and_removes_its_bento(served: Server) -> None:
    """Last of the tests on `served`: it stops the server."""
    assert_stopped_cleanly(served, stop(served, signal.SIGINT))


def test_serve_stops_on_sigterm_and_removes_its_bento(demo_store: Settings, tmp_path: Path,
                                                      reference: Reference) -> None:
    server = start_serve(demo_store, tmp_path, "--model", f"{MODEL}@champion")
    try:
        response = httpx.post(f"{server.url}/predict", json={"rows": reference.example_rows},
                              timeout=30)
        assert response.status_code == 200, response.text
        assert check_answers(reference, reference.example_rows, response.json()["rows"]) == {
            "control"}
        assert_stopped_cleanly(server, stop(server, signal.SIGTERM))
    finally:
        shutdown(server)


# --- bentoship run -------------------------------------------------------------------------------


@pytest.mark.docker
def test_run_starts_the_built_image_and_predicts_like_the_model(
    ab_build: BuildResult, docker_client: Any, reference: Reference
) -> None:
    import docker.errors

    name = f"bentoship-test-serve-run-{uuid.uuid4().hex[:8]}"
    port = free_port()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", ab_build.reference, "--port", str(port),
             "--name", name, "--output", "json"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["container"] == name
        assert answer["url"] == f"http://127.0.0.1:{port}"
        check_answers(reference, answer["request"]["rows"], answer["response"]["rows"])
        # The container keeps serving after `run` returned.
        assert httpx.get(f"{answer['url']}/readyz", timeout=5).status_code == 200
    finally:
        try:
            docker_client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
