"""Release files for one image: the Spinnaker pipeline, the Kayenta canary config, the manifests.

`render_release(spec, config, outdir)` validates everything first and only then writes::

    outdir/pipeline.json              spin pipeline save --file pipeline.json
    outdir/canary-config.json         spin canary canary-config save --file canary-config.json
    outdir/k8s/deployment.yaml        production Deployment, new digest (applied on promotion)
    outdir/k8s/deployment-canary.yaml     canary Deployment, new digest         (canary releases)
    outdir/k8s/deployment-baseline.yaml   baseline Deployment, production digest (canary releases)
    outdir/k8s/service.yaml, hpa.yaml, pdb.yaml

A canary release runs baseline (production digest) and canary (new digest) side by side behind
the production Service, lets Kayenta compare them, promotes on a pass and cleans up either way.
A first release (no production digest yet) and a rollback (`skip_canary`) deploy straight to
production. Images are referred to by digest everywhere; a tag is refused. spinnaker/README.md
explains the stages and the failure path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config import (
    ReleaseConfig,
)
from pipeline.errors import ReleaseError
from pipeline.identity import BENTOML_HOME, PORT, TAG_SCHEME, UID, parse_tag

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
TRACKS = ("baseline", "canary", "production")
KINDS = ("model", "hotfix", "rollback")

JUDGE = "NetflixACAJudge-v1.0"
STAGE_BASELINE = "Deploy baseline"
STAGE_CANARY = "Deploy canary"
STAGE_ANALYSIS = "Canary analysis"
STAGE_PROMOTE = "Promote to production"
STAGE_UNDO = "Undo production rollout"
STAGE_DELETE_CANARY = "Delete canary"
STAGE_DELETE_BASELINE = "Delete baseline"
STAGE_VERDICT = "Verdict"
STAGE_DEPLOY = "Deploy production"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)*$")
_VARIANT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


# --- what is released -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseSpec:
    """One image to release, by digest, and what is in it."""

    name: str
    repository: str
    digest: str
    baseline_digest: str | None
    model_versions: Mapping[str, Mapping[str, str]]
    code_version: str
    image_tag: str
    kind: Literal["model", "hotfix", "rollback"] = "model"
    skip_canary: bool = False
    openapi: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def image(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def baseline_image(self) -> str | None:
        return f"{self.repository}@{self.baseline_digest}" if self.baseline_digest else None

    @property
    def mode(self) -> Literal["canary", "direct"]:
        return "direct" if self.baseline_digest is None or self.skip_canary else "canary"


def parse_image_reference(reference: str, option: str = "image") -> tuple[str, str]:
    """Split `REPO@sha256:<64 hex>` into repository and digest; a tag is refused."""
    repository, at, digest = reference.strip().partition("@")
    if not at:
        raise ReleaseError(
            f"{option}: {reference!r} is not referred to by digest; a release needs "
            "REPOSITORY@sha256:<64 hex digits> (the digest `docker push` printed), never a tag"
        )
    _check_repository(repository, option)
    _check_digest(digest, option)
    return repository, digest


def _check_repository(repository: str, key: str) -> None:
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        raise ReleaseError(
            f"{key}: {repository!r} carries a tag; give the repository alone and the image by "
            "digest (REPOSITORY@sha256:...)"
        )
    if not _REPOSITORY.match(repository):
        raise ReleaseError(
            f"{key}: {repository!r} is not an image repository such as 127.0.0.1:5000/demo-classifier"
        )


def _check_digest(digest: str, key: str) -> None:
    if not _DIGEST.match(digest):
        raise ReleaseError(
            f"{key}: {digest!r} is not a digest: use sha256:<64 lowercase hex digits>"
        )


def validate_spec(spec: ReleaseSpec) -> None:
    """Raise ReleaseError naming the first field that cannot be released."""
    if len(spec.name) > 54 or not _DNS_LABEL.match(spec.name):
        raise ReleaseError(
            f"name: {spec.name!r} must be a DNS-1123 label of at most 54 characters (lowercase "
            "letters, digits, '-') so that '<name>-baseline' is still a valid Kubernetes name"
        )
    _check_repository(spec.repository, "repository")
    _check_digest(spec.digest, "digest")
    if spec.baseline_digest is not None:
        _check_digest(spec.baseline_digest, "baseline_digest")
        if spec.baseline_digest == spec.digest:
            raise ReleaseError(
                f"baseline_digest: the new image {spec.image} is already production; "
                "there is nothing to release"
            )
    if spec.kind not in KINDS:
        raise ReleaseError(f"kind: {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.skip_canary and spec.kind != "rollback":
        raise ReleaseError(
            f"skip_canary: only a rollback skips the canary analysis, this release is a {spec.kind}"
        )
    if parse_tag(spec.image_tag) is None or len(spec.image_tag) > 63:
        raise ReleaseError(
            f"image_tag: {spec.image_tag!r} does not follow the tag scheme "
            f"{TAG_SCHEME} (docs/contracts.md, contract 6)"
        )
    if not spec.code_version.strip():
        raise ReleaseError("code_version: must not be empty")
    if not spec.model_versions:
        raise ReleaseError("model_versions: a release holds at least the control model")
    for variant, model in spec.model_versions.items():
        if not _VARIANT.match(variant):
            raise ReleaseError(
                f"model_versions: variant {variant!r} must be lowercase letters, digits and '_'"
            )
        missing = {"name", "version"} - {k for k, v in model.items() if str(v).strip()}
        if missing:
            raise ReleaseError(f"model_versions.{variant}: missing {', '.join(sorted(missing))}")


# --- Kubernetes manifests -------------------------------------------------------------------------


def _deployment_name(spec: ReleaseSpec, track: str) -> str:
    return spec.name if track == "production" else f"{spec.name}-{track}"


def _selector(spec: ReleaseSpec, track: str) -> dict[str, str]:
    return {"app": spec.name, "track": track}


def deployment(spec: ReleaseSpec, config: ReleaseConfig, track: str) -> dict[str, Any]:
    """The Deployment of one track; production leaves `replicas` to the autoscaler."""
    image = spec.baseline_image if track == "baseline" else spec.image
    labels = {**_selector(spec, track), "version": spec.image_tag}
    res = config.resources
    annotations = {
        "bentoship.io/image": image,
        "bentoship.io/code-version": spec.code_version,
        "bentoship.io/release-kind": spec.kind,
        **{
            f"bentoship.io/model-{variant.replace('_', '-')}": f"{m['name']}/{m['version']}"
            for variant, m in sorted(spec.model_versions.items())
        },
    }
    if track == "baseline":
        # The baseline runs the production image; its labels must not claim the new version.
        labels["version"] = "baseline"
        annotations = {"bentoship.io/image": image}
    probe = {"port": "http", "scheme": "HTTP"}
    container = {
        "name": "service",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "BENTOSHIP_TRACK", "value": track},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ],
        "resources": {
            "requests": {"cpu": res.cpu_request, "memory": res.memory_request},
            "limits": {"cpu": res.cpu_limit, "memory": res.memory_limit},
        },
        "startupProbe": {
            "httpGet": {"path": "/livez", **probe},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", **probe},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **probe},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "lifecycle": {
            # Let endpoints controllers and proxies drop the pod before the server stops.
            "preStop": {"exec": {"command": ["sleep", str(config.prestop_sleep_seconds)]}}
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # BentoML writes its home (prometheus_multiproc_dir, tmp, envs), tempfile.mkdtemp
        # writes /tmp (worker sockets, MLflow model loading); the rest of the image is read-only.
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "bentoml-home", "mountPath": BENTOML_HOME},
            {"name": "cache", "mountPath": "/home/bentoship/.cache"},
        ],
    }
    spec_: dict[str, Any] = {
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": _selector(spec, track)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": config.termination_grace_seconds,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": UID,
                    "runAsGroup": UID,
                    "fsGroup": UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": [
                    {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}},
                    {"name": "bentoml-home", "emptyDir": {"sizeLimit": "256Mi"}},
                    {"name": "cache", "emptyDir": {"sizeLimit": "256Mi"}},
                ],
            },
        },
    }
    if track != "production":
        spec_ = {"replicas": config.canary.replicas, **spec_}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": _deployment_name(spec, track),
            "namespace": config.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec_,
    }


def service(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, Any]:
    """Selects every track, so baseline and canary pods take their share of real traffic."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "namespace": config.namespace,
            "labels": {"app": spec.name},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": spec.name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, Any]:
    r = config.replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": spec.name,
            "namespace": config.namespace,
            "labels": {"app": spec.name},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": r.min,
            "maxReplicas": r.max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": r.target_cpu_percent,
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": spec.name,
            "namespace": config.namespace,
            "labels": {"app": spec.name},
        },
        "spec": {
            "minAvailable": config.replicas.min_available,
            "selector": {"matchLabels": _selector(spec, "production")},
        },
    }


