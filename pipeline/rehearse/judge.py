"""Kayenta's NetflixACAJudge, ported: the verdict Spinnaker would reach on the same series.

Followed from the Kayenta source (github.com/spinnaker/kayenta, module kayenta-judge,
`com.netflix.kayenta.judge`), file by file:

- `NetflixACAJudge.scala`: per metric, read `analysisConfigurations.canary` (`direction`,
  `nanStrategy`, `critical`, `mustHaveData`, `effectSize`), drop or zero NaN values, classify
  with `MannWhitneyClassifier(tolerance = 0.25, confLevel = 0.98, ...)`; then score the
  classifications with `WeightedSumScorer` and map the score with `ThresholdScoreClassifier`.
- `classifiers/metric/MannWhitneyClassifier.scala`: Nodata when either side is empty; Pass when
  the sorted samples are equal; a two-sided Mann-Whitney U test with a confidence interval of
  the Hodges-Lehmann shift (experiment - control); High when the interval's lower end is above
  `tolerance * |estimate|` and the effect size reaches `allowedIncrease`, Low symmetrically;
  `critical` only when the effect also reaches `criticalIncrease` / `criticalDecrease`.
- `stats/MannWhitney.scala`: R's `wilcox.test(conf.int = TRUE, exact = FALSE, correct = TRUE)`
  (normal approximation with tie and continuity corrections; the interval's ends are roots of
  `wilcoxonDiff`, found with a Brent solver over [min(x) - max(y), max(x) - min(y)]).
- `stats/EffectSizes.scala`: `meanRatio` = mean(experiment) / mean(control), NaN when a mean is
  zero; `cles` = P(experiment > control) + P(tie) / 2.
- `scorers/WeightedSumScorer.scala`: a group scores passes / (passes + highs + lows + nodata
  failures) x 100 (Nodata is left out; a group with nothing left scores 100), weighted by
  `groupWeights`; a critical metric that failed, or half the metrics without data, scores 0.
- `classifiers/score/ThresholdScoreClassifier.scala`: score >= pass: Pass; >= marginal:
  Marginal; else Fail.

Only the classification logic is ported; the data comes from `pipeline.rehearse.prometheus`,
with the queries of the rendered canary config run as Kayenta's Prometheus client runs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

# NetflixACAJudge.scala: `new MannWhitneyClassifier(tolerance = 0.25, confLevel = 0.98, ...)`.
TOLERANCE = 0.25
CONFIDENCE = 0.98
# MannWhitneyClassifier.scala: the noise added when both samples are constant, or the test's
# variance is zero and no interval exists.
_NOISE_SCALE = 1e-5
# NetflixACAJudge.scala: the scorer gives 0 when at least this share of metrics has no data.
NODATA_SHARE = 0.5

PASS, HIGH, LOW, NODATA, NODATA_FAIL = "Pass", "High", "Low", "Nodata", "NodataFailMetric"


@dataclass(frozen=True)
class MannWhitneyResult:
    """R's `wilcox.test` answer: the shift estimate and its confidence interval."""

    lower: float
    upper: float
    estimate: float
    p_value: float


@dataclass(frozen=True)
class Classification:
    """One metric's judgement (Kayenta's `MetricClassification` plus what a person reads)."""

    name: str
    group: str
    classification: str
    critical: bool  # the metric is critical in the config
    failed_critically: bool  # this classification fails the whole canary
    reason: str
    effect_size: float | None = None
    interval: tuple[float, float] | None = None
    estimate: float | None = None
    p_value: float | None = None
    control: tuple[float, ...] = ()
    experiment: tuple[float, ...] = ()

    def as_json(self) -> dict[str, Any]:
        def number(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, 6)

        return {
            "name": self.name,
            "group": self.group,
            "classification": self.classification,
            "critical": self.critical,
            "failed_critically": self.failed_critically,
            "reason": self.reason,
            "effect_size": number(self.effect_size),
            "interval": None if self.interval is None else [number(v) for v in self.interval],
            "p_value": number(self.p_value),
            "control": {"points": len(self.control), "mean": number(_mean(self.control))},
            "experiment": {"points": len(self.experiment),
                           "mean": number(_mean(self.experiment))},
        }


@dataclass(frozen=True)
class Verdict:
    verdict: str  # pass | marginal | fail
    score: float
    reason: str
    groups: dict[str, float] = field(default_factory=dict)
    metrics: tuple[Classification, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "score": self.score,
            "reason": self.reason,
            "groups": self.groups,
            "metrics": [m.as_json() for m in self.metrics],
        }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# --- stats/MannWhitney.scala: R's wilcox.test, normal approximation ----------------------------


def _ties(ranks: np.ndarray) -> float:
    _, counts = np.unique(ranks, return_counts=True)
    return float(np.sum(counts.astype(float) ** 3 - counts))


def _sigma(nx: int, ny: int, ties: float) -> float:
    n = nx + ny
    return math.sqrt((nx * ny / 12.0) * ((n + 1) - ties / (n * (n - 1))))


