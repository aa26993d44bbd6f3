"""`bentoship rehearse` on real parts: built images, real containers, a real Prometheus.

Production serves the demo's control (a logistic regression) alone; each scenario's canary
image serves it as control and a treatment at 50%:

- good: the demo's XGBoost treatment; it must pass;
- error spike: an ONNX model that answers NaN for the ~14% of rows with the smoothest texture
  (the service answers them 422, cause "model");
- latency: the good treatment, with a preprocess hook that sleeps 20 ms per request;
- silently bad: XGBoost trained on flipped labels (HTTP 200, wrong answers), rehearsed through
  the CLI (`bentoship rehearse ... --output json`) and through `release --rehearse`.

The first three run side by side (one pod per arm, 40 requests/s, 75 s; more at once and the
machine's own contention is what the latency metrics measure); the release config scrapes every
second and steps at one second, so each judges 65 points. The rendered files are also checked
with promtool.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.build.builder import BuildResult, build
from pipeline.build.engine import connect
from pipeline.build.plan import BuildRequest
from pipeline.cli import cli
from pipeline.config import parse_release_config
from pipeline.models.demo import _dataset
from pipeline.models.registry import fluent_uris, settings_client
from pipeline.rehearse.handoff import read_handoff
from pipeline.rehearse.prometheus import expand
from pipeline.rehearse.run import Options, Rehearsal, rehearse
from pipeline.release.api_export import service_spec
from pipeline.release.files import render_release
from pipeline.release.spec import ReleaseSpec
from pipeline.settings import Settings
from tests.stores import ALLOW_DIRTY, promote, store_settings, train_demo

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NAME = "demo-classifier"
CONFIG = parse_release_config({"canary": {
    "scrape_interval_seconds": 1, "step_seconds": 1, "rate_window_seconds": 10,
    "interval_minutes": 1, "lifetime": "PT1M",
}})
OPTIONS = Options(duration_s=75, rate=40, replicas=1)
# A preprocess hook that sleeps 20 ms (hooks live in the repository: the code version).
SLOW_HOOK = Path(__file__).parents[1] / "fixtures" / "hooks" / "slow_20ms.py"


def _log(flavor: str, model: Any, example: Any, output: Any) -> str:
    from importlib.metadata import version as installed

    import mlflow
    from mlflow.models import infer_signature

    common = [f"{p}=={installed(p)}" for p in ("numpy", "pandas", "scipy")]
    with mlflow.start_run():
        if flavor == "xgboost":
            info = mlflow.xgboost.log_model(
                model, name="model", model_format="ubj",
                pip_requirements=[f"xgboost-cpu=={installed('xgboost-cpu')}", *common],
                signature=infer_signature(example, output), input_example=example,
                registered_model_name=NAME)
        else:
            info = mlflow.onnx.log_model(
                model, name="model", pip_requirements=mlflow.onnx.get_default_pip_requirements(),
                signature=infer_signature(example, output), input_example=example,
                registered_model_name=NAME)
    return str(info.registered_model_version)


def _flipped_xgboost(x_train: Any, y_train: Any, example: Any) -> str:
    """Trained on 1 - label: confident, and wrong."""
    import xgboost as xgb

    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": 7},
                        xgb.DMatrix(x_train, label=1 - y_train), num_boost_round=60)
    return _log("xgboost", booster, example, booster.predict(xgb.DMatrix(example)))


def _onnx_failing_on_smooth_textures(x_train: Any, y_train: Any, example: Any,
                                     cut: float) -> str:
    """A logistic regression whose probabilities are NaN where mean_texture < cut:
    probabilities + 0 * log(mean_texture - cut)."""
    import numpy as np
    import onnxruntime
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        x_train, y_train)
    proto = convert_sklearn(model, initial_types=[("input", DoubleTensorType(
        [None, x_train.shape[1]]))], options={id(model.steps[-1][1]): {"zipmap": False}})
    graph = proto.graph
    probabilities = graph.output[1].name
    for node in graph.node:
        node.output[:] = ["raw" if o == probabilities else o for o in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array([list(x_train.columns).index("mean_texture")]), "col"),
        numpy_helper.from_array(np.array(cut), "cut"),
        numpy_helper.from_array(np.array(0.0), "zero"),
    ])
    graph.node.extend([
        helper.make_node("Gather", ["input", "col"], ["texture"], axis=1),
        helper.make_node("Sub", ["texture", "cut"], ["above"]),
        helper.make_node("Log", ["above"], ["log"]),
        helper.make_node("Mul", ["log", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["raw", "nan_or_zero"], [probabilities]),
    ])
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    output = session.run([probabilities], {"input": example.to_numpy()})[0]
    assert np.isnan(session.run([probabilities], {"input": x_train.to_numpy()})[0]).any()
    return _log("onnx", proto, example, output)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The demo's v1 (control) and v2 (XGBoost), v3 (flipped labels), v4 (NaN on 10%)."""
    import mlflow

    settings = store_settings(tmp_path_factory.mktemp("rehearse-store"))
    train_demo(settings)
    x_train, x_test, y_train, _ = _dataset()
    # The build's smoke test posts the control's input example (the demo's first 5 test
    # rows): the ONNX model scores those, and fails on the ~14% of rows smoother than them.
    cut = float(x_test.head(5)["mean_texture"].min()) - 0.01
    example = x_train[x_train["mean_texture"] > cut].head(5)
    with fluent_uris(settings.tracking_uri, settings.registry_uri):
        mlflow.set_experiment("rehearse-scenarios")
        assert _flipped_xgboost(x_train, y_train, example) == "3"
        assert _onnx_failing_on_smooth_textures(x_train, y_train, example, cut) == "4"
    return settings


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every row of the demo dataset, one request each."""
    _, x_test, _, _ = _dataset()
    x_train, _, _, _ = _dataset()
    path = tmp_path_factory.mktemp("traffic") / "rows.jsonl"
    rows = [*x_train.to_dict(orient="records"), *x_test.to_dict(orient="records")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _release(result: BuildResult, baseline: BuildResult, outdir: Path) -> Path:
    assert result.digest is not None and baseline.digest is not None
    spec = ReleaseSpec(
        name=result.name, repository=result.repository, digest=result.digest,
        baseline_digest=baseline.digest, model_versions=result.models,
        code_version=result.tag.rsplit(".code-", 1)[1],
        image_tag=result.tag, kind="model", skip_canary=False,
        openapi=service_spec(connect(), result.reference),
        baseline_model_versions=baseline.models,
    )
    render_release(spec, CONFIG, outdir)
    return outdir


@pytest.fixture(scope="module")
def releases(store: Settings, docker_client: object, base_image: object,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rehearse-releases")
    request = BuildRequest(control=f"{NAME}/1", name="rehearse", push=True)
    production = build(request, store, echo=print)
    canaries = {
        "good": replace(request, treatment=f"{NAME}/2", treatment_weight=50),
        "error spike": replace(request, treatment=f"{NAME}/4", treatment_weight=50),
        "latency": replace(request, treatment=f"{NAME}/2", treatment_weight=50,
                           hooks=str(SLOW_HOOK)),
        "silently bad": replace(request, treatment=f"{NAME}/3", treatment_weight=50),
    }
    return {key: _release(build(req, store, echo=print), production, out / key.replace(" ", "-"))
            for key, req in canaries.items()}


RUNS = ("good", "error spike", "latency")  # side by side; "silently bad" runs through the CLI


@pytest.fixture(scope="module")
def rehearsals(releases: dict[str, Path], traffic: Path, store: Settings
               ) -> dict[str, list[Rehearsal]]:
    client = connect()
    options = replace(OPTIONS, traffic=traffic)

    def run(index: int, key: str) -> Rehearsal:
        return rehearse(read_handoff(releases[key]), replace(options, seed=index),
                        client=client, echo=lambda line: print(f"[{key} {index}] {line}"))

    # Six pods, three Prometheus and three load generators on two cores already.
    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        futures = [(key, pool.submit(run, i, key)) for i, key in enumerate(RUNS)]
        found: dict[str, list[Rehearsal]] = {}
        for key, future in futures:
            found.setdefault(key, []).append(future.result())
    for key, runs in found.items():
        for r in runs:
            print(f"{key}: {r.verdict.verdict} {r.verdict.score} ({r.verdict.reason}); "
                  f"{r.replay.summary()}; {r.seconds:.0f}s")
    return found


def _failed(r: Rehearsal) -> dict[str, str]:
    return {m.name: m.classification for m in r.verdict.metrics if m.classification != "Pass"}


def test_a_good_treatment_passes(rehearsals: dict[str, list[Rehearsal]]) -> None:
    (r,) = rehearsals["good"]
    assert r.verdict.verdict == "pass", (r.verdict.score, r.verdict.reason, _failed(r))
    assert sum(n for (_, s), n in r.replay.statuses.items() if s == 200) == sum(
        r.replay.sent.values())
    # Every metric was judged on data: up to 65 points a side at a 1 s step (a scrape a
    # loaded machine misses leaves a window without two samples, so a few fewer).
    assert all(len(m.control) >= 40 and len(m.experiment) >= 40
               for m in r.verdict.metrics), [(m.name, len(m.control), len(m.experiment))
                                             for m in r.verdict.metrics]


def test_an_error_spike_fails_on_the_error_ratio(
        rehearsals: dict[str, list[Rehearsal]]) -> None:
    (r,) = rehearsals["error spike"]
    assert r.verdict.verdict == "fail"
    errors = next(m for m in r.verdict.metrics if m.name == "error ratio")
    assert errors.classification == "High" and errors.failed_critically
    # The service answered the model's NaN rows 422, not 5xx: the caller's ratio is unmoved.
    assert {s for (_, s) in r.replay.statuses} == {200, 422}
    caller = next(m for m in r.verdict.metrics if m.name == "caller error ratio")
    assert caller.classification == "Pass"


def test_a_latency_regression_fails_on_mean_latency(
        rehearsals: dict[str, list[Rehearsal]]) -> None:
    (r,) = rehearsals["latency"]
    assert r.verdict.verdict == "fail"
    latency = next(m for m in r.verdict.metrics if m.name == "mean latency seconds")
    assert latency.classification == "High" and latency.failed_critically
    assert latency.effect_size is not None and latency.effect_size > 2


def test_the_rendered_queries_and_scrape_config_pass_promtool(
        releases: dict[str, Path], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "ci/setup.sh installs Debian's prometheus package"
    handoff = read_handoff(releases["good"])
    rules = []
    for i, metric in enumerate(handoff.canary_config["metrics"]):
        scope = handoff.scopes[metric["scopeName"]]
        for side, fragment, location in (("control", scope.control, scope.control_location),
                                         ("experiment", scope.experiment,
                                          scope.experiment_location)):
            rules.append({"record": f"bentoship:canary_{i}_{side}",
                          "expr": expand(metric["query"]["customInlineTemplate"], fragment,
                                         location)})
    (tmp_path / "rules.yaml").write_text(json.dumps({"groups": [{"name": "canary",
                                                                  "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The rendered scrape job is a valid Prometheus config. Debian's build leaves Kubernetes
    # discovery out, so its targets come as the rehearsal gives them: static, same relabelling.
    import yaml

    scrape = yaml.safe_load((releases["good"] / "prometheus-scrape.yaml").read_text())
    job = scrape["scrape_configs"][0]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:3000"]}]
    (tmp_path / "scrape.yaml").write_text(yaml.safe_dump(scrape))
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "scrape.yaml")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_cli_prints_the_table_and_the_report_path(
        releases: dict[str, Path], traffic: Path, store: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The silently bad model (HTTP 200, wrong answers) fails on its answers: exit 1, JSON with
    every metric, the report on disk; nothing left running."""
    monkeypatch.setenv("BENTOSHIP_HOME", str(store.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    report = tmp_path / "report.html"
    result = CliRunner().invoke(cli, [
        "rehearse", str(releases["silently bad"]), "--duration", "40s", "--rate", "40",
        "--replicas", "1", "--traffic", str(traffic), "--report", str(report),
        "--output", "json"])
    assert result.exit_code == 1, result.output
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "fail" and verdict["report"] == str(report)
    metrics = {m["name"]: m for m in verdict["metrics"]}
    treatment = metrics["mean score treatment"]
    assert treatment["classification"] == "Low" and treatment["failed_critically"]
    # The control, the same model on both arms, is not blamed; nothing answered an error.
    assert metrics["mean score control"]["classification"] == "Pass"
    for name in ("error ratio", "caller error ratio"):
        assert metrics[name]["experiment"]["mean"] == 0, metrics[name]
    assert "mean score treatment" in report.read_text()
    leftovers = connect().containers.list(all=True, filters={"label": "bentoship.rehearsal"})
    assert leftovers == []


def test_default_traffic_is_the_models_examples_and_evaluation_rows(
        store: Settings, tmp_path: Path) -> None:
    """Without --traffic: each model's input example and the rows logged as its run's
    `evaluation` input (the demo logs its held-out split), each row once."""
    from pipeline.rehearse import traffic as replayed

    _, x_test, _, _ = _dataset()
    rows = replayed.model_rows(settings_client(store), [(NAME, "1"), (NAME, "2")], tmp_path)
    held_out = x_test.to_dict(orient="records")
    assert len(rows) == len(held_out)  # the examples are the held-out split's first rows
    assert rows == [{k: r[k] for k in held_out[0]} for r in rows]
    assert sorted(json.dumps(r, sort_keys=True) for r in rows) == sorted(
        json.dumps(r, sort_keys=True) for r in held_out)


def test_release_with_rehearse_records_a_failed_canary_and_hands_nothing_off(
        releases: dict[str, Path], traffic: Path, store: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`release --rehearse`: production first (direct, nothing to rehearse), then a release
    whose treatment answers wrongly: exit 1, recorded as rehearsal_failed with its report, and
    the next release is still compared with the promoted production."""
    from pipeline.release import ledger

    monkeypatch.setenv("BENTOSHIP_HOME", str(store.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    config = tmp_path / "bentoship.toml"
    config.write_text("[release.canary]\nscrape_interval_seconds = 1\nstep_seconds = 1\n"
                      "rate_window_seconds = 10\ninterval_minutes = 1\nlifetime = \"PT1M\"\n"
                      "replicas = 1\n")
    common = ["--name", "rehearse", "--config", str(config), *ALLOW_DIRTY, "--output", "json"]
    first = CliRunner().invoke(cli, ["release", "--model", f"{NAME}/1", "--rehearse",
                                     "--out", str(tmp_path / "first"), *common])
    assert first.exit_code == 0, first.output
    assert "Nothing to rehearse" in first.output
    production = json.loads(first.stdout)["release_id"]
    promote(store, production)

    bad = CliRunner().invoke(cli, [
        "release", "--model", f"{NAME}/1", "--treatment", f"{NAME}/3",
        "--treatment-weight", "50", "--rehearse", "--rehearse-duration", "40s",
        "--rehearse-rate", "40", "--rehearse-traffic", str(traffic),
        "--out", str(tmp_path / "bad"), *common])
    assert bad.exit_code == 1, bad.output
    assert "failed its rehearsal" in bad.output and "mean score treatment" in bad.output
    assert "nothing was handed off or submitted" in bad.output
    client = settings_client(store)
    newest = ledger.list_releases(client, name="rehearse")[0]
    assert newest.status == "rehearsal_failed"
    assert newest.release_id != production
    assert ledger.latest_successful(client, name="rehearse").release_id == production
    assert (tmp_path / "bad" / "rehearsal" / "report.html").is_file()
