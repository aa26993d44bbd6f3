"""services/predictor.py and services/app.py: a request end to end, without BentoML."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette

from services.app import AppState, create_app, max_body_bytes
from services.config import ServiceConfig
from services.errors import InvalidInputError, ModelError
from services.flavors import ModelOutput
from services.loading import LoadedModel, load_model
from services.metrics import METRIC_NAMES, SCORE_BUCKETS, create_metrics, observe_many
from services.predictor import Predictor
from services.routing import variant_for_key
from tests import servicekit

FEATURES = servicekit.FEATURES
ROW = dict(zip(FEATURES, (1.0, 0.2, 0.1, 3.0)))


def variants(control_weight: int = 50) -> list[dict[str, Any]]:
    return [
        {
            "name": "control",
            "model_tag": "demo-classifier:v1",
            "registered_name": "demo-classifier",
            "version": "1",
            "run_id": "r1",
            "flavor": "sklearn",
            "weight": control_weight,
        },
        {
            "name": "treatment",
            "model_tag": "demo-classifier:v2",
            "registered_name": "demo-classifier",
            "version": "2",
            "run_id": "r2",
            "flavor": "xgboost",
            "weight": 100 - control_weight,
        },
    ]


@pytest.fixture(scope="module")
def config() -> ServiceConfig:
    return servicekit.make_config(variants(), max_rows=50)


@pytest.fixture(scope="module")
def models(sklearn_dir: Path, xgb_classifier_dir: Path) -> dict[str, LoadedModel]:
    return {
        "control": load_model(sklearn_dir, FEATURES),
        "treatment": load_model(xgb_classifier_dir, FEATURES),
    }


BINARY = ModelOutput("classification", (0, 1))


@pytest.fixture(scope="module")
def predictor(config: ServiceConfig, models: dict[str, LoadedModel]) -> Predictor:
    return Predictor.from_config(config, models)


class AppClient:
    """Synchronous calls into an ASGI app through httpx (no server, no lifespan)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(config: ServiceConfig, predictor: Predictor, registry: CollectorRegistry) -> AppClient:
    state = AppState()
    state.activate(predictor, create_metrics(registry))
    return AppClient(create_app(config, state))


def keys_for(predictor: Predictor, variant: str, count: int) -> list[str]:
    found = (
        f"user-{i}"
        for i in range(10_000)
        if variant_for_key(predictor.router, f"user-{i}") == variant
    )
    return [next(found) for _ in range(count)]


def test_mixed_request_keeps_input_order(
    predictor: Predictor, models: dict[str, LoadedModel]
) -> None:
    control, treatment = keys_for(predictor, "control", 2), keys_for(predictor, "treatment", 2)
    keys = [control[0], treatment[0], treatment[1], control[1]]
    rows = [{**ROW, "mean_radius": float(i), "request_id": k} for i, k in enumerate(keys)]
    result = predictor.predict_parsed({"rows": rows})
    assert [r["variant"] for r in result.rows] == ["control", "treatment", "treatment", "control"]
    assert [r["model_version"] for r in result.rows] == ["1", "2", "2", "1"]
    matrix = np.array([[float(i), 0.2, 0.1, 3.0] for i in range(4)])
    expected = np.vstack([
        models["control"].predict(matrix[[0]]),
        models["treatment"].predict(matrix[[1, 2]]),
        models["control"].predict(matrix[[3]]),
    ])
    assert [r["score"] for r in result.rows] == pytest.approx(expected[:, 1], abs=1e-12)
    assert [r["probabilities"] for r in result.rows] == [
        {"0": pytest.approx(p0, abs=1e-12), "1": pytest.approx(p1, abs=1e-12)}
        for p0, p1 in expected.tolist()
    ]
    assert [r["prediction"] for r in result.rows] == [int(s >= 0.5) for s in expected[:, 1]]
    assert sorted(result.answers) == ["control", "treatment"]


def test_warm_up_runs_every_variant(predictor: Predictor) -> None:
    predictor.warm_up()