def _wilcoxon_diff(d: float, x: np.ndarray, y: np.ndarray, zq: float) -> float:
    """`wdiff` of R's wilcox.test: the standardised statistic of x - d against y, minus zq."""
    nx, ny = len(x), len(y)
    ranks = stats.rankdata(np.concatenate([x - d, y]))
    dz = float(np.sum(ranks[:nx])) - nx * (nx + 1) / 2.0 - nx * ny / 2.0
    sigma = _sigma(nx, ny, _ties(ranks))
    if sigma == 0:
        raise ArithmeticError("cannot compute a confidence interval when all values are tied")
    correction = math.copysign(0.5, dz) if dz != 0 else 0.0
    return (dz - correction) / sigma - zq


def mann_whitney(experiment: Sequence[float], control: Sequence[float],
                 confidence: float = CONFIDENCE) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test with the interval of the shift experiment - control."""
    x, y = np.asarray(experiment, float), np.asarray(control, float)
    nx, ny = len(x), len(y)
    ranks = stats.rankdata(np.concatenate([x, y]))
    z = float(np.sum(ranks[:nx])) - nx * (nx + 1) / 2.0 - nx * ny / 2.0
    sigma = _sigma(nx, ny, _ties(ranks))
    if sigma == 0:
        raise ArithmeticError("all values are tied")
    z = (z - (math.copysign(0.5, z) if z != 0 else 0.0)) / sigma
    p_value = 2 * min(stats.norm.cdf(z), stats.norm.sf(z))

    lowest, highest = float(x.min() - y.max()), float(x.max() - y.min())
    alpha = 1 - confidence

    def root(zq: float) -> float:
        f_low = _wilcoxon_diff(lowest, x, y, zq)
        f_high = _wilcoxon_diff(highest, x, y, zq)
        if f_low <= 0:
            return lowest
        if f_high >= 0:
            return highest
        return float(optimize.brentq(_wilcoxon_diff, lowest, highest, args=(x, y, zq),
                                     xtol=1e-4))

    lower = root(float(stats.norm.ppf(1 - alpha / 2)))
    upper = root(float(stats.norm.ppf(alpha / 2)))
    estimate = root(0.0)
    return MannWhitneyResult(lower=lower, upper=upper, estimate=estimate, p_value=p_value)


# --- stats/EffectSizes.scala ---------------------------------------------------------------------


def mean_ratio(experiment: Sequence[float], control: Sequence[float]) -> float:
    c, e = float(np.mean(control)), float(np.mean(experiment))
    if c == 0 or e == 0:
        return math.nan
    return e / c


def cles(experiment: Sequence[float], control: Sequence[float]) -> float:
    x, y = np.asarray(experiment, float), np.asarray(control, float)
    greater = np.sum(x[:, None] > y[None, :])
    ties = np.sum(x[:, None] == y[None, :])
    return float((greater + 0.5 * ties) / (len(x) * len(y)))


# --- classifiers/metric/MannWhitneyClassifier.scala ----------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """`analysisConfigurations.canary` of one metric, with Kayenta's defaults."""

    direction: str = "either"
    nan_strategy: str = "remove"
    critical: bool = False
    must_have_data: bool = False
    measure: str = "meanRatio"
    allowed_increase: float = 1.0
    allowed_decrease: float = 1.0
    critical_increase: float = 1.0
    critical_decrease: float = 1.0

    @classmethod
    def of(cls, metric: Mapping[str, Any]) -> Analysis:
        canary = (metric.get("analysisConfigurations") or {}).get("canary") or {}
        sizes = canary.get("effectSize") or {}
        measure = sizes.get("measure", "meanRatio")
        # EffectSizes: a ratio of means of 1.0 is no change; cles' "no change" is 0.5.
        neutral = 0.5 if measure == "cles" else 1.0
        direction = str(canary.get("direction", "either")).lower()
        nan = str(canary.get("nanStrategy", "remove")).lower()
        return cls(
            direction=direction if direction in ("increase", "decrease", "either") else "either",
            nan_strategy=nan if nan in ("remove", "replace") else "remove",
            critical=bool(canary.get("critical", False)),
            must_have_data=bool(canary.get("mustHaveData", False)),
            measure=measure,
            allowed_increase=float(sizes.get("allowedIncrease", neutral)),
            allowed_decrease=float(sizes.get("allowedDecrease", neutral)),
            critical_increase=float(sizes.get("criticalIncrease", neutral)),
            critical_decrease=float(sizes.get("criticalDecrease", neutral)),
        )


def _prepared(values: Sequence[float | None], nan_strategy: str) -> list[float]:
    """NetflixACAJudge: `remove` drops NaN (no requests in a window), `replace` makes it 0."""
    out = []
    for v in values:
        value = math.nan if v is None else float(v)
        if math.isnan(value):
            if nan_strategy == "replace":
                out.append(0.0)
            continue
        out.append(value)
    return out