# --- Kayenta canary config ------------------------------------------------------------------------


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


# --- Spinnaker pipeline ---------------------------------------------------------------------------


def _status_is(stage_name: str, status: str) -> str:
    return f"#stage('{stage_name}').status.toString() == '{status}'"


def _deploy_stage(
    ref: str, after: list[str], name: str, config: ReleaseConfig, manifests: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": "deployManifest",
        "name": name,
        "account": config.account,
        "cloudProvider": "kubernetes",
        "moniker": {"app": config.application},
        "namespaceOverride": config.namespace,
        "source": "text",
        "manifests": manifests,
        # Digests are pinned in the manifests; nothing in them is a pipeline expression.
        "skipExpressionEvaluation": True,
        "trafficManagement": {
            "enabled": False,
            "options": {"enableTraffic": False, "services": []},
        },
    }


def _manifest_stage(
    ref: str, after: list[str], kind: str, name: str, config: ReleaseConfig, target: str
) -> dict[str, Any]:
    stage: dict[str, Any] = {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": kind,
        "name": name,
        "account": config.account,
        "cloudProvider": "kubernetes",
        "location": config.namespace,
        "manifestName": f"deployment {target}",
        "mode": "static",
    }
    if kind == "deleteManifest":
        stage["options"] = {"cascading": True}
    else:
        stage["numRevisionsBack"] = 1
    return stage


