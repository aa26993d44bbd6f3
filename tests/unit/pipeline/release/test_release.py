"""Release rendering: Kubernetes schemas, the Spinnaker DAG, the Kayenta config, digests only."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ReleaseConfig, load_release_config, parse_release_config
from pipeline.errors import ConfigError, PipelineError, ReleaseError
from pipeline.release.files import render_release
from pipeline.release.kayenta import (
    CANARY_METRIC_LABELS,
    CANARY_METRIC_NAMES,
    CANARY_SERIES,
    SCOPE_LABELS,
    canary_config,
    stage_scopes,
)
from pipeline.release.spec import ReleaseSpec

ROOT = Path(__file__).resolve().parents[4]
EXAMPLE = ROOT / "docs" / "example-release"
K8S_VERSION = "1.31.0"  # a Kubernetes minor version kubernetes-validate bundles schemas for
REPO = "127.0.0.1:5000/demo-classifier"
NEW = "sha256:5f5b1494f9702e43c3917b28747abd1c3f708d9b0f8f4031f7f031c7ab805999"
PROD = "sha256:5cda2d4db40fab0e8256f84b85415703486168dc2d29b07863d5c1995a45d222"

# The arguments docs/example-release was rendered with (spinnaker/README.md shows the command).
EXAMPLE_ARGS = [
    "render",
    "--name", "demo-classifier",
    "--image", f"{REPO}@{NEW}",
    "--baseline", f"{REPO}@{PROD}",
    "--control", "demo-classifier/2/0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f",
    "--treatment", "demo-classifier/3/9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "--tag", "ctl-v2.trt-v3.code-4e5f6a7",
    "--config", str(EXAMPLE / "bentoship.toml"),
    "--openapi", str(EXAMPLE / "openapi.json"),
]  # fmt: skip


def demo_spec(**changes: Any) -> ReleaseSpec:
    fields: dict[str, Any] = {
        "name": "demo-classifier",
        "repository": REPO,
        "digest": NEW,
        "baseline_digest": PROD,
        "model_versions": {
            "control": {"name": "demo-classifier", "version": "2", "run_id": "0c1d"},
            "treatment": {"name": "demo-classifier", "version": "3", "run_id": "9f8e"},
        },
        "code_version": "4e5f6a7",
        "image_tag": "ctl-v2.trt-v3.code-4e5f6a7",
        "openapi": answers_spec(),
        **changes,
    }
    return ReleaseSpec(**fields)


def answers_spec(**output: Any) -> dict[str, Any]:
    """The part of an image's OpenAPI document the canary config reads: what it answers."""
    answers = output or {"task": "classification", "classes": [0, 1]}
    return {"openapi": "3.0.3", "info": {"title": "demo-classifier", "version": "1",
                                         "x-bentoship": {"output": answers}}, "paths": {}}


@pytest.fixture
def rendered(tmp_path: Path) -> dict[str, Path]:
    return render_release(demo_spec(), ReleaseConfig(), tmp_path / "release")


def load(path: Path) -> Any:
    return (
        json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    )


