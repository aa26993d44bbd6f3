"""Adaptive micro-batching in real `bentoml serve`, turned on by the container's environment:
concurrent requests of different sizes share one model call and each gets the model's own
answers in order, or its own error; the batch metrics are on /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from services.loading import LoadedModel, load_model
from services.metrics import BATCH_METRIC_NAMES
from tests import servicekit

pytestmark = pytest.mark.slow

FEATURES = servicekit.FEATURES
NAME = "Demo Classifier"
SIZES = (1, 3, 5, 2)
UNSCORABLE_ROWS = 2
# A batch closes when it holds this many rows: the requests below fill it exactly, so what shares
# a call does not depend on timing (the long wait is only a fallback).
BATCH_ROWS = sum(SIZES) + UNSCORABLE_ROWS


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LoadedModel]]:
    root = tmp_path_factory.mktemp("service-batching")
    X, y = servicekit.make_data()
    home = root / "bentoml"
    model_dir = servicekit.save_sklearn(servicekit.train_sklearn(X, y), X, root / "control")
    tag = servicekit.import_model(model_dir, home, registered_name=NAME, version=1,
                                  flavor="sklearn", run_id="run-1")
    config = servicekit.make_config(
        [{"name": "control", "model_tag": tag, "registered_name": NAME, "version": "1",
          "run_id": "run-1", "flavor": "sklearn", "weight": 100}],
        examples=[17.99, 10.38, 0.118, 2019.0],
        max_rows=100,
    )
    context = servicekit.write_build_context(root / "context", config)
    env = {"BENTOSHIP_WORKERS": "1", "BENTOSHIP_BATCHING": "true",
           "BENTOSHIP_BATCH_MAX_ROWS": str(BATCH_ROWS), "BENTOSHIP_BATCH_MAX_WAIT_MS": "1000"}
    with servicekit.serve(context, home, extra_env=env) as server:
        yield server.url, load_model(Path(model_dir), FEATURES)


def rows_of(size: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [dict(zip(FEATURES, rng.normal(size=len(FEATURES)).tolist())) for _ in range(size)]


def post_together(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return list(await asyncio.gather(*(client.post("/predict", json=b)
                                               for b in bodies)))

    return asyncio.run(run())


def test_batch_mates_get_their_own_answers_and_errors(served: tuple[str, LoadedModel]) -> None:
    url, model = served
    good = [{"rows": rows_of(size, seed)} for seed, size in enumerate(SIZES)]
    overflow = {**rows_of(1, 8)[0], "mean_radius": 1.7e308, "mean_texture": -1.7e308}
    unscorable = {"rows": [*rows_of(UNSCORABLE_ROWS - 1, 9), overflow]}
    invalid = {"rows": [{**rows_of(1, 10)[0], "worst_area": "large"}]}
    bodies = [good[0], unscorable, good[1], invalid, good[2], good[3]]
    responses = post_together(url, bodies)

    assert [r.status_code for r in responses] == [200, 422, 200, 422, 200, 200]
    assert responses[1].json()["error"] == "invalid_input"
    assert [d["row"] for d in responses[1].json()["detail"]] == [UNSCORABLE_ROWS - 1]
    assert responses[3].json()["detail"][0]["field"] == "worst_area"
    for response, body in zip([responses[i] for i in (0, 2, 4, 5)], good):
        rows = response.json()["rows"]
        matrix = np.array([[row[f] for f in FEATURES] for row in body["rows"]])
        expected = model.predict(matrix)[:, 1].tolist()
        assert [r["score"] for r in rows] == pytest.approx(expected, rel=1e-12, abs=0)
        assert [r["prediction"] for r in rows] == [int(s >= 0.5) for s in expected]

    with httpx.Client(base_url=url, timeout=10) as client:
        text = client.get("/metrics").text
    for name in BATCH_METRIC_NAMES:
        assert f"# TYPE {name} histogram" in text
    # Five requests joined one call (the invalid one was refused before it could join).
    assert 'bentoship_batch_requests_count{variant="control"} 1.0' in text
    assert 'bentoship_batch_requests_sum{variant="control"} 5.0' in text
    assert f'bentoship_batch_rows_sum{{variant="control"}} {float(BATCH_ROWS)}' in text
    assert 'bentoship_responses_total{cause="model",status="422"} 1.0' in text
    assert 'bentoship_responses_total{cause="caller",status="422"} 1.0' in text