_CONTINUE_ON_FAILURE = {
    "failPipeline": False,
    "continuePipeline": True,
    "completeOtherBranchesThenFail": False,
}


def _verdict(ref: str, after: list[str], checks: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": "checkPreconditions",
        "name": STAGE_VERDICT,
        "preconditions": [
            {
                "type": "expression",
                "context": {"expression": "${" + expression + "}", "failureMessage": message},
                "failPipeline": True,
            }
            for expression, message in checks
        ],
    }


def _canary_stages(spec: ReleaseSpec, config: ReleaseConfig) -> list[dict[str, Any]]:
    c = config.canary
    promote_if = f"parameters['promote'] == 'true' and {_status_is(STAGE_ANALYSIS, 'SUCCEEDED')}"
    analysis = {
        "refId": "3",
        "requisiteStageRefIds": ["1", "2"],
        "type": "kayentaCanary",
        "name": STAGE_ANALYSIS,
        "analysisType": "realTime",
        "canaryConfig": {
            "canaryConfigId": canary_config_id(spec, config),
            "lifetimeDuration": c.lifetime_duration,
            "beginCanaryAnalysisAfterMins": c.begin_after_minutes,
            "canaryAnalysisIntervalMins": c.interval_minutes,
            "lookbackMins": 0,
            "scoreThresholds": {"marginal": c.thresholds.marginal, "pass": c.thresholds.pass_},
            "scopes": [
                {
                    "scopeName": "default",
                    "controlScope": "baseline",
                    "controlLocation": config.namespace,
                    "experimentScope": "canary",
                    "experimentLocation": config.namespace,
                    "step": c.step_seconds,
                    "extendedScopeParams": {},
                }
            ],
            "metricsAccountName": c.metrics_account,
            "storageAccountName": c.storage_account,
        },
        "stageEnabled": {
            "type": "expression",
            "expression": f"{_status_is(STAGE_BASELINE, 'SUCCEEDED')} and "
            f"{_status_is(STAGE_CANARY, 'SUCCEEDED')}",
        },
        **_CONTINUE_ON_FAILURE,
    }
    production = [
        deployment(spec, config, "production"),
        service(spec, config),
        autoscaler(spec, config),
        disruption_budget(spec, config),
    ]
    return [
        {
            **_deploy_stage(
                "1", [], STAGE_BASELINE, config, [deployment(spec, config, "baseline")]
            ),
            **_CONTINUE_ON_FAILURE,
        },
        {
            **_deploy_stage("2", [], STAGE_CANARY, config, [deployment(spec, config, "canary")]),
            **_CONTINUE_ON_FAILURE,
        },
        analysis,
        {
            **_deploy_stage("4", ["3"], STAGE_PROMOTE, config, production),
            "stageEnabled": {"type": "expression", "expression": promote_if},
            **_CONTINUE_ON_FAILURE,
        },
        {
            **_manifest_stage("5", ["4"], "undoRolloutManifest", STAGE_UNDO, config, spec.name),
            "stageEnabled": {
                "type": "expression",
                "expression": _status_is(STAGE_PROMOTE, "FAILED_CONTINUE"),
            },
            **_CONTINUE_ON_FAILURE,
        },
        {
            **_manifest_stage(
                "6", ["5"], "deleteManifest", STAGE_DELETE_CANARY, config, f"{spec.name}-canary"
            ),
            **_CONTINUE_ON_FAILURE,
        },
        {
            **_manifest_stage(
                "7", ["5"], "deleteManifest", STAGE_DELETE_BASELINE, config, f"{spec.name}-baseline"
            ),
            **_CONTINUE_ON_FAILURE,
        },
        _verdict(
            "8",
            ["6", "7"],
            [
                (
                    _status_is(STAGE_ANALYSIS, "SUCCEEDED"),
                    (
                        f"the canary of {spec.image} did not pass (or never ran); production "
                        f"keeps {spec.baseline_image}"
                    ),
                ),
                (
                    f"parameters['promote'] != 'true' or {_status_is(STAGE_PROMOTE, 'SUCCEEDED')}",
                    f"promoting {spec.image} to production failed; its rollout was undone",
                ),
            ],
        ),
    ]


