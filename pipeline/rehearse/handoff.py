"""What a rendered handoff asks Spinnaker to do, read back from its files.

Only the files are read, never bentoship's own configuration: the rehearsal runs what was
handed off. From `pipeline.json`: the baseline and canary Deployments (their images by digest,
replicas, pod labels and annotations, environment) and the `kayentaCanary` stage (scopes, step,
score thresholds); `canary-config.json` as Kayenta stores it; `prometheus-scrape.yaml`'s
relabelling and scrape interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ReleaseError

TRACKS = ("baseline", "canary")
# The Deployment annotations naming each variant's model (pipeline/release/kubernetes.py).
MODEL_ANNOTATION = "bentoship.io/model-"


@dataclass(frozen=True)
class Arm:
    """One Deployment of the canary: its pods all run `image`."""

    track: str
    name: str
    namespace: str
    image: str
    replicas: int
    port: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    env: Mapping[str, str]
    models: tuple[tuple[str, str], ...] = ()  # (name, version) of its variants' models


@dataclass(frozen=True)
class StageScope:
    name: str
    control: str
    control_location: str
    experiment: str
    experiment_location: str
    step_seconds: int


@dataclass(frozen=True)
class Handoff:
    directory: Path
    arms: Mapping[str, Arm]
    canary_config: Mapping[str, Any]
    scopes: Mapping[str, StageScope]
    pass_score: float
    marginal_score: float
    step_seconds: int
    scrape_interval_seconds: int
    relabel_configs: tuple[Mapping[str, Any], ...]

    @property
    def application(self) -> str:
        return str(self.arms["canary"].labels.get("app", self.arms["canary"].name))


def _load(path: Path) -> Any:
    if not path.is_file():
        raise ReleaseError(f"{path.name} is not in {path.parent}: is it a rendered canary "
                           "release (`bentoship release` or `bentoship render`)?")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ReleaseError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from None


def _seconds(value: Any) -> int:
    text = str(value).strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return max(1, int(int(text[: -len(unit)]) * units[unit]))
    raise ReleaseError(f"prometheus-scrape.yaml: {value!r} is not a scrape interval")


def _arm(stage: Mapping[str, Any], track: str) -> Arm:
    deployments = [m for m in stage.get("manifests", []) if m.get("kind") == "Deployment"]
    if len(deployments) != 1:
        raise ReleaseError(f"stage {stage.get('name')!r} deploys {len(deployments)} Deployments, "
                           "expected one")
    deployment = deployments[0]
    pod = deployment["spec"]["template"]
    containers = pod["spec"]["containers"]
    container = containers[0]
    ports = [p for p in container.get("ports", []) if p.get("name") == "http"] or container.get(
        "ports", [])
    image = str(container["image"])
    if "@sha256:" not in image:
        raise ReleaseError(f"the {track} Deployment runs {image}, not an image by digest")
    return Arm(
        track=track,
        name=deployment["metadata"]["name"],
        namespace=deployment["metadata"].get("namespace") or stage.get("namespaceOverride", ""),
        image=image,
        replicas=int(deployment["spec"].get("replicas", 1)),
        port=int(ports[0]["containerPort"]) if ports else 3000,
        labels=dict(pod["metadata"].get("labels") or {}),
        annotations=dict(pod["metadata"].get("annotations") or {}),
        env={e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e},
        models=tuple(_model(v) for k, v in sorted(
            (deployment["metadata"].get("annotations") or {}).items())
            if k.startswith(MODEL_ANNOTATION)),
    )


def _model(text: str) -> tuple[str, str]:
    name, _, version = str(text).rpartition("/")
    return name, version


def read_handoff(directory: Path) -> Handoff:
    """The canary a rendered release describes; ReleaseError when it is not a canary release."""
    pipeline = _load(directory / "pipeline.json")
    stages = {s.get("name"): s for s in pipeline.get("stages", [])}
    analysis = next((s for s in pipeline.get("stages", []) if s.get("type") == "kayentaCanary"),
                    None)
    if analysis is None:
        raise ReleaseError(f"{directory / 'pipeline.json'} has no canary analysis stage "
                           "(a rollback or a release rendered without a baseline): nothing to "
                           "rehearse")
    arms = {}
    for track in TRACKS:
        stage = stages.get(f"Deploy {track}")
        if stage is None:
            raise ReleaseError(f"pipeline.json has no 'Deploy {track}' stage")
        arms[track] = _arm(stage, track)
    canary = analysis["canaryConfig"]
    scopes = {
        s["scopeName"]: StageScope(
            name=s["scopeName"], control=s["controlScope"],
            control_location=s.get("controlLocation", ""), experiment=s["experimentScope"],
            experiment_location=s.get("experimentLocation", ""),
            step_seconds=int(s.get("step", 60)),
        )
        for s in canary["scopes"]
    }
    scrape = _load(directory / "prometheus-scrape.yaml")["scrape_configs"][0]
    thresholds = canary.get("scoreThresholds") or {}
    return Handoff(
        directory=directory,
        arms=arms,
        canary_config=_load(directory / "canary-config.json"),
        scopes=scopes,
        pass_score=float(thresholds.get("pass", 95)),
        marginal_score=float(thresholds.get("marginal", 75)),
        step_seconds=min(s.step_seconds for s in scopes.values()),
        scrape_interval_seconds=_seconds(scrape.get("scrape_interval", "60s")),
        relabel_configs=tuple(scrape.get("relabel_configs") or ()),
    )
