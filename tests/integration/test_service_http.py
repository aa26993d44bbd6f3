"""The service template served by real `bentoml serve`, over real HTTP (contract 4 and 5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.metrics import METRIC_NAMES
from services.routing import Router, variant_for_key
from tests import servicekit

pytestmark = pytest.mark.slow

FEATURES = servicekit.FEATURES
ROW = dict(zip(FEATURES, (1.2, -0.3, 0.1, 2.0)))
NAME = "Demo Classifier"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[servicekit.Served, Any]]:
    root = tmp_path_factory.mktemp("service-http")
    X, y = servicekit.make_data()
    home = root / "bentoml"
    control_tag = servicekit.import_model(
        servicekit.save_sklearn(servicekit.train_sklearn(X, y), X, root / "control"),
        home,
        registered_name=NAME,
        version=1,
        flavor="sklearn",
        run_id="run-1",
    )
    treatment_tag = servicekit.import_model(
        servicekit.save_xgboost(servicekit.train_xgboost(X, y), X, root / "treatment"),
        home,
        registered_name=NAME,
        version=2,
        flavor="xgboost",
        run_id="run-2",
    )
    assert (control_tag, treatment_tag) == ("demo-classifier:v1", "demo-classifier:v2")
    config = servicekit.make_config(
        [
            {
                "name": "control",
                "model_tag": control_tag,
                "registered_name": NAME,
                "version": "1",
                "run_id": "run-1",
                "flavor": "sklearn",
                "weight": 70,
            },
            {
                "name": "treatment",
                "model_tag": treatment_tag,
                "registered_name": NAME,
                "version": "2",
                "run_id": "run-2",
                "flavor": "xgboost",
                "weight": 30,
            },
        ],
        examples=[17.99, 10.38, 0.118, 2019.0],
        max_rows=100,
    )
    context = servicekit.write_build_context(root / "context", config)
    with servicekit.serve(context, home) as served:
        yield served, config


@pytest.fixture(scope="module")
def client(service: tuple[servicekit.Served, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service[0].url, timeout=10) as client:
        yield client


def test_probes(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_predict_keeps_order_and_names_variant_and_version(
    client: httpx.Client, service: tuple[Any, Any]
) -> None:
    router = Router.from_config(service[1])
    keys = [f"user-{i}" for i in range(12)]
    expected = [variant_for_key(router, k) for k in keys]
    assert {"control", "treatment"} <= set(expected)
    rows = [{**ROW, "mean_radius": i / 4, "request_id": k} for i, k in enumerate(keys)]
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    out = response.json()["rows"]
    assert [r["variant"] for r in out] == expected
    assert [r["model_version"] for r in out] == ["1" if v == "control" else "2" for v in expected]
    assert all(r["prediction"] == int(r["score"] >= 0.5) and 0 <= r["score"] <= 1 for r in out)
    # same keys again: same variants, same scores (sticky and deterministic)
    assert client.post("/predict", json={"rows": rows}).json()["rows"] == out


def test_override_header(client: httpx.Client) -> None:
    response = client.post(
        "/predict", json={"rows": [ROW, ROW]}, headers={"x-bentoship-variant": "treatment"}
    )
    assert [r["variant"] for r in response.json()["rows"]] == ["treatment", "treatment"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"this is not json", {"content-type": "application/json"}, 400, "invalid_json"),
        (b"", {}, 400, "invalid_json"),
        (
            b'{"rows": {"mean_radius": 1}}',
            {"content-type": "application/json"},
            422,
            "invalid_input",
        ),
        (b'{"rows": []}', {}, 422, "invalid_input"),
        (
            b'{"rows": [{"mean_radius": "1.2", "mean_texture": true}]}',
            {"content-type": "text/plain"},
            422,
            "invalid_input",
        ),
        (
            b'{"rows": [' + b",".join([b'{"mean_radius": 1}'] * 101) + b"]}",
            {},
            413,
            "too_many_rows",
        ),
        (
            b'{"rows": [{"mean_radius": 1}]}',
            {"x-bentoship-variant": "canary"},
            422,
            "invalid_input",
        ),
    ],
)
def test_bad_requests_are_4xx_with_the_error_shape(
    client: httpx.Client, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.post("/predict", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert body["detail"] and all(set(p) == {"row", "field", "problem"} for p in body["detail"])


def test_field_problems_name_row_and_field(client: httpx.Client) -> None:
    body = client.post(
        "/predict", json={"rows": [ROW, {**ROW, "mean_texture": None, "colour": "red"}]}
    ).json()
    assert body == {
        "error": "invalid_input",
        "detail": [
            {
                "row": 1,
                "field": "colour",
                "problem": "unexpected field; not a feature of this model",
            },
            {"row": 1, "field": "mean_texture", "problem": "required field is null"},
        ],
    }


def test_wrong_method_and_path(client: httpx.Client) -> None:
    response = client.get("/predict")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_metrics_page_is_prometheus_text_without_bentomls_request_metrics(
    client: httpx.Client,
) -> None:
    client.post("/predict", json={"rows": [ROW]})
    response = client.get("/metrics")
    assert response.status_code == 200
    # The text exposition format, with prometheus_client's own content type (as BentoML sent).
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE bentoship_responses_total counter" in response.text
    # BentoML's own request metrics are turned off (service.py); the bentoship_* ones count.
    assert "bentoml_service_request" not in response.text


def test_metrics_have_the_contract_names_with_variant_labels(client: httpx.Client) -> None:
    for variant in ("control", "treatment"):
        for _ in range(3):
            client.post("/predict", json={"rows": [ROW]}, headers={"x-bentoship-variant": variant})
    client.post("/predict", content=b"nope")
    text = client.get("/metrics").text
    # A binary classifier's service answers with labels, confidence and scores; a regressor's
    # value histogram is never observed here, so (multiprocess mode) never exported.
    for name in METRIC_NAMES:
        assert (f"# TYPE {name} " in text) == (name != "bentoship_prediction_value"), name
    for variant in ("control", "treatment"):
        assert f'bentoship_requests_total{{status="200",variant="{variant}"}}' in text
        assert f'bentoship_request_duration_seconds_bucket{{le="0.5",variant="{variant}"}}' in text
        assert f'bentoship_rows_per_request_count{{variant="{variant}"}}' in text
        assert f'bentoship_prediction_score_sum{{variant="{variant}"}}' in text
        assert f'bentoship_prediction_confidence_count{{variant="{variant}"}}' in text
        # Every row answered is counted under its label: as many as the rows served.
        lines = text.splitlines()
        counted = [float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith("bentoship_predictions_total{")
                   and f'variant="{variant}"' in line]
        rows = [float(line.rsplit(" ", 1)[1]) for line in lines
                if line.startswith(f'bentoship_rows_per_request_sum{{variant="{variant}"}}')]
        assert counted and sum(counted) == rows[0]
    assert 'bentoship_requests_total{status="400",variant="none"}' in text


def test_metadata(client: httpx.Client) -> None:
    data = client.get("/metadata").json()
    assert data["name"] == "demo-classifier" and data["ready"] is True
    assert data["image_tag"] == "ctl-v1.trt-v2.code-1a2b3c4"
    assert [
        (v["name"], v["registered_name"], v["version"], v["run_id"], v["weight"])
        for v in data["variants"]
    ] == [
        ("control", NAME, "1", "run-1", 70),
        ("treatment", NAME, "2", "run-2", 30),
    ]
    assert data["variants"][0]["loader"] == "sklearn Pipeline (skops, predict_proba)"


def test_docs_json_is_our_spec(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    assert spec == client.get("/openapi.json").json()
    row = spec["components"]["schemas"]["Row"]
    assert row["properties"]["mean_radius"] == {
        **row["properties"]["mean_radius"],
        "type": "number",
        "example": 17.99,
    }
    assert row["required"] == list(FEATURES)
    assert "control: Demo Classifier version 1" in spec["info"]["description"]


def test_server_log_has_no_tracebacks(
    service: tuple[servicekit.Served, Any], client: httpx.Client
) -> None:
    assert "Traceback" not in service[0].log_text()


def test_a_refused_model_never_becomes_ready_and_the_log_says_why(tmp_path: Path) -> None:
    X, y = servicekit.make_data()
    home = tmp_path / "bentoml"
    tag = servicekit.import_model(
        servicekit.save_sklearn(
            servicekit.train_sklearn(X, y),
            X,
            tmp_path / "pickled",
            serialization_format="cloudpickle",
        ),
        home,
        registered_name="pickled",
        version=1,
        flavor="sklearn",
    )
    config = servicekit.make_config(
        [
            {
                "name": "control",
                "model_tag": tag,
                "registered_name": "pickled",
                "version": "1",
                "flavor": "sklearn",
                "weight": 100,
            }
        ],
        name="pickled",
    )
    context = servicekit.write_build_context(tmp_path / "context", config)
    with servicekit.start_server(context, home) as served:
        deadline = time.monotonic() + 90
        while "UnsafeModelError" not in served.log_text():
            assert time.monotonic() < deadline, served.log_text()[-3000:]
            try:
                assert httpx.get(served.url + "/readyz", timeout=1).status_code != 200
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert (
            "refusing to load, its model is serialized with cloudpickle"
            in served.log_text()
        )
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url + "/readyz", timeout=1)