def _direct_stages(spec: ReleaseSpec, config: ReleaseConfig) -> list[dict[str, Any]]:
    manifests = [
        deployment(spec, config, "production"),
        service(spec, config),
        autoscaler(spec, config),
        disruption_budget(spec, config),
    ]
    deploy = _deploy_stage("1", [], STAGE_DEPLOY, config, manifests)
    if spec.baseline_digest is None:
        return [deploy]  # a first release has no earlier revision to undo to
    return [
        {**deploy, **_CONTINUE_ON_FAILURE},
        {
            **_manifest_stage("2", ["1"], "undoRolloutManifest", STAGE_UNDO, config, spec.name),
            "stageEnabled": {
                "type": "expression",
                "expression": _status_is(STAGE_DEPLOY, "FAILED_CONTINUE"),
            },
            **_CONTINUE_ON_FAILURE,
        },
        _verdict(
            "3",
            ["2"],
            [
                (
                    _status_is(STAGE_DEPLOY, "SUCCEEDED"),
                    f"deploying {spec.image} failed; its rollout was undone",
                )
            ],
        ),
    ]


def _description(spec: ReleaseSpec) -> str:
    models = ", ".join(
        f"{variant}={m['name']}/{m['version']}"
        for variant, m in sorted(spec.model_versions.items())
    )
    head = f"bentoship {spec.kind} release of {spec.name}: {spec.image_tag} ({models}; code {spec.code_version})."
    if spec.baseline_digest is None:
        return (
            f"{head} First release: there is no production image to compare against, so there is "
            f"no baseline/canary comparison; {spec.image} deploys directly to production."
        )
    if spec.skip_canary:
        return (
            f"{head} Rollback without canary analysis: {spec.image} replaces {spec.baseline_image} "
            "in production directly; a rollout that does not become stable is undone."
        )
    return (
        f"{head} Canary {spec.image} runs beside baseline {spec.baseline_image}; Kayenta compares "
        "them and the canary is promoted only if it passes. Canary and baseline are deleted "
        "either way; a failed promotion is undone."
    )


