"""`bentoship release` on real parts: MLflow store, BentoML, Docker engine, OCI registry, ledger."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.build import smoke
from pipeline.build.plan import BuildRequest
from pipeline.cli import cli
from pipeline.config import parse_release_config
from pipeline.errors import PushError
from pipeline.models.registry import client_for
from pipeline.release import handoff, ledger, marking
from pipeline.release.kayenta import CANARY_METRIC_NAMES
from pipeline.settings import Settings
from tests.stores import ALLOW_DIRTY, CHECKOUT_DIRTY, store_settings, train_demo

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AB = BuildRequest(control="demo-classifier@champion", treatment="demo-classifier@challenger",
                  name="release-flow")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = store_settings(tmp_path_factory.mktemp("release-store"))
    train_demo(settings)
    return settings


@pytest.fixture(scope="module")
def two_releases(store: Settings, docker_client, base_image, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("releases")
    config = parse_release_config({})
    first = handoff.release(AB, store, config, out / "first", echo=print,
                            allow_dirty=CHECKOUT_DIRTY)
    # What its pipeline (or someone) reports once it ran: only a promoted release is production.
    marking.mark_release(client_for(store.tracking_uri), first.record.release_id, "promoted",
                        by="test: the first release's pipeline")
    swapped = replace(AB, control="demo-classifier/2", treatment="demo-classifier/1")
    second = handoff.release(swapped, store, config, out / "second", echo=print,
                             allow_dirty=CHECKOUT_DIRTY)
    return first, second


def _ledger_ids(store: Settings) -> list[str]:
    return [r.release_id for r in ledger.list_releases(client_for(store.tracking_uri), limit=100)]


def test_first_release_deploys_directly_and_is_recorded(two_releases, store: Settings) -> None:  # type: ignore[no-untyped-def]
    first, _ = two_releases
    assert first.spec.mode == "direct" and first.spec.baseline_digest is None
    record = ledger.get_release(client_for(store.tracking_uri), first.record.release_id)
    assert record.image == first.spec.image
    assert record.image.startswith("127.0.0.1:5000/release-flow@sha256:")
    assert record.model_versions["treatment"]["version"] == "2"


def test_second_release_canaries_against_production(two_releases) -> None:  # type: ignore[no-untyped-def]
    first, second = two_releases
    assert second.spec.mode == "canary"
    assert second.spec.baseline_digest == first.spec.digest
    pipeline = json.loads(second.files["pipeline.json"].read_text())
    kinds = [stage["type"] for stage in pipeline["stages"]]
    assert "kayentaCanary" in kinds
    canary = (second.files["k8s/deployment-canary.yaml"]).read_text()
    baseline = (second.files["k8s/deployment-baseline.yaml"]).read_text()
    assert second.spec.digest in canary and first.spec.digest in baseline
    assert ":ctl-v" not in canary  # by digest, never by tag
    # The ledger says which release each one replaced: one successor per production.
    assert first.record.predecessor == "none"
    assert second.record.predecessor == first.record.release_id


def test_release_records_the_openapi_spec(two_releases) -> None:  # type: ignore[no-untyped-def]
    _, second = two_releases
    spec = json.loads(second.files["openapi.json"].read_text())
    assert "/predict" in spec["paths"]
    assert second.spec.image_tag in json.dumps(spec["info"])


def test_canary_metric_names_exist_on_the_service(two_releases, docker_client) -> None:  # type: ignore[no-untyped-def]
    _, second = two_releases
    running = smoke.start(docker_client, second.spec.image)
    try:
        row = smoke.example_row(running.container)
        for key in range(5):
            smoke.predict(running.url, [{**row, "request_id": f"user-{key}"}])
        with urllib.request.urlopen(f"{running.url}/metrics", timeout=10) as response:
            exposed = response.read().decode()
    finally:
        smoke.stop(running.container)
    # Every series the rendered canary config queries is one the running service exposes.
    config = json.loads(second.files["canary-config.json"].read_text())
    queried = {
        series
        for metric in config["metrics"]
        for series in re.findall(r"\b(bentoship_\w+)\{", metric["query"]["customInlineTemplate"])
    }
    assert queried and {m["query"]["metricName"] for m in config["metrics"]} <= set(
        CANARY_METRIC_NAMES)
    for series in queried:
        assert f"\n{series}{{" in exposed, series
    assert 'bentoship_responses_total{cause="none",status="200"} 5.0' in exposed


def test_bad_config_records_nothing_and_builds_nothing(
    store: Settings, two_releases, tmp_path: Path, docker_client  # type: ignore[no-untyped-def]
) -> None:
    bad = tmp_path / "bentoship.toml"
    bad.write_text("[release.canary]\nthresholds = {marginal = 90, pass = 75}\n")
    before = _ledger_ids(store)
    images_before = {i.id for i in docker_client.images.list()}
    result = CliRunner().invoke(
        cli,
        ["release", "--model", "demo-classifier@champion", "--config", str(bad),
         "--out", str(tmp_path / "out")],
        env={"MLFLOW_TRACKING_URI": store.tracking_uri, "BENTOSHIP_HOME": str(store.home)},
    )
    assert result.exit_code == 1, result.output
    assert "release.canary.thresholds" in result.output
    assert not (tmp_path / "out").exists()
    assert _ledger_ids(store) == before
    assert {i.id for i in docker_client.images.list()} == images_before


def test_push_failure_records_nothing(store: Settings, two_releases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = _ledger_ids(store)
    down = replace(store, oci_registry="127.0.0.1:5999")
    with pytest.raises(PushError, match="not reachable"):
        handoff.release(AB, down, parse_release_config({}), tmp_path / "out", echo=print,
                        allow_dirty=CHECKOUT_DIRTY)
    assert _ledger_ids(store) == before
    assert not (tmp_path / "out").exists()


def test_the_release_id_is_printed_and_its_pipeline_reports_the_outcome_to_the_receiver(
    store: Settings, two_releases, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from pipeline.flows.journal import DeliveryJournal
    from pipeline.flows.receiver import Receiver, ledger_marker
    from pipeline.release.outcome import SIGNATURE_HEADER

    secret = "release-flow-secret"
    receiver = Receiver(secret, DeliveryJournal(tmp_path / "journal.jsonl"),
                        lambda event: pytest.fail("no delivery is expected"),
                        mark=ledger_marker(store))
    config = tmp_path / "bentoship.toml"
    config.write_text(f'[release]\noutcome_url = "{receiver.url}/outcome"\n')
    result = CliRunner().invoke(
        cli,
        ["release", "--model", "demo-classifier/1", "--treatment", "demo-classifier/2",
         "--name", "release-flow", "--config", str(config), "--out", str(tmp_path / "out"),
         "--output", "json", *ALLOW_DIRTY],
        env={"MLFLOW_TRACKING_URI": store.tracking_uri, "BENTOSHIP_HOME": str(store.home),
             "BENTOSHIP_WEBHOOK_SECRET": secret},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    release_id = answer["release_id"]
    assert answer["release"]["status"] == "handed-off"
    assert answer["outcome_note"] == f"the pipeline reports its outcome to {receiver.url}/outcome"
    client = client_for(store.tracking_uri)
    assert ledger.get_release(client, release_id).outcome_reporting.startswith("webhook ")

    stages = {s["name"]: s for s in json.loads((tmp_path / "out" / "pipeline.json").read_text())
              ["stages"]}
    report = stages["Report outcome"]
    assert report["payload"]["release_id"] == release_id
    # The signature the stage sends when its outcome expression says "promoted".
    signed = re.search(r"== 'promoted' \? '([^']+)'", report["customHeaders"][SIGNATURE_HEADER])
    assert signed is not None
    body = json.dumps({"release_id": release_id, "outcome": "promoted",
                       "execution_id": "01HEXAMPLE"}).encode()
    receiver.start()
    try:
        def post(payload: bytes) -> tuple[int, dict[str, Any]]:
            request = urllib.request.Request(
                f"{receiver.url}/outcome", data=payload, method="POST",
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: signed[1]})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        assert post(body) == (200, {"status": "marked", "release_id": release_id,
                                    "outcome": "promoted", "previous": "handed-off"})
        assert post(body)[1]["status"] == "duplicate"  # Orca retrying, or a replay
        forged = body.replace(b'"promoted"', b'"failed"')
        code, refused = post(forged)
        assert (code, refused["error"]) == (401, "bad_signature")
    finally:
        receiver.stop(timeout_s=30)
    marked = ledger.get_release(client, release_id)
    assert marked.status == "promoted" and "01HEXAMPLE" in marked.outcome_by
    assert ledger.latest_successful(client, name="release-flow") == marked