def test_model_failure_names_the_variant(
    config: ServiceConfig, models: dict[str, LoadedModel]
) -> None:
    def explode(matrix: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of memory")

    broken = LoadedModel(flavor="xgboost", loader="test", columns=FEATURES, output=BINARY,
                         scorer=explode)
    predictor = Predictor.from_config(config, {**models, "treatment": broken})
    with pytest.raises(ModelError) as info:
        predictor.predict_parsed({"rows": [ROW]}, override="treatment")
    assert info.value.variant == "treatment"
    assert info.value.to_body() == {
        "error": "model_failed",
        "detail": [{"row": None, "field": None, "problem": "RuntimeError: out of memory"}],
    }


def test_non_finite_scores_are_a_model_failure(
    config: ServiceConfig, models: dict[str, LoadedModel]
) -> None:
    nan_model = LoadedModel(
        flavor="sklearn", loader="test", columns=FEATURES, output=BINARY,
        scorer=lambda m: np.full((len(m), 2), np.nan),
    )
    predictor = Predictor.from_config(config, {**models, "control": nan_model})
    with pytest.raises(ModelError, match="non-finite"):
        predictor.predict_parsed({"rows": [ROW]}, override="control")


def test_rows_a_sound_model_cannot_score_are_invalid_input(
    config: ServiceConfig, models: dict[str, LoadedModel]
) -> None:
    # A real scikit-learn pipeline: a scaled 1e308 overflows to infinity inside it, and
    # LogisticRegression refuses the row. The model still scores ordinary rows: the caller's
    # row is the problem (422, naming it), not the server (500).
    predictor = Predictor.from_config(config, models)
    huge = {**ROW, "mean_radius": 1.7e308, "mean_texture": -1.7e308}
    with pytest.raises(InvalidInputError) as info:
        predictor.predict_parsed({"rows": [ROW, huge, ROW]}, override="control")
    body = info.value.to_body()
    assert body["error"] == "invalid_input" and info.value.status == 422
    assert [(d["row"], d["field"]) for d in body["detail"]] == [(1, None)]
    assert body["detail"][0]["problem"].startswith("the control model cannot score this row: ")
    assert info.value.variant == "control"
    # Counted as the model's failure: a canary must see a model that fails on real rows.
    assert info.value.cause == "model"


def test_a_model_failing_on_its_own_example_stays_a_model_failure(
    config: ServiceConfig, models: dict[str, LoadedModel]
) -> None:
    fussy = LoadedModel(
        flavor="sklearn",
        loader="test",
        columns=FEATURES,
        output=BINARY,
        scorer=lambda m: np.column_stack([np.where(m[:, 0] >= 0.5, np.nan, 0.3)] * 2),  # example too
    )
    predictor = Predictor.from_config(config, {**models, "control": fussy})
    with pytest.raises(ModelError, match="non-finite"):
        predictor.predict_parsed({"rows": [ROW]}, override="control")


# --- HTTP, through Starlette's test client ---------------------------------------------


def test_predict_200(client: AppClient) -> None:
    response = client.post(
        "/predict", json={"rows": [ROW, ROW]}, headers={"x-bentoship-key": "session-1"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    rows = response.json()["rows"]
    assert len(rows) == 2 and rows[0] == rows[1]
    assert set(rows[0]) == {"prediction", "probabilities", "score", "variant", "model_version"}


def test_override_header(client: AppClient) -> None:
    response = client.post(
        "/predict", json={"rows": [ROW] * 3}, headers={"X-Bentoship-Variant": "treatment"}
    )
    assert [r["variant"] for r in response.json()["rows"]] == ["treatment"] * 3


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{", {}, 400, "invalid_json"),
        (b"", {}, 400, "invalid_json"),
        (b'{"rows": 1}', {}, 422, "invalid_input"),
        (orjson.dumps({"rows": [{**ROW, "mean_radius": "big"}]}), {}, 422, "invalid_input"),
        (orjson.dumps({"rows": [ROW] * 51}), {}, 413, "too_many_rows"),
        (orjson.dumps({"rows": [ROW]}), {"x-bentoship-variant": "nope"}, 422, "invalid_input"),
    ],
)
def test_caller_mistakes_are_4xx_with_the_error_shape(
    client: AppClient, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.post(
        "/predict", content=body, headers={"content-type": "text/plain", **headers}
    )
    assert response.status_code == status
    payload = response.json()
    assert set(payload) == {"error", "detail"} and payload["error"] == code
    assert payload["detail"] and all(
        set(p) == {"row", "field", "problem"} for p in payload["detail"]
    )


def test_oversized_body_is_413(client: AppClient, config: ServiceConfig) -> None:
    response = client.post("/predict", content=b" " * (max_body_bytes(config) + 1))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_unknown_path_and_wrong_method_use_the_error_shape(client: AppClient) -> None:
    assert client.get("/predict").json()["error"] == "method_not_allowed"
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_not_ready_is_503(config: ServiceConfig) -> None:
    response = AppClient(create_app(config, AppState())).post("/predict", json={"rows": [ROW]})
    assert response.status_code == 503
    assert response.json() == {
        "error": "not_ready",
        "detail": [{"row": None, "field": None, "problem": "models are still loading"}],
    }


def test_metadata(client: AppClient) -> None:
    data = client.get("/metadata").json()
    assert data["ready"] is True
    assert data["code_version"] == "1a2b3c4"
    assert [(v["name"], v["version"], v["weight"]) for v in data["variants"]] == [
        ("control", "1", 50),
        ("treatment", "2", 50),
    ]
    assert data["variants"][1]["loader"].startswith("xgboost.Booster native")


def test_docs_json_and_openapi_json_serve_our_spec(client: AppClient) -> None:
    docs, openapi = client.get("/docs.json").json(), client.get("/openapi.json").json()
    assert docs == openapi
    assert "/predict" in docs["paths"]


def test_metrics_have_the_contract_names_and_labels(
    client: AppClient, registry: CollectorRegistry
) -> None:
    client.post("/predict", json={"rows": [ROW] * 40}, headers={"x-bentoship-variant": "control"})
    client.post("/predict", json={"rows": [ROW]}, headers={"x-bentoship-variant": "treatment"})
    client.post("/predict", content=b"nope")
    huge = {**ROW, "mean_radius": 1.7e308, "mean_texture": -1.7e308}
    unscorable = client.post("/predict", json={"rows": [huge]},
                             headers={"x-bentoship-variant": "control"})
    assert unscorable.status_code == 422
    text = generate_latest(registry).decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text
    # Every answer once, with who caused it: the caller's bad JSON, the model's unscorable row.
    assert 'bentoship_responses_total{cause="none",status="200"} 2.0' in text
    assert 'bentoship_responses_total{cause="caller",status="400"} 1.0' in text
    assert 'bentoship_responses_total{cause="model",status="422"} 1.0' in text
    assert 'bentoship_requests_total{status="200",variant="control"} 1.0' in text
    assert 'bentoship_requests_total{status="400",variant="none"} 1.0' in text
    assert 'bentoship_rows_per_request_sum{variant="control"} 40.0' in text
    # Every row's answer is observed, the labels counted.
    assert 'bentoship_prediction_score_count{variant="control"} 40.0' in text
    assert 'bentoship_prediction_score_count{variant="treatment"} 1.0' in text
    assert 'bentoship_prediction_confidence_count{variant="control"} 40.0' in text
    labels = [line for line in text.splitlines()
              if line.startswith('bentoship_predictions_total{') and 'variant="control"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in labels) == 40.0
    assert 'bentoship_request_duration_seconds_count{variant="treatment"} 1.0' in text


def test_a_request_split_between_variants_is_one_response(
    config: ServiceConfig, models: dict[str, LoadedModel], registry: CollectorRegistry
) -> None:
    state = AppState()
    state.activate(Predictor.from_config(config, models), create_metrics(registry))
    client = AppClient(create_app(config, state))
    rows = [{**ROW, "request_id": f"r{i}"} for i in range(40)]  # 50/50 by key: both variants
    assert client.post("/predict", json={"rows": rows}).status_code == 200
    text = generate_latest(registry).decode()
    assert 'bentoship_requests_total{status="200",variant="control"} 1.0' in text
    assert 'bentoship_requests_total{status="200",variant="treatment"} 1.0' in text
    # The error ratio's denominator: one answer, however many variants its rows reached.
    assert 'bentoship_responses_total{cause="none",status="200"} 1.0' in text


def test_model_failure_is_500_labelled_with_its_variant(
    config: ServiceConfig, models: dict[str, LoadedModel], registry: CollectorRegistry
) -> None:
    def explode(matrix: np.ndarray) -> np.ndarray:
        raise RuntimeError("segfault averted")

    broken = LoadedModel(flavor="xgboost", loader="test", columns=FEATURES, output=BINARY,
                         scorer=explode)
    state = AppState()
    state.activate(
        Predictor.from_config(config, {**models, "treatment": broken}), create_metrics(registry)
    )
    client = AppClient(create_app(config, state))
    response = client.post(
        "/predict", json={"rows": [ROW]}, headers={"x-bentoship-variant": "treatment"}
    )
    assert response.status_code == 500
    assert response.json() == {
        "error": "model_failed",
        "detail": [{"row": None, "field": None, "problem": "RuntimeError: segfault averted"}],
    }
    text = generate_latest(registry).decode()
    assert 'bentoship_requests_total{status="500",variant="treatment"} 1.0' in text
    assert 'bentoship_responses_total{cause="model",status="500"} 1.0' in text


def test_observing_many_values_at_once_exports_what_observing_each_does() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = np.array([0.0, 0.05, 0.05000001, 0.3, 0.3, 0.99, 1.0, 1.5, 7.0, np.nan, 0.42])
    exported = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", ["variant"], buckets=SCORE_BUCKETS, registry=registry)
        child = histogram.labels("control")
        for chunk in (values, values[:1], values[3:5]):
            if bulk:
                observe_many(child, chunk)
            else:
                for value in chunk.tolist():
                    child.observe(value)
        exported.append(
            [line for line in generate_latest(registry).decode().splitlines()
             if not line.startswith("h_created")]
        )
    assert exported[0] == exported[1]
    assert 'h_bucket{le="0.05",variant="control"} 3.0' in exported[1]  # 0.0 and 0.05 twice
    assert 'h_count{variant="control"} 13.0' in exported[1]  # 14 values; NaN in no bucket
