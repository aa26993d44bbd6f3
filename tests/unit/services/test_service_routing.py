"""services/routing.py: the split, stickiness and the override header."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import pytest

from services.config import ServiceConfig
from services.errors import InvalidInputError
from services.routing import Router, assign, index_for_point, point_for_key, variant_for_key

# chi-square critical value, 1 degree of freedom, p = 0.001
CHI2_1DF_999 = 10.83


def router_with(
    config_data: dict[str, Any], control: int, treatment: int, salt: str = "demo"
) -> Router:
    config_data["variants"][0]["weight"] = control
    config_data["variants"][1]["weight"] = treatment
    config_data["routing"]["salt"] = salt
    return Router.from_config(ServiceConfig.model_validate(config_data))


def chi_square(observed: list[int], weights: list[int]) -> float:
    total = sum(observed)
    return sum(
        (o - total * w / 100) ** 2 / (total * w / 100) for o, w in zip(observed, weights) if w
    )


def test_point_is_the_documented_formula() -> None:
    digest = hashlib.sha256(b"salt:user-1").digest()
    assert point_for_key("salt", "user-1") == int.from_bytes(digest[:8], "big") / 2**64 * 100
    assert 0 <= point_for_key("salt", "user-1") < 100


def test_points_map_onto_cumulative_weights() -> None:
    assert index_for_point((90.0, 100.0), 0.0) == 0
    assert index_for_point((90.0, 100.0), 89.999) == 0
    assert index_for_point((90.0, 100.0), 90.0) == 1
    assert index_for_point((0.0, 100.0), 0.0) == 1


@pytest.mark.parametrize(("control", "treatment"), [(90, 10), (50, 50), (99, 1)])
def test_split_over_20000_keys_matches_the_weights(
    config_data: dict[str, Any], control: int, treatment: int
) -> None:
    router = router_with(config_data, control, treatment)
    keys = [f"user-{i}" for i in range(20_000)]
    counts = np.bincount(assign(router, keys), minlength=2).tolist()
    assert chi_square(counts, [control, treatment]) < CHI2_1DF_999, counts


def test_keyless_rows_follow_the_weights_at_random(config_data: dict[str, Any]) -> None:
    router = router_with(config_data, 90, 10)
    rng = random.Random(3)
    counts = np.bincount(assign(router, [None] * 20_000, draw=rng.random), minlength=2).tolist()
    assert chi_square(counts, [90, 10]) < CHI2_1DF_999, counts


def test_same_key_same_variant_every_time(config_data: dict[str, Any]) -> None:
    router = router_with(config_data, 50, 50)
    keys = [f"user-{i}" for i in range(200)]
    first = assign(router, keys)
    for _ in range(3):
        np.testing.assert_array_equal(assign(router, list(reversed(keys)))[::-1], first)
    # and independent of what else is in the request
    for i in range(0, 200, 17):
        assert router.names[first[i]] == variant_for_key(router, keys[i])


def test_salt_reshuffles(config_data: dict[str, Any]) -> None:
    keys = [f"user-{i}" for i in range(2000)]
    a = assign(router_with(config_data, 50, 50, salt="one"), keys)
    b = assign(router_with(config_data, 50, 50, salt="two"), keys)
    assert 0.4 < np.mean(a != b) < 0.6


def test_row_key_wins_over_header_key_and_header_key_is_sticky(config_data: dict[str, Any]) -> None:
    router = router_with(config_data, 50, 50)
    header_variant = variant_for_key(router, "session-9")
    row_key = next(
        f"u{i}" for i in range(100) if variant_for_key(router, f"u{i}") != header_variant
    )
    out = assign(router, [row_key, None, None], header_key="session-9", draw=lambda: 0.0)
    assert [router.names[i] for i in out] == [
        variant_for_key(router, row_key),
        header_variant,
        header_variant,
    ]


def test_zero_weight_is_only_reachable_by_override(config_data: dict[str, Any]) -> None:
    router = router_with(config_data, 100, 0)
    keys = [f"user-{i}" for i in range(5000)]
    assert not assign(router, keys).any()
    assert assign(router, [None] * 1000).sum() == 0
    assert assign(router, keys[:3], override="treatment").tolist() == [1, 1, 1]


def test_unknown_override_is_the_callers_mistake(config_data: dict[str, Any]) -> None:
    router = router_with(config_data, 90, 10)
    with pytest.raises(InvalidInputError) as info:
        assign(router, ["a"], override="canary")
    assert info.value.status == 422
    assert info.value.to_body() == {
        "error": "invalid_input",
        "detail": [
            {
                "row": None,
                "field": "x-bentoship-variant",
                "problem": "unknown variant 'canary'; expected one of: control, treatment",
            }
        ],
    }


def test_single_variant_takes_everything(config_data: dict[str, Any]) -> None:
    config_data["variants"] = [{**config_data["variants"][0], "weight": 100}]
    router = Router.from_config(ServiceConfig.model_validate(config_data))
    assert assign(router, ["a", None, "b"]).tolist() == [0, 0, 0]
    with pytest.raises(InvalidInputError):
        assign(router, ["a"], override="treatment")
