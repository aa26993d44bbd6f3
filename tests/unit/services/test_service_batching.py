"""services/batching.py through the app: concurrent requests share model calls, each keeps its
own answer and its own error (real models, real threads, no BentoML)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.app import AppState, create_app
from services.config import CONFIG_FILENAME, ServiceConfig, load_config
from services.errors import ConfigError
from services.flavors import ModelOutput
from services.loading import LoadedModel, load_model
from services.metrics import BATCH_METRIC_NAMES, create_metrics
from services.predictor import Predictor
from services.routing import Router, variant_for_key
from tests import servicekit

FEATURES = servicekit.FEATURES
SIZES = (1, 3, 5, 2, 1, 4, 1, 7)  # 24 rows in 8 requests
POISON = 999.0  # a mean_radius the raising model below refuses


def variants() -> list[dict[str, Any]]:
    return [
        {"name": "control", "model_tag": "demo-classifier:v1", "registered_name": "demo-classifier",
         "version": "1", "run_id": "r1", "flavor": "sklearn", "weight": 50},
        {"name": "treatment", "model_tag": "demo-classifier:v2",
         "registered_name": "demo-classifier", "version": "2", "run_id": "r2",
         "flavor": "xgboost", "weight": 50},
    ]


def batching_config(max_rows: int) -> ServiceConfig:
    # A batch closes when it holds max_rows rows: the tests fill it exactly, so what shares a
    # call does not depend on timing (the long wait is only a fallback).
    return servicekit.make_config(variants(), max_rows=50,
                                  batching={"enabled": True, "max_rows": max_rows,
                                            "max_wait_ms": 1000})


@pytest.fixture(scope="module")
def models(sklearn_dir: Path, xgb_classifier_dir: Path) -> dict[str, LoadedModel]:
    return {
        "control": load_model(sklearn_dir, FEATURES),
        "treatment": load_model(xgb_classifier_dir, FEATURES),
    }


def rows_of(size: int, seed: int, keys: list[str] | None = None) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = [dict(zip(FEATURES, rng.normal(size=len(FEATURES)).tolist())) for _ in range(size)]
    if keys is not None:
        for row, key in zip(rows, keys):
            row["request_id"] = key
    return rows


def post_together(
    config: ServiceConfig, predictor: Predictor, registry: CollectorRegistry,
    bodies: list[dict[str, Any]], headers: dict[str, str] | None = None,
) -> list[httpx.Response]:
    state = AppState()
    state.activate(predictor, create_metrics(registry))
    app = create_app(config, state)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(await asyncio.gather(*(
                client.post("/predict", json=body, headers=headers) for body in bodies
            )))

    return asyncio.run(run())


def matrix(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[row[f] for f in FEATURES] for row in rows], dtype=np.float64)


def sample_value(text: str, name: str, variant: str) -> float:
    prefix = f'{name}{{variant="{variant}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))
                 .removeprefix(prefix))


def test_concurrent_requests_share_a_call_and_get_the_models_own_answers_in_order(
    models: dict[str, LoadedModel]
) -> None:
    config = batching_config(max_rows=sum(SIZES))
    predictor = Predictor.from_config(config, models)
    registry = CollectorRegistry()
    bodies = [{"rows": rows_of(size, seed)} for seed, size in enumerate(SIZES)]
    responses = post_together(config, predictor, registry, bodies,
                              headers={"x-bentoship-variant": "control"})
    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        out = response.json()["rows"]
        expected = models["control"].predict(matrix(body["rows"]))[:, 1]
        assert [r["score"] for r in out] == pytest.approx(expected.tolist(), rel=1e-12, abs=0)
        assert [r["variant"] for r in out] == ["control"] * len(body["rows"])
    text = generate_latest(registry).decode()
    for name in BATCH_METRIC_NAMES:
        assert f"# TYPE {name} histogram" in text
    # Eight requests, one model call of all their rows.
    assert sample_value(text, "bentoship_batch_requests_count", "control") == 1
    assert sample_value(text, "bentoship_batch_requests_sum", "control") == len(SIZES)
    assert sample_value(text, "bentoship_batch_rows_sum", "control") == sum(SIZES)


def test_requests_split_between_variants_are_batched_per_variant(
    models: dict[str, LoadedModel]
) -> None:
    config = servicekit.make_config(variants(), max_rows=50,
                                    batching={"enabled": True, "max_rows": 64,
                                              "max_wait_ms": 20})
    predictor = Predictor.from_config(config, models)
    router = Router.from_config(config)
    bodies = []
    for seed, size in enumerate(SIZES):
        keys = [f"user-{seed}-{i}" for i in range(size)]
        bodies.append({"rows": rows_of(size, seed, keys)})
    responses = post_together(config, predictor, CollectorRegistry(), bodies)
    seen = set()
    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        for row, answer in zip(body["rows"], response.json()["rows"]):
            variant = variant_for_key(router, row["request_id"])
            seen.add(variant)
            assert answer["variant"] == variant
            expected = models[variant].predict(matrix([row]))[0, 1]
            assert answer["score"] == pytest.approx(float(expected), rel=1e-9)
    assert seen == {"control", "treatment"}


def test_a_bad_request_gets_its_own_4xx_and_its_batch_mates_their_answers(
    models: dict[str, LoadedModel]
) -> None:
    good = [{"rows": rows_of(size, seed)} for seed, size in enumerate((2, 1, 3))]
    overflow = {**rows_of(1, 9)[0], "mean_radius": 1.7e308, "mean_texture": -1.7e308}
    unscorable = {"rows": [rows_of(1, 10)[0], overflow]}  # NaN for its second row
    invalid = {"rows": [{**rows_of(1, 11)[0], "mean_radius": "big"}]}  # never joins a batch
    bodies = [good[0], unscorable, good[1], invalid, good[2]]
    config = batching_config(max_rows=2 + 2 + 1 + 3)
    registry = CollectorRegistry()
    responses = post_together(config, Predictor.from_config(config, models), registry, bodies,
                              headers={"x-bentoship-variant": "control"})
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 422, 200, 422, 200]
    assert responses[1].json()["error"] == "invalid_input"
    assert [d["row"] for d in responses[1].json()["detail"]] == [1]
    assert responses[3].json()["detail"][0]["field"] == "mean_radius"
    for index, body in ((0, good[0]), (2, good[1]), (4, good[2])):
        expected = models["control"].predict(matrix(body["rows"]))[:, 1]
        got = [r["score"] for r in responses[index].json()["rows"]]
        assert got == pytest.approx(expected.tolist(), rel=1e-12, abs=0)
    text = generate_latest(registry).decode()
    assert 'bentoship_responses_total{cause="model",status="422"} 1.0' in text
    assert 'bentoship_responses_total{cause="caller",status="422"} 1.0' in text
    assert sample_value(text, "bentoship_batch_requests_sum", "control") == 4


def test_when_the_batched_call_raises_each_request_is_scored_alone(
    models: dict[str, LoadedModel]
) -> None:
    sound = models["control"]

    def refuse_poison(m: np.ndarray) -> np.ndarray:
        if np.any(m[:, 0] == POISON):
            raise ValueError("cannot score a poisoned row")
        return sound.predict(m)

    picky = LoadedModel(flavor="sklearn", loader="test", columns=FEATURES,
                        output=ModelOutput("classification", (0, 1)), scorer=refuse_poison)
    good = [{"rows": rows_of(size, seed)} for seed, size in enumerate((1, 4, 2))]
    poisoned = {"rows": [{**rows_of(1, 7)[0], "mean_radius": POISON}]}
    bodies = [good[0], poisoned, good[1], good[2]]
    config = batching_config(max_rows=1 + 1 + 4 + 2)
    predictor = Predictor.from_config(config, {"control": picky, "treatment": models["treatment"]})
    responses = post_together(config, predictor, CollectorRegistry(), bodies,
                              headers={"x-bentoship-variant": "control"})
    assert [r.status_code for r in responses] == [200, 422, 200, 200]
    assert responses[1].json() == {"error": "invalid_input", "detail": [{
        "row": 0, "field": None,
        "problem": "the control model cannot score this row: ValueError: cannot score a "
                   "poisoned row",
    }]}
    for index, body in ((0, good[0]), (2, good[1]), (3, good[2])):
        expected = sound.predict(matrix(body["rows"]))[:, 1]
        got = [r["score"] for r in responses[index].json()["rows"]]
        assert got == pytest.approx(expected.tolist(), rel=1e-12, abs=0)


def test_batching_is_off_by_default_and_the_environment_turns_it_on(
    tmp_path: Path, config_data: dict[str, Any]
) -> None:
    import json

    path = tmp_path / CONFIG_FILENAME
    path.write_text(json.dumps(config_data))
    assert load_config(path, environ={}).batching.enabled is False
    env = {"BENTOSHIP_BATCHING": "true", "BENTOSHIP_BATCH_MAX_ROWS": "32",
           "BENTOSHIP_BATCH_MAX_WAIT_MS": "2.5"}
    batching = load_config(path, environ=env).batching
    assert (batching.enabled, batching.max_rows, batching.max_wait_ms) == (True, 32, 2.5)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"BENTOSHIP_BATCH_MAX_ROWS": "0"})
    assert "BENTOSHIP_BATCH_MAX_ROWS='0'" in str(info.value)
