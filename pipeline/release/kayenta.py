"""The Kayenta canary config: the service's metrics, canary track against baseline track.

The metric families, labels and series it reads are contract 5 (docs/contracts.md); the scrape
job that attaches the scope labels is spinnaker/prometheus-scrape.yaml.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import ReleaseConfig
from pipeline.release.spec import ReleaseSpec

# Contract 5 (docs/contracts.md): the metric families and labels the canary config reads, and
# the exact series names its queries use. Tests check these against a running service.
CANARY_METRIC_NAMES = (
    "bentoship_requests_total",
    "bentoship_request_duration_seconds",
    "bentoship_prediction_score",
)
CANARY_SERIES = (
    "bentoship_requests_total",
    "bentoship_request_duration_seconds_bucket",
    "bentoship_prediction_score_sum",
    "bentoship_prediction_score_count",
)
CANARY_METRIC_LABELS = ("variant", "status")
# Target labels Prometheus must attach when scraping the pods (spinnaker/prometheus-scrape.yaml):
# the pod labels `app` and `track`, and the pod's namespace as `namespace`.
SCOPE_LABELS = ("app", "track", "namespace")
JUDGE = "NetflixACAJudge-v1.0"


def canary_config_id(spec: ReleaseSpec, config: ReleaseConfig) -> str:
    return f"{config.application}-{spec.name}"


def canary_config(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, Any]:
    """Kayenta config comparing the `canary` track against the `baseline` track.

    Kayenta expands `${scope}` (the stage's controlScope/experimentScope: the track) and
    `${location}` (the namespace) in each `PromQL:` inline template with FreeMarker.
    """
    window = f"{2 * config.canary.step_seconds}s"
    scope = f'app="{spec.name}",track="${{scope}}",namespace="${{location}}"'
    server_errors = 'status=~"5..",'

    def rate(series: str, extra: str = "") -> str:
        return f"sum(rate({series}{{{extra}{scope}}}[{window}]))"

    def metric(
        name: str, metric_name: str, promql: str, group: str, analysis: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "name": name,
            "query": {
                "type": "prometheus",
                "serviceType": "prometheus",
                "metricName": metric_name,
                "customInlineTemplate": f"PromQL:{promql}",
            },
            "groups": [group],
            "analysisConfigurations": {"canary": analysis},
            "scopeName": "default",
        }

    metrics = [
        metric(
            "5xx error ratio",
            "bentoship_requests_total",
            f"({rate('bentoship_requests_total', server_errors)} or vector(0))"
            f" / {rate('bentoship_requests_total')}",
            "errors",
            {
                "direction": "increase",
                "critical": True,
                "nanStrategy": "replace",
                "mustHaveData": False,
            },
        ),
        metric(
            "p99 latency seconds",
            "bentoship_request_duration_seconds",
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(bentoship_request_duration_seconds_bucket{{{scope}}}[{window}])))",
            "latency",
            {
                "direction": "increase",
                "critical": False,
                "nanStrategy": "remove",
                "mustHaveData": True,
            },
        ),
    ]
    for variant in sorted(spec.model_versions):
        label = f'variant="{variant}",'
        metrics.append(
            metric(
                f"mean prediction score {variant}",
                "bentoship_prediction_score",
                f"{rate('bentoship_prediction_score_sum', label)}"
                f" / {rate('bentoship_prediction_score_count', label)}",
                "predictions",
                # A shift either way means the model behaves differently on the same traffic.
                {
                    "direction": "either",
                    "critical": False,
                    "nanStrategy": "remove",
                    "mustHaveData": False,
                },
            )
        )
    thresholds = config.canary.thresholds
    return {
        "id": canary_config_id(spec, config),
        "name": canary_config_id(spec, config),
        "description": f"bentoship canary analysis of {spec.name}: errors, latency, prediction scores",
        "configVersion": "1",
        "applications": [config.application],
        "judge": {"name": JUDGE, "judgeConfigurations": {}},
        "metrics": metrics,
        "templates": {},
        "classifier": {
            "groupWeights": dict(config.canary.group_weights),
            "scoreThresholds": {"marginal": thresholds.marginal, "pass": thresholds.pass_},
        },
    }
