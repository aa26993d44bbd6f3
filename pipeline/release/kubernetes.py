"""The Kubernetes manifests of a release: a Deployment per track, the Service, HPA and PDB.

A canary release runs baseline (production digest) and canary (new digest) Deployments side by
side behind the production Service, which selects every track; the autoscaler and the
disruption budget belong to production alone.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import ReleaseConfig
from pipeline.identity import BENTOML_HOME, PORT, UID
from pipeline.release.spec import ReleaseSpec


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


def production_manifests(spec: ReleaseSpec, config: ReleaseConfig) -> list[dict[str, Any]]:
    """What production is made of: its Deployment, the Service, the autoscaler, the budget."""
    return [
        deployment(spec, config, "production"),
        service(spec, config),
        autoscaler(spec, config),
        disruption_budget(spec, config),
    ]