def stages_by_name(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {stage["name"]: stage for stage in pipeline["stages"]}


def ancestors(pipeline: dict[str, Any], ref: str) -> set[str]:
    by_ref = {stage["refId"]: stage for stage in pipeline["stages"]}
    seen: set[str] = set()
    todo = list(by_ref[ref]["requisiteStageRefIds"])
    while todo:
        parent = todo.pop()
        if parent not in seen:
            seen.add(parent)
            todo.extend(by_ref[parent]["requisiteStageRefIds"])
    return seen


def all_manifests(rendered: dict[str, Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    for rel, path in rendered.items():
        if rel.startswith("k8s/"):
            yield rel, load(path)
    for stage in load(rendered["pipeline.json"])["stages"]:
        for manifest in stage.get("manifests", []):
            yield f"stage {stage['name']!r}", manifest


# --- Kubernetes manifests -------------------------------------------------------------------------


def test_every_manifest_is_valid_against_the_kubernetes_schemas(rendered: dict[str, Path]) -> None:
    kinds = set()
    for where, manifest in all_manifests(rendered):
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc}")
        kinds.add(manifest["kind"])
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_the_schema_check_rejects_a_broken_manifest(rendered: dict[str, Path]) -> None:
    manifest = load(rendered["k8s/deployment.yaml"])
    manifest["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_deployments_are_hardened_and_probed(rendered: dict[str, Path]) -> None:
    for rel in (
        "k8s/deployment.yaml",
        "k8s/deployment-canary.yaml",
        "k8s/deployment-baseline.yaml",
    ):
        pod = load(rendered[rel])["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] > int(
            container["lifecycle"]["preStop"]["exec"]["command"][1]
        )
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] == 10001
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        # The read-only image still needs scratch where BentoML and tempfile write.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {"/tmp", "/home/bentoship/bentoml", "/home/bentoship/.cache"} <= set(mounts)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert all("emptyDir" in volumes[name] for name in mounts.values())
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_tracks_have_distinct_names_labels_and_selectors(rendered: dict[str, Path]) -> None:
    names, selectors = set(), []
    for rel, track in [
        ("k8s/deployment.yaml", "production"),
        ("k8s/deployment-canary.yaml", "canary"),
        ("k8s/deployment-baseline.yaml", "baseline"),
    ]:
        deployment = load(rendered[rel])
        names.add(deployment["metadata"]["name"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["track"] == track and labels["app"] == "demo-classifier"
        assert deployment["spec"]["selector"]["matchLabels"] == {
            "app": "demo-classifier",
            "track": track,
        }
        selectors.append(deployment["spec"]["selector"]["matchLabels"])
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "3000"
    assert names == {"demo-classifier", "demo-classifier-canary", "demo-classifier-baseline"}
    # The Service reaches every track, so canary and baseline take real traffic.
    assert load(rendered["k8s/service.yaml"])["spec"]["selector"] == {"app": "demo-classifier"}
    hpa = load(rendered["k8s/hpa.yaml"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == "demo-classifier"
    assert "replicas" not in load(rendered["k8s/deployment.yaml"])["spec"]  # the HPA owns it
    assert (
        load(rendered["k8s/pdb.yaml"])["spec"]["selector"]["matchLabels"]["track"] == "production"
    )


# --- images by digest -----------------------------------------------------------------------------


def test_images_are_referenced_by_digest_everywhere_never_by_tag(rendered: dict[str, Path]) -> None:
    text = "\n".join(path.read_text() for path in rendered.values())
    mentions = re.findall(re.escape(REPO) + r"(.{0,72})", text)
    assert mentions
    for after in mentions:
        assert after.startswith(("@sha256:", '"')), f"{REPO}{after} is not a digest reference"
    assert ":ctl-v" not in text

    images: dict[str, set[str]] = {}
    for where, manifest in all_manifests(rendered):
        if manifest["kind"] == "Deployment":
            for container in manifest["spec"]["template"]["spec"]["containers"]:
                assert re.fullmatch(re.escape(REPO) + r"@sha256:[0-9a-f]{64}", container["image"])
                images.setdefault(manifest["metadata"]["name"], set()).add(container["image"])
    assert images == {
        "demo-classifier": {f"{REPO}@{NEW}"},
        "demo-classifier-canary": {f"{REPO}@{NEW}"},
        "demo-classifier-baseline": {f"{REPO}@{PROD}"},
    }
    pipeline = load(rendered["pipeline.json"])
    (artifact,) = pipeline["expectedArtifacts"]
    assert artifact["matchArtifact"]["type"] == "docker/image"
    assert artifact["defaultArtifact"]["reference"] == f"{REPO}@{NEW}"


# --- Spinnaker pipeline ---------------------------------------------------------------------------


def test_pipeline_is_what_spin_pipeline_save_accepts(rendered: dict[str, Path]) -> None:
    pipeline = load(rendered["pipeline.json"])
    for key in (
        "application",
        "name",
        "parameterConfig",
        "expectedArtifacts",
        "triggers",
        "stages",
    ):
        assert key in pipeline
    assert pipeline["application"] == "bentoship"
    assert pipeline["name"] == "demo-classifier-release"
    for stage in pipeline["stages"]:
        assert {"refId", "requisiteStageRefIds", "type", "name"} <= set(stage)
        assert isinstance(stage["refId"], str)
    for stage in pipeline["stages"]:
        if stage["type"] in ("deployManifest", "deleteManifest", "undoRolloutManifest"):
            assert stage["account"] == "kubernetes" and stage["cloudProvider"] == "kubernetes"
        if "stageEnabled" in stage:
            # Orca wraps the expression in ${...} itself.
            assert stage["stageEnabled"]["type"] == "expression"
            assert not stage["stageEnabled"]["expression"].startswith("${")
    (parameter,) = pipeline["parameterConfig"]
    assert parameter["name"] == "promote" and parameter["default"] == "true"


def test_pipeline_stages_form_a_dag_in_release_order(rendered: dict[str, Path]) -> None:
    pipeline = load(rendered["pipeline.json"])
    refs = [stage["refId"] for stage in pipeline["stages"]]
    assert len(refs) == len(set(refs))
    for stage in pipeline["stages"]:
        assert set(stage["requisiteStageRefIds"]) <= set(refs), stage["name"]

    # No cycles: Kahn's algorithm consumes every stage.
    indegree = {ref: 0 for ref in refs}
    children: dict[str, list[str]] = {ref: [] for ref in refs}
    for stage in pipeline["stages"]:
        for parent in stage["requisiteStageRefIds"]:
            indegree[stage["refId"]] += 1
            children[parent].append(stage["refId"])
    ready, ordered = [r for r, n in indegree.items() if n == 0], []
    while ready:
        ref = ready.pop()
        ordered.append(ref)
        for child in children[ref]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    assert sorted(ordered) == sorted(refs), "the stage graph has a cycle"

    stages = stages_by_name(pipeline)
    baseline, canary = stages["Deploy baseline"], stages["Deploy canary"]
    analysis, promote = stages["Canary analysis"], stages["Promote to production"]
    assert baseline["requisiteStageRefIds"] == [] and canary["requisiteStageRefIds"] == []
    assert analysis["type"] == "kayentaCanary"
    assert {baseline["refId"], canary["refId"]} <= ancestors(pipeline, analysis["refId"])
    assert analysis["refId"] in ancestors(pipeline, promote["refId"])
    undo = stages["Undo production rollout"]
    assert undo["type"] == "undoRolloutManifest"
    assert promote["refId"] in ancestors(pipeline, undo["refId"])
    for name in ("Delete canary", "Delete baseline"):
        assert stages[name]["type"] == "deleteManifest"
        assert analysis["refId"] in ancestors(pipeline, stages[name]["refId"])
    verdict = stages["Verdict"]
    assert verdict["type"] == "checkPreconditions"
    assert ancestors(pipeline, verdict["refId"]) == set(refs) - {verdict["refId"]}


def test_failure_path_continues_to_cleanup_and_fails_the_pipeline_at_the_end(
    rendered: dict[str, Path],
) -> None:
    stages = stages_by_name(load(rendered["pipeline.json"]))
    for name in ("Deploy baseline", "Deploy canary", "Canary analysis", "Promote to production"):
        assert stages[name]["failPipeline"] is False and stages[name]["continuePipeline"] is True
    assert "Canary analysis" in stages["Promote to production"]["stageEnabled"]["expression"]
    assert "'SUCCEEDED'" in stages["Promote to production"]["stageEnabled"]["expression"]
    assert "FAILED_CONTINUE" in stages["Undo production rollout"]["stageEnabled"]["expression"]
    assert stages["Delete canary"]["manifestName"] == "deployment demo-classifier-canary"
    assert stages["Delete baseline"]["manifestName"] == "deployment demo-classifier-baseline"
    assert "stageEnabled" not in stages["Delete canary"]  # cleanup always runs
    preconditions = stages["Verdict"]["preconditions"]
    assert all(p["failPipeline"] is True for p in preconditions)
    assert all(p["context"]["expression"].startswith("${") for p in preconditions)


def test_kayenta_stage_points_at_the_canary_config(rendered: dict[str, Path]) -> None:
    analysis = stages_by_name(load(rendered["pipeline.json"]))["Canary analysis"]
    config = load(rendered["canary-config.json"])
    assert analysis["analysisType"] == "realTime"
    canary = analysis["canaryConfig"]
    assert canary["canaryConfigId"] == config["id"]
    assert canary["lifetimeDuration"] == "PT45M"
    assert canary["canaryAnalysisIntervalMins"] == 15
    assert canary["scoreThresholds"] == {"marginal": 75, "pass": 95}
    assert canary["metricsAccountName"] == "prometheus"
    assert canary["storageAccountName"] == "kayenta-storage"
    scopes = {s["scopeName"]: s for s in canary["scopes"]}
    assert list(scopes) == ["default", "variant-control", "variant-treatment"]
    assert scopes["default"]["controlScope"] == 'track="baseline"'
    assert scopes["default"]["experimentScope"] == 'track="canary"'
    # The usual release: production serves no treatment, so the new model is judged against
    # production's control on the same traffic.
    assert scopes["variant-treatment"]["controlScope"] == 'track="baseline",variant="control"'
    assert scopes["variant-treatment"]["experimentScope"] == 'track="canary",variant="treatment"'
    for scope in scopes.values():
        assert scope["controlLocation"] == scope["experimentLocation"] == "bentoship"
        assert scope["step"] == 15
    used = {m["scopeName"] for m in config["metrics"]}
    assert used == set(scopes)


def test_a_variant_serving_productions_model_is_compared_with_that_model() -> None:
    production = {
        "control": {"name": "demo-classifier", "version": "1", "run_id": "aa"},
        "treatment": {"name": "demo-classifier", "version": "3", "run_id": "9f8e"},
    }
    spec = demo_spec(baseline_model_versions=production)
    by_name = {s["scopeName"]: s for s in stage_scopes(spec, ReleaseConfig())}
    # control v2 is new: production's control; treatment v3 already runs as production's treatment
    assert by_name["variant-control"]["controlScope"] == 'track="baseline",variant="control"'
    assert by_name["variant-treatment"]["controlScope"] == 'track="baseline",variant="treatment"'


# --- Kayenta canary config ------------------------------------------------------------------------


def contract_metrics() -> dict[str, set[str]]:
    """Contract 5 of docs/contracts.md: metric name -> its labels."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    section = text.split("## 5.", 1)[1].split("\n## ", 1)[0]
    metrics = {}
    for name, labels in re.findall(r"^\| `(\w+)` \| \w+ \| (.*) \|$", section, re.MULTILINE):
        metrics[name] = set(re.findall(r"`(\w+)`", labels))
    return metrics


ANSWERS = {
    "binary": {"task": "classification", "classes": [0, 1]},
    "multiclass": {"task": "classification", "classes": ["setosa", "versicolor", "virginica"]},
    "regression": {"task": "regression", "targets": 2, "target_names": ["price", "rent"]},
}


def test_canary_metrics_are_exactly_those_of_contract_5() -> None:
    contract = contract_metrics()
    assert set(CANARY_METRIC_NAMES) <= set(contract)
    assert set(CANARY_METRIC_LABELS) == set().union(*(contract[m] for m in CANARY_METRIC_NAMES))
    for series in CANARY_SERIES:
        assert any(series == m or series.startswith(f"{m}_") for m in CANARY_METRIC_NAMES)

    metrics = [
        metric
        for answers in ANSWERS.values()
        for metric in canary_config(demo_spec(openapi=answers_spec(**answers)),
                                    ReleaseConfig())["metrics"]
    ]
    used_series, used_labels = set(), set()
    for metric in metrics:
        query = metric["query"]
        assert query["type"] == query["serviceType"] == "prometheus"
        assert query["metricName"] in CANARY_METRIC_NAMES
        promql = query["customInlineTemplate"]
        assert promql.startswith("PromQL:")
        used_series |= set(re.findall(r"\b(bentoship_\w+)\{", promql))
        for selector in re.findall(
            r"\{([^{}]*)\}",
            promql.replace("${scope}", 'track="canary",variant="control"').replace(
                "${location}", "L"),
        ):
            used_labels |= set(re.findall(r"(\w+)\s*=~?", selector))
        used_labels |= set(re.findall(r"by \((\w+)\)", promql))
    assert used_series == set(CANARY_SERIES)
    assert used_labels <= set(CANARY_METRIC_LABELS) | set(SCOPE_LABELS) | {"le"}
    assert {"cause", "variant", "label", "target", "track"} <= used_labels


@pytest.mark.parametrize("answers", list(ANSWERS))
def test_what_each_variant_answers_is_judged_by_a_critical_metric(answers: str) -> None:
    config = canary_config(demo_spec(openapi=answers_spec(**ANSWERS[answers])), ReleaseConfig())
    for variant in ("control", "treatment"):
        judged = [m for m in config["metrics"] if m["scopeName"] == f"variant-{variant}"]
        critical = {m["name"] for m in judged if m["analysisConfigurations"]["canary"]["critical"]}
        expected = {
            "binary": {f"mean score {variant}"},
            "multiclass": {f"mean confidence {variant}"},
            "regression": {f"mean price {variant}", f"mean rent {variant}"},
        }[answers]
        assert critical == expected
        assert all(m["groups"] == ["predictions"] for m in judged)
    if answers == "multiclass":
        shares = [m["name"] for m in config["metrics"] if m["name"].startswith("share of")]
        assert "share of virginica treatment" in shares and len(shares) == 6


def test_a_canary_needs_to_know_what_the_image_answers(tmp_path: Path) -> None:
    spec = demo_spec(openapi={"openapi": "3.0.3", "info": {"title": "x", "version": "1"}})
    with pytest.raises(ReleaseError, match="does not say what the models answer.*--openapi"):
        render_release(spec, ReleaseConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_canary_config_has_kayenta_fields_and_weights_summing_to_100(
    rendered: dict[str, Path],
) -> None:
    config = load(rendered["canary-config.json"])
    for key in (
        "name",
        "applications",
        "judge",
        "metrics",
        "classifier",
        "configVersion",
        "templates",
    ):
        assert key in config
    assert config["judge"] == {"name": "NetflixACAJudge-v1.0", "judgeConfigurations": {}}
    weights = config["classifier"]["groupWeights"]
    assert sum(weights.values()) == 100
    assert config["classifier"]["scoreThresholds"] == {"marginal": 75, "pass": 95}
    by_name = {m["name"]: m for m in config["metrics"]}
    for metric in config["metrics"]:
        assert set(metric["groups"]) <= set(weights)
        analysis = metric["analysisConfigurations"]["canary"]
        assert {"direction", "critical", "nanStrategy", "mustHaveData", "effectSize"} <= set(
            analysis)
        assert analysis["direction"] in ("increase", "decrease", "either")
        assert analysis["nanStrategy"] == "remove"
        # A critical metric must have data: a canary that answers nothing does not pass.
        assert analysis["mustHaveData"] is analysis["critical"]
        sizes = analysis["effectSize"]
        assert sizes["measure"] == "meanRatio"
        if analysis["direction"] in ("increase", "either"):
            assert sizes["allowedIncrease"] > 1
            assert not analysis["critical"] or sizes["criticalIncrease"] >= sizes["allowedIncrease"]
        if analysis["direction"] in ("decrease", "either"):
            assert sizes["allowedDecrease"] < 1
            assert not analysis["critical"] or sizes["criticalDecrease"] <= sizes["allowedDecrease"]
        # Rate windows of 4 scrape intervals (15 s) at the defaults.
        assert "[60s]" in metric["query"]["customInlineTemplate"]
    assert {m["groups"][0] for m in config["metrics"]} == set(weights)
    errors = by_name["error ratio"]
    query = errors["query"]["customInlineTemplate"]
    # Answers the caller did not cause, over every answer counted once per request.
    assert 'bentoship_responses_total{cause=~"model|server",' in query
    assert "bentoship_requests_total" not in query
    assert errors["analysisConfigurations"]["canary"]["critical"] is True
    assert 'cause="caller"' in by_name["caller error ratio"]["query"]["customInlineTemplate"]
    assert by_name["caller error ratio"]["analysisConfigurations"]["canary"]["critical"] is False
    assert by_name["mean latency seconds"]["analysisConfigurations"]["canary"]["critical"]
    assert (
        "histogram_quantile(0.99" in by_name["p99 latency seconds"]["query"]["customInlineTemplate"]
    )
    for variant in ("control", "treatment"):
        score = by_name[f"mean score {variant}"]
        assert score["scopeName"] == f"variant-{variant}"
        assert score["analysisConfigurations"]["canary"]["direction"] == "either"


# --- release kinds --------------------------------------------------------------------------------


def test_first_release_deploys_directly_and_says_so(tmp_path: Path) -> None:
    files = render_release(demo_spec(baseline_digest=None), ReleaseConfig(), tmp_path)
    pipeline = load(files["pipeline.json"])
    assert [s["type"] for s in pipeline["stages"]] == ["deployManifest"]
    assert "First release" in pipeline["description"]
    assert "no baseline/canary comparison" in pipeline["description"]
    assert "k8s/deployment-canary.yaml" not in files and "k8s/deployment-baseline.yaml" not in files
    assert not (tmp_path / "k8s" / "deployment-canary.yaml").exists()


def test_rollback_skips_the_canary_but_undoes_a_failed_rollout(tmp_path: Path) -> None:
    spec = demo_spec(kind="rollback", skip_canary=True)
    pipeline = load(render_release(spec, ReleaseConfig(), tmp_path)["pipeline.json"])
    types = [s["type"] for s in pipeline["stages"]]
    assert types == ["deployManifest", "undoRolloutManifest", "checkPreconditions"]
    assert "kayentaCanary" not in types
    assert "Rollback" in pipeline["description"]


def test_a_direct_render_removes_canary_files_of_an_earlier_render(tmp_path: Path) -> None:
    render_release(demo_spec(), ReleaseConfig(), tmp_path)
    assert (tmp_path / "k8s" / "deployment-canary.yaml").exists()
    render_release(demo_spec(kind="rollback", skip_canary=True), ReleaseConfig(), tmp_path)
    assert not (tmp_path / "k8s" / "deployment-canary.yaml").exists()


def test_openapi_spec_is_copied_into_the_release(tmp_path: Path) -> None:
    openapi = answers_spec()
    files = render_release(demo_spec(openapi=openapi), ReleaseConfig(), tmp_path)
    assert load(files["openapi.json"]) == openapi


# --- bad input: the error names the key, nothing is written -----------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"canary": {"group_weights": {"errors": 50, "latency": 30, "predictions": 30}}},
         "release.canary", "sum to 100"),
        ({"canary": {"group_weights": {"errors": 100}}}, "release.canary", "allowed and required"),
        ({"canary": {"thresholds": {"marginal": 95, "pass": 95}}}, "release.canary.thresholds",
         "lower than pass"),
        ({"canary": {"thresholds": {"marginal": 75, "pass": 101}}}, "release.canary.thresholds.pass",
         "100"),
        ({"namespace": "ML-Serving"}, "release.namespace", "DNS-1123"),
        ({"namespace": "ml_serving"}, "release.namespace", "DNS-1123"),
        ({"account": "Prod"}, "release.account", "DNS-1123"),
        ({"application": "my-app"}, "release.application", "lowercase letters and digits"),
        ({"replicas": {"min": 2, "min_available": 2}}, "release.replicas", "min_available"),
        ({"canary": {"lifetime": "30 minutes"}}, "release.canary", "PT30M"),
        ({"canary": {"lifetime": 5, "interval_minutes": 10}}, "release.canary", "never run"),
        ({"resources": {"cpu_request": "4", "cpu_limit": "2"}}, "release.resources", "exceeds"),
        ({"canary": {"replica": 2}}, "release.canary.replica", "allowed keys here"),
    ],
)  # fmt: skip
def test_bad_release_config_names_the_key(table: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_release_config(table, source="bentoship.toml")
    message = str(info.value)
    assert message.startswith("bentoship.toml:")
    assert key in message and words in message, message


def test_load_release_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text('[release]\nnamespace = "Bad_NS"\n')
    with pytest.raises(ConfigError, match=r"(?s)bentoship\.toml: .*release\.namespace: .*DNS-1123"):
        load_release_config(path)
    path.write_text("[release\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_release_config(path)
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_release_config(tmp_path / "missing.toml")
    assert load_release_config(None) == ReleaseConfig()
    path.write_text("[build]\nname = 'x'\n")
    assert load_release_config(path) == ReleaseConfig()


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"digest": "ctl-v2.trt-v3.code-4e5f6a7"}, "digest"),
        ({"digest": "sha256:abc"}, "digest"),
        ({"repository": f"{REPO}:ctl-v2.trt-v3.code-4e5f6a7"}, "repository"),
        ({"baseline_digest": "latest"}, "baseline_digest"),
        ({"baseline_digest": NEW}, "baseline_digest"),
        ({"name": "Demo_Classifier"}, "name"),
        ({"image_tag": "latest"}, "image_tag"),
        ({"skip_canary": True}, "skip_canary"),
        ({"model_versions": {}}, "model_versions"),
    ],
)
def test_bad_spec_names_the_key_and_writes_nothing(
    tmp_path: Path, changes: dict[str, Any], key: str
) -> None:
    outdir = tmp_path / "release"
    with pytest.raises(ReleaseError, match=rf"^{key}: "):
        render_release(demo_spec(**changes), ReleaseConfig(), outdir)
    assert not outdir.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_render_leaves_an_earlier_release_untouched(tmp_path: Path) -> None:
    files = render_release(demo_spec(), ReleaseConfig(), tmp_path)
    before = {rel: path.read_text() for rel, path in files.items()}
    with pytest.raises(ReleaseError):
        render_release(demo_spec(digest="sha256:nope"), ReleaseConfig(), tmp_path)
    assert {rel: path.read_text() for rel, path in files.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "canary-config.json",
        "k8s",
        "openapi.json",
        "pipeline.json",
        "prometheus-scrape.yaml",
    ]


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_renders_the_example_release_exactly(tmp_path: Path) -> None:
    """docs/example-release is what this command renders; re-render it when this fails."""
    result = CliRunner().invoke(
        cli, [*EXAMPLE_ARGS, "--out", str(tmp_path), "--output", "json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "canary" and report["image"] == f"{REPO}@{NEW}"
    assert set(report["files"]) == {
        "pipeline.json", "canary-config.json", "k8s/deployment.yaml", "k8s/deployment-canary.yaml",
        "k8s/deployment-baseline.yaml", "k8s/service.yaml", "k8s/hpa.yaml", "k8s/pdb.yaml",
        "openapi.json", "prometheus-scrape.yaml",
    }  # fmt: skip
    for rel in report["files"]:
        assert (tmp_path / rel).read_text() == (EXAMPLE / rel).read_text(), (
            f"docs/example-release/{rel} is stale: re-render it (spinnaker/README.md)"
        )
    pipeline = load(tmp_path / "pipeline.json")
    assert pipeline["application"] == "bentoship" and pipeline["stages"][0]["account"] == "prod-k8s"
    assert stages_by_name(pipeline)["Canary analysis"]["canaryConfig"]["lifetimeDuration"] == "PT1H"


def test_cli_refuses_a_tag_as_usage_error(tmp_path: Path) -> None:
    args = [
        a if a != f"{REPO}@{NEW}" else f"{REPO}:ctl-v2.trt-v3.code-4e5f6a7" for a in EXAMPLE_ARGS
    ]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--image" in result.output and "digest" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_bad_config_exits_1_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bentoship.toml"
    config.write_text("[release.canary]\nthresholds = { marginal = 90, pass = 80 }\n")
    args = [*EXAMPLE_ARGS, "--config", str(config), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert str(config) in result.output and "release.canary.thresholds" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_checks_the_tag_against_the_model_versions(tmp_path: Path) -> None:
    args = [
        a if a != "ctl-v2.trt-v3.code-4e5f6a7" else "ctl-v1.trt-v3.code-4e5f6a7"
        for a in EXAMPLE_ARGS
    ]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "control v1" in result.output and "control v2" in result.output
    assert not (tmp_path / "out").exists()


def test_errors_are_pipeline_errors() -> None:
    assert issubclass(ReleaseError, PipelineError) and issubclass(ConfigError, PipelineError)


# --- outcomes, timeouts, the promote parameter ----------------------------------------------------

SECRET = "outcome-test-secret"
RELEASE_ID = "3a15cdcbcd2e4f5a8b9c0d1e2f3a4b5c"
OUTCOME_URL = "https://bentoship-hooks.internal/outcome"
_SPEL = re.compile(r"\s*(#stage\('[^']*'\)\.status\.toString\(\)|parameters\['promote'\]"
                   r"\.toString\(\)|'[^']*'|==|!=|\?|:|\(|\)|!|and\b|or\b)")


def spel(expression: str, statuses: dict[str, str], promote: str = "true") -> Any:
    """Evaluate the SpEL subset the pipeline uses: stage statuses, ternaries, and/or/!, ==."""
    text = expression.removeprefix("${").removesuffix("}")
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = _SPEL.match(text, pos)
        assert match, f"not in the subset: {text[pos:]!r}"
        tokens.append(match.group(1))
        pos = match.end()

    def ternary(i: int) -> tuple[Any, int]:
        value, i = either(i)
        if i < len(tokens) and tokens[i] == "?":
            yes, i = ternary(i + 1)
            assert tokens[i] == ":"
            no, i = ternary(i + 1)
            value = yes if value else no
        return value, i

    def chain(i: int, word: str, operand: Any) -> tuple[Any, int]:
        value, i = operand(i)
        while i < len(tokens) and tokens[i] == word:
            other, i = operand(i + 1)
            value = (value or other) if word == "or" else (value and other)
        return value, i

    def either(i: int) -> tuple[Any, int]:
        return chain(i, "or", both)

    def both(i: int) -> tuple[Any, int]:
        return chain(i, "and", compare)

    def compare(i: int) -> tuple[Any, int]:
        left, i = unary(i)
        if i < len(tokens) and tokens[i] in ("==", "!="):
            op = tokens[i]
            right, i = unary(i + 1)
            left = (left == right) if op == "==" else (left != right)
        return left, i

    def unary(i: int) -> tuple[Any, int]:
        token = tokens[i]
        if token == "!":
            value, i = unary(i + 1)
            return not value, i
        if token == "(":
            value, i = ternary(i + 1)
            assert tokens[i] == ")"
            return value, i + 1
        if token.startswith("#stage('"):
            return statuses.get(token.split("'")[1], "NOT_STARTED"), i + 1
        if token.startswith("parameters"):
            return promote, i + 1
        assert token.startswith("'"), token
        return token[1:-1], i + 1

    value, end = ternary(0)
    assert end == len(tokens)
    return value


def hooked(spec: ReleaseSpec, tmp_path: Path, config: ReleaseConfig | None = None) -> Any:
    from pipeline.release.outcome import outcome_hook

    hook = outcome_hook(SECRET, OUTCOME_URL, RELEASE_ID)
    return load(render_release(spec, config or ReleaseConfig(), tmp_path, hook)["pipeline.json"])


def reported(stage: dict[str, Any], statuses: dict[str, str]) -> tuple[str, Any]:
    """What the outcome stage posts for these stage statuses, as the receiver reads it."""
    from pipeline.release.outcome import SIGNATURE_HEADER, read_report

    body = {k: spel(v, statuses) if k == "outcome" else v for k, v in stage["payload"].items()}
    header = spel(stage["customHeaders"][SIGNATURE_HEADER], statuses)
    report = read_report(SECRET, {SIGNATURE_HEADER: header}, json.dumps(body).encode())
    assert report.release_id == RELEASE_ID
    return report.outcome, body


@pytest.mark.parametrize(
    ("statuses", "outcome"),
    [
        ({"Canary analysis": "SUCCEEDED", "Promote to production": "SUCCEEDED"}, "promoted"),
        ({"Canary analysis": "FAILED_CONTINUE", "Promote to production": "SKIPPED"}, "failed"),
        ({"Deploy canary": "FAILED_CONTINUE", "Canary analysis": "SKIPPED"}, "failed"),
        ({"Promote to production": "FAILED_CONTINUE", "Undo production rollout": "SUCCEEDED"},
         "rolled-back"),
        # The undo failed too: production is in no known state, not "rolled back".
        ({"Promote to production": "FAILED_CONTINUE",
          "Undo production rollout": "FAILED_CONTINUE"}, "failed"),
    ],
)
def test_the_canary_pipeline_reports_its_outcome_signed_for_that_outcome(
    tmp_path: Path, statuses: dict[str, str], outcome: str
) -> None:
    pipeline = hooked(demo_spec(), tmp_path)
    stages = stages_by_name(pipeline)
    report = stages["Report outcome"]
    assert (report["type"], report["method"], report["url"]) == ("webhook", "POST", OUTCOME_URL)
    assert report["failPipeline"] is False and report["continuePipeline"] is True
    # It runs after everything else, clean-up included, and before the verdict fails the run.
    assert ancestors(pipeline, report["refId"]) == (
        {s["refId"] for s in pipeline["stages"]} - {report["refId"], stages["Verdict"]["refId"]})
    assert stages["Verdict"]["requisiteStageRefIds"] == [report["refId"]]
    assert reported(report, statuses)[0] == outcome
    # promote=false is a dry run: the stage is skipped and the release stays handed-off.
    assert spel(report["stageEnabled"]["expression"], statuses, promote="false") is False
    assert spel(report["stageEnabled"]["expression"], statuses, promote="true") is True
    assert OUTCOME_URL in pipeline["description"] and RELEASE_ID in pipeline["description"]


def test_a_forged_outcome_does_not_verify(tmp_path: Path) -> None:
    from pipeline.errors import WebhookRejected
    from pipeline.release.outcome import SIGNATURE_HEADER, read_report

    report = stages_by_name(hooked(demo_spec(), tmp_path))["Report outcome"]
    failed = spel(report["customHeaders"][SIGNATURE_HEADER], {})  # the signature of "failed"
    forged = json.dumps({"release_id": RELEASE_ID, "outcome": "promoted"}).encode()
    with pytest.raises(WebhookRejected, match="bad signature"):
        read_report(SECRET, {SIGNATURE_HEADER: failed}, forged)
    other = json.dumps({"release_id": "0" * 32, "outcome": "failed"}).encode()
    with pytest.raises(WebhookRejected, match="bad signature"):
        read_report(SECRET, {SIGNATURE_HEADER: failed}, other)
    with pytest.raises(WebhookRejected, match="bad signature"):
        read_report("another secret", {SIGNATURE_HEADER: failed},
                    json.dumps({"release_id": RELEASE_ID, "outcome": "failed"}).encode())


@pytest.mark.parametrize(
    ("spec_changes", "statuses", "outcome"),
    [
        ({"baseline_digest": None}, {"Deploy production": "SUCCEEDED"}, "promoted"),
        ({"baseline_digest": None}, {"Deploy production": "FAILED_CONTINUE"}, "failed"),
        ({"kind": "rollback", "skip_canary": True}, {"Deploy production": "SUCCEEDED"},
         "promoted"),
        ({"kind": "rollback", "skip_canary": True},
         {"Deploy production": "FAILED_CONTINUE", "Undo production rollout": "SUCCEEDED"},
         "rolled-back"),
    ],
)
def test_direct_deploys_report_their_outcome_before_the_verdict(
    tmp_path: Path, spec_changes: dict[str, Any], statuses: dict[str, str], outcome: str
) -> None:
    pipeline = hooked(demo_spec(**spec_changes), tmp_path)
    stages = stages_by_name(pipeline)
    assert [s["type"] for s in pipeline["stages"]][-2:] == ["webhook", "checkPreconditions"]
    assert stages["Deploy production"]["continuePipeline"] is True  # the report still runs
    assert reported(stages["Report outcome"], statuses)[0] == outcome
    verdict = stages["Verdict"]["preconditions"][0]["context"]["expression"]
    assert spel(verdict, statuses) is (outcome == "promoted")


def test_without_the_secret_no_outcome_stage_and_the_description_says_how_to_mark(
    rendered: dict[str, Path],
) -> None:
    pipeline = load(rendered["pipeline.json"])
    assert "webhook" not in {s["type"] for s in pipeline["stages"]}
    assert "bentoship releases mark" in pipeline["description"]


def test_promote_is_compared_as_text_wherever_it_is_read(rendered: dict[str, Path]) -> None:
    stages = stages_by_name(load(rendered["pipeline.json"]))
    promote_if = stages["Promote to production"]["stageEnabled"]["expression"]
    verdict = stages["Verdict"]["preconditions"][1]["context"]["expression"]
    passed = {"Canary analysis": "SUCCEEDED"}
    for value, promotes in (("true", True), ("false", False)):
        assert spel(promote_if, passed, promote=value) is promotes
    # A promotion that was not asked for is no failure; one that was asked for and failed is.
    assert spel(verdict, {"Promote to production": "SKIPPED"}, promote="false") is True
    assert spel(verdict, {"Promote to production": "FAILED_CONTINUE"}, promote="true") is False
    assert "parameters['promote'] ==" not in json.dumps(stages)
    assert "parameters['promote'] !=" not in json.dumps(stages)


def test_deploy_promotion_and_undo_stages_time_out(tmp_path: Path) -> None:
    config = parse_release_config({"stage_timeout_minutes": 25})
    for spec in (demo_spec(), demo_spec(kind="rollback", skip_canary=True),
                 demo_spec(baseline_digest=None)):
        pipeline = load(render_release(spec, config, tmp_path / spec.mode)["pipeline.json"])
        timed = {s["name"]: s["stageTimeoutMs"] for s in pipeline["stages"]
                 if s.get("overrideTimeout") is True}
        expected = {s["name"] for s in pipeline["stages"]
                    if s["type"] in ("deployManifest", "undoRolloutManifest")}
        assert set(timed) == expected and expected
        assert set(timed.values()) == {25 * 60_000}
    default = load(render_release(demo_spec(), ReleaseConfig(), tmp_path / "d")["pipeline.json"])
    assert stages_by_name(default)["Promote to production"]["stageTimeoutMs"] == 10 * 60_000


def test_a_bad_outcome_url_or_timeout_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="outcome_url"):
        parse_release_config({"outcome_url": "bentoship-hooks/outcome"})
    with pytest.raises(ConfigError, match="stage_timeout_minutes"):
        parse_release_config({"stage_timeout_minutes": 0})


def test_the_static_scrape_job_is_what_a_default_release_renders() -> None:
    """spinnaker/prometheus-scrape.yaml, for operators, says what the canary queries rely on."""
    from pipeline.release.kayenta import scrape_config

    static = Path(__file__).parents[4] / "spinnaker" / "prometheus-scrape.yaml"
    assert yaml.safe_load(static.read_text()) == scrape_config(ReleaseConfig())
