"""The port of Kayenta's NetflixACAJudge: the statistics against scipy, the rules as Kayenta's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from pipeline.config import ReleaseConfig
from pipeline.rehearse.judge import (
    HIGH,
    LOW,
    NODATA,
    NODATA_FAIL,
    PASS,
    Analysis,
    Classification,
    classify,
    judge,
    mann_whitney,
    mean_ratio,
    score,
    verdict_of,
)

RNG = np.random.default_rng(7)


def test_mann_whitney_matches_scipy_and_the_hodges_lehmann_interval() -> None:
    x, y = RNG.normal(1.3, 1, 80), RNG.normal(1.0, 1, 70)
    result = mann_whitney(x, y)
    assert result.p_value == pytest.approx(
        stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True).pvalue)
    differences = np.sort((x[:, None] - y[None, :]).ravel())
    assert result.estimate == pytest.approx(np.median(differences), abs=1e-3)
    # The interval's ends are order statistics of the pairwise differences (normal approx.).
    n, m = len(x), len(y)
    k = int(n * m / 2 - stats.norm.ppf(0.99) * math.sqrt(n * m * (n + m + 1) / 12))
    assert result.lower == pytest.approx(differences[k - 1], abs=1e-3)
    assert result.upper == pytest.approx(differences[n * m - k], abs=1e-3)


def test_ties_are_corrected_as_r_does() -> None:
    x = [1, 1, 2, 2, 2, 3, 3, 4] * 5
    y = [1, 2, 2, 3, 3, 3, 4, 4] * 5
    assert mann_whitney(x, y).p_value == pytest.approx(
        stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True).pvalue)


def analysis(**kw: Any) -> Analysis:
    return Analysis(**{"direction": "increase", **kw})


def test_a_significant_change_below_the_allowed_effect_passes() -> None:
    control = RNG.normal(100, 1, 60)
    experiment = control * 1.1  # clearly different, 10% higher
    assert classify("m", "g", analysis(), control, experiment).classification == HIGH
    allowed = classify("m", "g", analysis(allowed_increase=1.2), control, experiment)
    assert allowed.classification == PASS
    assert allowed.effect_size == pytest.approx(1.1, rel=1e-3)


def test_critical_only_at_the_critical_effect() -> None:
    control = RNG.normal(100, 1, 60)
    high = classify("m", "g", analysis(critical=True, critical_increase=1.5), control,
                    control * 1.2)
    assert high.classification == HIGH and not high.failed_critically
    worse = classify("m", "g", analysis(critical=True, critical_increase=1.5), control,
                     control * 1.6)
    assert worse.classification == HIGH and worse.failed_critically


def test_a_zero_baseline_makes_the_ratio_undefined_and_any_significant_rise_counts() -> None:
    errors = classify("e", "g", analysis(critical=True, allowed_increase=1.5,
                                         critical_increase=2.0),
                      [0.0] * 60, list(RNG.uniform(0.04, 0.06, 60)))
    assert math.isnan(errors.effect_size or 0.0) is True
    assert errors.classification == HIGH and errors.failed_critically


def test_direction_decides_which_side_fails() -> None:
    control = RNG.normal(1.0, 0.05, 60)
    lower = control * 0.5
    assert classify("m", "g", analysis(direction="increase"), control, lower
                    ).classification == PASS
    assert classify("m", "g", analysis(direction="either"), control, lower
                    ).classification == LOW


def test_nan_strategy_and_must_have_data() -> None:
    nans = [math.nan] * 20
    assert classify("m", "g", analysis(), nans, [1.0] * 20).classification == NODATA
    assert classify("m", "g", analysis(must_have_data=True), nans, [1.0] * 20
                    ).classification == NODATA_FAIL
    critical = classify("m", "g", analysis(critical=True, must_have_data=True), nans,
                        [1.0] * 20)
    assert critical.classification == NODATA and critical.failed_critically
    # replace: NaN counts as 0, so a silent canary is compared as zeros.
    replaced = classify("m", "g", analysis(nan_strategy="replace"), [1.0] * 20, nans)
    assert replaced.classification == PASS  # lower, but only an increase is judged


def test_equal_or_constant_data_passes() -> None:
    assert classify("m", "g", analysis(), [1, 2, 3], [3, 2, 1]).classification == PASS
    assert classify("m", "g", analysis(), [0.0] * 10, [0.0] * 12).classification == PASS


def result(group: str, kind: str, failed: bool = False) -> Classification:
    return Classification("m", group, kind, failed, failed, "")


def test_scores_weight_each_groups_share_of_passes() -> None:
    value, groups, _ = score(
        [result("errors", PASS), result("errors", HIGH), result("latency", PASS),
         result("latency", NODATA), result("predictions", NODATA_FAIL)],
        {"errors": 50, "latency": 25, "predictions": 25})
    assert groups == {"errors": 50.0, "latency": 100.0, "predictions": 0.0}
    assert value == 50.0


def test_a_critical_failure_or_half_the_metrics_without_data_scores_zero() -> None:
    weights = {"errors": 100}
    assert score([result("errors", PASS), result("errors", HIGH, failed=True)], weights)[0] == 0
    assert score([result("errors", PASS), result("errors", NODATA)], weights)[0] == 0
    assert score([result("errors", PASS)] * 3 + [result("errors", NODATA)], weights)[0] == 100


def test_verdict_thresholds() -> None:
    assert [verdict_of(s, 95, 75) for s in (95, 94.99, 75, 74.9)] == [
        "pass", "marginal", "marginal", "fail"]


def test_judge_reads_a_rendered_canary_config() -> None:
    from pipeline.release.kayenta import canary_config
    from tests.unit.pipeline.release.test_release import demo_spec

    config = canary_config(demo_spec(), ReleaseConfig())
    points = list(RNG.normal(0.01, 0.001, 60))
    series = {m["name"]: (points, points[::-1]) for m in config["metrics"]}
    verdict = judge(config, series, pass_=95, marginal=75)
    assert verdict.verdict == "pass" and verdict.score == 100
    slower = dict(series, **{"mean latency seconds": (points, [p * 3 for p in points])})
    verdict = judge(config, slower, pass_=95, marginal=75)
    assert verdict.verdict == "fail" and "mean latency seconds" in verdict.reason
    assert mean_ratio([2.0], [1.0]) == 2.0
