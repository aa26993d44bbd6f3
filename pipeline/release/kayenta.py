"""The Kayenta canary config: the server and the models, canary track against baseline track.

Two kinds of comparison, each a Kayenta *scope* (a pair of label fragments the stage hands to
every query of that scope; Kayenta substitutes `${scope}` and `${location}` with
`StringSubstitutor`, kayenta-core `QueryConfigUtils.expandCustomFilter`, so a scope can be a
label fragment, as Argo Rollouts' Kayenta example does with its filters):

- `default`: `track="baseline"` against `track="canary"`, every variant together. Errors
  (answers the caller did not cause, and separately the caller's 4xx, each request counted once
  by `bentoship_responses_total`) and latency.
- `variant-<v>`, one per variant of the new image: what variant `v` answers on the canary
  against what production's same model answers on the baseline, or production's control when
  the model is new. In the usual release (production serves control vN alone, the release adds
  treatment vN+1) the new model is judged against the model it would replace, on the same
  traffic. Binary classifiers: mean score; classifiers: mean confidence and, with more than two
  labels, each label's share; regressors: each target's mean value.

Every metric has effect sizes (`[release.canary.effect_sizes]`, pipeline/canary.py): a
statistically significant change smaller than the allowed ratio passes. Critical metrics
(errors, mean latency, the answers' means) must have data: a canary that answers nothing is not
a passing canary. Windows and steps are checked against the scrape interval (pipeline/canary.py).

The metric families, labels and series it reads are contract 5 (docs/contracts.md); the scrape
job that attaches the scope labels is `prometheus-scrape.yaml` (`scrape_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.canary import Effect
from pipeline.config import ReleaseConfig
from pipeline.errors import ReleaseError
from pipeline.release.spec import ReleaseSpec
from services.config import Output

# Contract 5 (docs/contracts.md): the metric families and labels the canary config reads, and
# the exact series names its queries use. Tests check these against a running service.
CANARY_METRIC_NAMES = (
    "bentoship_responses_total",
    "bentoship_request_duration_seconds",
    "bentoship_prediction_score",
    "bentoship_prediction_confidence",
    "bentoship_predictions_total",
    "bentoship_prediction_value",
)
CANARY_SERIES = (
    "bentoship_responses_total",
    "bentoship_request_duration_seconds_sum",
    "bentoship_request_duration_seconds_count",
    "bentoship_request_duration_seconds_bucket",
    "bentoship_prediction_score_sum",
    "bentoship_prediction_score_count",
    "bentoship_prediction_confidence_sum",
    "bentoship_prediction_confidence_count",
    "bentoship_predictions_total",
    "bentoship_prediction_value_sum",
    "bentoship_prediction_value_count",
)
CANARY_METRIC_LABELS = ("status", "cause", "variant", "label", "target")
# Target labels Prometheus must attach when scraping the pods (prometheus-scrape.yaml):
# the pod labels `app` and `track`, and the pod's namespace as `namespace`.
SCOPE_LABELS = ("app", "track", "namespace")
JUDGE = "NetflixACAJudge-v1.0"
DEFAULT_SCOPE = "default"
MAX_LABEL_METRICS = 10  # a label share per class, for the first this many classes
# `cause` of bentoship_responses_total (services/errors.py): not the caller's doing.
NOT_THE_CALLERS = 'cause=~"model|server"'


@dataclass(frozen=True)
class Scope:
    """One Kayenta scope: the label fragments of the control and of the experiment."""

    name: str
    control: str
    experiment: str


def canary_config_id(spec: ReleaseSpec, config: ReleaseConfig) -> str:
    return f"{config.application}-{spec.name}"


def has_output(spec: ReleaseSpec) -> bool:
    return "output" in (spec.openapi or {}).get("info", {}).get("x-bentoship", {})


def output_of(spec: ReleaseSpec) -> Output:
    """What the image's variants answer, from its OpenAPI document (`info.x-bentoship.output`)."""
    if not has_output(spec):
        raise ReleaseError(
            f"cannot render the canary config of {spec.image}: its OpenAPI document does not say "
            "what the models answer (info.x-bentoship.output; images built before bentoship "
            "judged answers lack it): rebuild the image, or give `bentoship render` its "
            "document with --openapi (`bentoship openapi export`)"
        )
    assert spec.openapi is not None
    return Output.model_validate(spec.openapi["info"]["x-bentoship"]["output"])


def scopes(spec: ReleaseSpec) -> list[Scope]:
    """The default scope (the tracks) and one per variant of the new image."""
    production = spec.baseline_model_versions or {}
    found = [Scope(DEFAULT_SCOPE, 'track="baseline"', 'track="canary"')]
    for variant in sorted(spec.model_versions):
        model = dict(spec.model_versions[variant])
        same = [v for v, m in sorted(production.items()) if dict(m) == model]
        compared = variant if variant in same else (same[0] if same else "control")
        found.append(
            Scope(
                f"variant-{variant}",
                f'track="baseline",variant="{compared}"',
                f'track="canary",variant="{variant}"',
            )
        )
    return found


def stage_scopes(spec: ReleaseSpec, config: ReleaseConfig) -> list[dict[str, Any]]:
    """The `scopes` of the kayentaCanary stage (Orca's `KayentaCanaryContext`)."""
    return [
        {
            "scopeName": s.name,
            "controlScope": s.control,
            "controlLocation": config.namespace,
            "experimentScope": s.experiment,
            "experimentLocation": config.namespace,
            "step": config.canary.step_seconds,
            "extendedScopeParams": {},
        }
        for s in scopes(spec)
    ]