def pipeline(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, Any]:
    """The pipeline document `spin pipeline save --file` accepts."""
    canary = spec.mode == "canary"
    parameters = []
    if canary:
        parameters.append(
            {
                "name": "promote",
                "label": "Promote on a passing canary",
                "description": "false runs the canary analysis and cleans up without promoting",
                "default": "true",
                "required": True,
                "hasOptions": True,
                "options": [{"value": "true"}, {"value": "false"}],
                "pinned": True,
            }
        )
    return {
        "application": config.application,
        "name": config.pipeline_name(spec.name),
        "description": _description(spec),
        "keepWaitingPipelines": False,
        "limitConcurrent": True,
        "parameterConfig": parameters,
        # Declared so the image shows in Spinnaker, deliberately not bound to any stage or
        # trigger: clouddriver rewrites every container image of the same repository to a
        # bound artifact, whatever its digest, which would turn the baseline into the canary.
        "expectedArtifacts": [
            {
                "id": f"{spec.name}-image",
                "displayName": f"{spec.name} image",
                "matchArtifact": {
                    "type": "docker/image",
                    "name": spec.repository,
                    "reference": spec.image,
                },
                "defaultArtifact": {
                    "type": "docker/image",
                    "name": spec.repository,
                    "reference": spec.image,
                },
                "useDefaultArtifact": False,
                "usePriorArtifact": False,
            }
        ],
        "triggers": [],
        "stages": _canary_stages(spec, config) if canary else _direct_stages(spec, config),
    }


# --- rendering ------------------------------------------------------------------------------------


def render_documents(spec: ReleaseSpec, config: ReleaseConfig) -> dict[str, str]:
    """Validate, then build every release file in memory: relative path -> text."""
    validate_spec(spec)

    def as_yaml(doc: dict[str, Any]) -> str:
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)

    files = {
        "pipeline.json": json.dumps(pipeline(spec, config), indent=2) + "\n",
        "canary-config.json": json.dumps(canary_config(spec, config), indent=2) + "\n",
        "k8s/deployment.yaml": as_yaml(deployment(spec, config, "production")),
        "k8s/service.yaml": as_yaml(service(spec, config)),
        "k8s/hpa.yaml": as_yaml(autoscaler(spec, config)),
        "k8s/pdb.yaml": as_yaml(disruption_budget(spec, config)),
    }
    if spec.mode == "canary":
        files["k8s/deployment-canary.yaml"] = as_yaml(deployment(spec, config, "canary"))
        files["k8s/deployment-baseline.yaml"] = as_yaml(deployment(spec, config, "baseline"))
    if spec.openapi is not None:
        files["openapi.json"] = json.dumps(spec.openapi, indent=2, sort_keys=True) + "\n"
    return files


_RENDERED_FILES = (
    "pipeline.json",
    "canary-config.json",
    "openapi.json",
    "k8s/deployment.yaml",
    "k8s/deployment-canary.yaml",
    "k8s/deployment-baseline.yaml",
    "k8s/service.yaml",
    "k8s/hpa.yaml",
    "k8s/pdb.yaml",
)


def render_release(spec: ReleaseSpec, config: ReleaseConfig, outdir: Path) -> dict[str, Path]:
    """Write the release files into `outdir`; on any error nothing is written there."""
    files = render_documents(spec, config)
    outdir = outdir.resolve()
    stale = [outdir / rel for rel in _RENDERED_FILES if rel not in files]
    if outdir.exists() and not outdir.is_dir():
        raise ReleaseError(f"--out: {outdir} exists and is not a directory")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}-", dir=outdir.parent))
    try:
        for rel, text in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        written: dict[str, Path] = {}
        for rel in files:
            final = outdir / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, final)
            written[rel] = final
        for path in stale:  # e.g. canary manifests left by an earlier render into this folder
            path.unlink(missing_ok=True)
        return written
    except OSError as exc:
        raise ReleaseError(f"cannot write the release files into {outdir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