def classify(name: str, group: str, analysis: Analysis, control: Sequence[float | None],
             experiment: Sequence[float | None], *, seed: int = 0) -> Classification:
    """One metric, as MannWhitneyClassifier classifies it."""
    c = _prepared(control, analysis.nan_strategy)
    e = _prepared(experiment, analysis.nan_strategy)

    def result(kind: str, reason: str, failed: bool = False, **extra: Any) -> Classification:
        return Classification(name, group, kind, analysis.critical, failed, reason,
                              control=tuple(c), experiment=tuple(e), **extra)

    if not c or not e:
        missing = " and ".join(s for s, v in (("baseline", c), ("canary", e)) if not v)
        if analysis.must_have_data and not analysis.critical:
            return result(NODATA_FAIL, f"no data for the {missing}; the metric must have data")
        return result(NODATA, f"no data for the {missing}", failed=analysis.critical)
    if sorted(c) == sorted(e):
        return result(PASS, "the canary and the baseline data are equal")
    if len(set(c) | set(e)) == 1:
        return result(PASS, "every value is the same")
    if len(set(c)) == 1 and len(set(e)) == 1:
        # Two constants: the test has no variance; Kayenta adds a little noise to both.
        rng = np.random.default_rng(seed)
        c = [v + rng.normal(0, _NOISE_SCALE * max(abs(v), 1e-12)) for v in c]
        e = [v + rng.normal(0, _NOISE_SCALE * max(abs(v), 1e-12)) for v in e]

    test = mann_whitney(e, c)
    effect = cles(e, c) if analysis.measure == "cles" else mean_ratio(e, c)
    bound = TOLERANCE * abs(test.estimate)
    nan_effect = math.isnan(effect)
    high = test.lower > bound and (nan_effect or effect >= analysis.allowed_increase)
    low = test.upper < -bound and (nan_effect or effect <= analysis.allowed_decrease)
    detail = {"effect_size": effect, "interval": (test.lower, test.upper),
                  "estimate": test.estimate, "p_value": test.p_value}
    ratio = "undefined (a zero mean)" if nan_effect else f"{effect:.3f}"
    if high and analysis.direction in ("increase", "either"):
        critical = analysis.critical and (nan_effect or effect >= analysis.critical_increase)
        return result(HIGH, f"the canary is higher: ratio of means {ratio}, shift interval "
                      f"[{test.lower:.4g}, {test.upper:.4g}]", failed=critical, **detail)
    if low and analysis.direction in ("decrease", "either"):
        critical = analysis.critical and (nan_effect or effect <= analysis.critical_decrease)
        return result(LOW, f"the canary is lower: ratio of means {ratio}, shift interval "
                      f"[{test.lower:.4g}, {test.upper:.4g}]", failed=critical, **detail)
    return result(PASS, f"no difference beyond the allowed effect: ratio of means {ratio}",
                  False, **detail)


# --- scorers/WeightedSumScorer.scala, classifiers/score/ThresholdScoreClassifier.scala -----------


def score(results: Sequence[Classification], weights: Mapping[str, float]
          ) -> tuple[float, dict[str, float], str]:
    """The canary score, each group's score, and why."""
    groups: dict[str, float] = {}
    for group in sorted({r.group for r in results} | set(weights)):
        members = [r for r in results if r.group == group]
        counted = [r for r in members if r.classification != NODATA]
        passed = sum(r.classification == PASS for r in counted)
        groups[group] = round(100.0 * passed / len(counted), 2) if counted else 100.0
    critical = [r.name for r in results if r.failed_critically]
    if critical:
        return 0.0, groups, f"critical metric failed: {', '.join(critical)}"
    nodata = sum(r.classification == NODATA for r in results)
    if results and nodata / len(results) >= NODATA_SHARE:
        return 0.0, groups, f"{nodata} of {len(results)} metrics have no data"
    total = sum(weights.get(g, 0.0) for g in groups) or 1.0
    value = sum(groups[g] * weights.get(g, 0.0) for g in groups) / total
    failed = [f"{r.name} ({r.classification})" for r in results
              if r.classification not in (PASS, NODATA)]
    return round(value, 2), groups, ("failed: " + ", ".join(failed)) if failed else "every metric passed"


def verdict_of(value: float, pass_: float, marginal: float) -> str:
    if value >= pass_:
        return "pass"
    if value >= marginal:
        return "marginal"
    return "fail"


def judge(canary_config: Mapping[str, Any],
          series: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]],
          *, pass_: float, marginal: float) -> Verdict:
    """Judge every metric of a Kayenta canary config on (control, experiment) series by name."""
    results = []
    for i, metric in enumerate(canary_config["metrics"]):
        name = metric["name"]
        control, experiment = series.get(name, ((), ()))
        group = (metric.get("groups") or ["default"])[0]
        results.append(classify(name, group, Analysis.of(metric), control, experiment, seed=i))
    weights = {g: float(w) for g, w in
               (canary_config.get("classifier") or {}).get("groupWeights", {}).items()}
    value, groups, reason = score(results, weights)
    return Verdict(verdict_of(value, pass_, marginal), value, reason, groups, tuple(results))