def _analysis(direction: str, effect: Effect, *, critical: bool) -> dict[str, Any]:
    """Kayenta's `analysisConfigurations.canary` (NetflixACAJudge.scala reads these keys)."""
    sizes: dict[str, float] = {}
    if direction in ("increase", "either"):
        sizes["allowedIncrease"] = effect.allowed
        if critical and effect.critical is not None:
            sizes["criticalIncrease"] = effect.critical
    if direction in ("decrease", "either"):
        sizes["allowedDecrease"] = round(1 / effect.allowed, 6)
        if critical and effect.critical is not None:
            sizes["criticalDecrease"] = round(1 / effect.critical, 6)
    return {
        "direction": direction,
        "critical": critical,
        "mustHaveData": critical,
        # NaN is a window without requests (0/0): no evidence either way, never a zero.
        "nanStrategy": "remove",
        "effectSize": {"measure": "meanRatio", **sizes},
    }


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def canary_config(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, Any]:
    """Kayenta config comparing the `canary` track against the `baseline` track."""
    c = config.canary
    sizes = c.effect_sizes
    output = output_of(spec)
    window = f"{c.window_seconds}s"
    selector = f'app="{spec.name}",namespace="${{location}}",${{scope}}'

    def rate(series: str, extra: str = "") -> str:
        return f"sum(rate({series}{{{extra}{selector}}}[{window}]))"

    def ratio(part: str) -> str:
        total = "bentoship_responses_total"
        return f"({rate(total, part + ',')} or vector(0)) / {rate(total)}"

    def mean(family: str, extra: str = "") -> str:
        return f"{rate(f'{family}_sum', extra)} / {rate(f'{family}_count', extra)}"

    def metric(name: str, family: str, promql: str, group: str, analysis: dict[str, Any],
               scope: str = DEFAULT_SCOPE) -> dict[str, Any]:
        return {
            "name": name,
            "query": {
                "type": "prometheus",
                "serviceType": "prometheus",
                "metricName": family,
                "customInlineTemplate": f"PromQL:{promql}",
            },
            "groups": [group],
            "analysisConfigurations": {"canary": analysis},
            "scopeName": scope,
        }

    duration = "bentoship_request_duration_seconds"
    metrics = [
        metric("error ratio", "bentoship_responses_total", ratio(NOT_THE_CALLERS), "errors",
               _analysis("increase", sizes.errors, critical=True)),
        metric("caller error ratio", "bentoship_responses_total", ratio('cause="caller"'),
               "errors", _analysis("increase", sizes.errors, critical=False)),
        metric("mean latency seconds", duration, mean(duration), "latency",
               _analysis("increase", sizes.latency, critical=True)),
        metric("p99 latency seconds", duration,
               f"histogram_quantile(0.99, sum by (le) (rate({duration}_bucket{{{selector}}}"
               f"[{window}])))", "latency",
               _analysis("increase", sizes.latency_p99, critical=False)),
    ]
    answers = sizes.answers
    for variant in sorted(spec.model_versions):
        scope = f"variant-{variant}"

        def answer(name: str, family: str, promql: str, critical: bool,
                   variant: str = variant, scope: str = scope) -> dict[str, Any]:
            return metric(f"{name} {variant}", family, promql, "predictions",
                          _analysis("either", answers, critical=critical), scope)

        if output.task == "regression":
            for target in output.target_labels:
                label = f'target="{_quote(target)}",'
                metrics.append(answer(f"mean {target}", "bentoship_prediction_value",
                                      mean("bentoship_prediction_value", label), True))
            continue
        if output.binary:
            metrics.append(answer("mean score", "bentoship_prediction_score",
                                  mean("bentoship_prediction_score"), True))
        metrics.append(answer("mean confidence", "bentoship_prediction_confidence",
                              mean("bentoship_prediction_confidence"), not output.binary))
        if not output.binary:
            for key in output.keys[:MAX_LABEL_METRICS]:
                label = 'label="' + _quote(key) + '",'
                share = (f"{rate('bentoship_predictions_total', label)}"
                         f" / {rate('bentoship_predictions_total')}")
                metrics.append(answer(f"share of {key}", "bentoship_predictions_total", share,
                                      False))
    thresholds = c.thresholds
    return {
        "id": canary_config_id(spec, config),
        "name": canary_config_id(spec, config),
        "description": (
            f"bentoship canary analysis of {spec.name}: errors, latency, and what each variant "
            "answers against production's same model (or its control)"
        ),
        "configVersion": "1",
        "applications": [config.application],
        "judge": {"name": JUDGE, "judgeConfigurations": {}},
        "metrics": metrics,
        "templates": {},
        "classifier": {
            "groupWeights": dict(c.group_weights),
            "scoreThresholds": {"marginal": thresholds.marginal, "pass": thresholds.pass_},
        },
    }


def scrape_config(config: ReleaseConfig, job: str = "kubernetes-pods") -> dict[str, Any]:
    """The Prometheus scrape job the queries rely on: `app`, `track`, `namespace` (and `pod`)
    copied onto every series of the annotated pods, at `scrape_interval_seconds`."""
    return {
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": f"{config.canary.scrape_interval_seconds}s",
                "kubernetes_sd_configs": [{"role": "pod"}],
                "relabel_configs": list(RELABEL_CONFIGS),
            }
        ]
    }


RELABEL_CONFIGS: tuple[Mapping[str, Any], ...] = (
    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
     "action": "keep", "regex": "true"},
    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
     "action": "replace", "regex": "(.+)", "target_label": "__metrics_path__"},
    {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
     "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
     "target_label": "__address__"},
    {"source_labels": ["__meta_kubernetes_pod_label_app"], "target_label": "app"},
    {"source_labels": ["__meta_kubernetes_pod_label_track"], "target_label": "track"},
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
)
