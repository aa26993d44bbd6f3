"""`bentoship build` against a real MLflow store, real BentoML, a real Docker engine and registry."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from dataclasses import replace

import pytest
from click.testing import CliRunner

from pipeline.build import smoke
from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import BuildRequest
from pipeline.cli import cli
from pipeline.errors import PushError, SmokeTestError
from pipeline.settings import Settings
from tests.integration.conftest import AB  # the request of the shared `ab_build` image

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_tag_names_both_model_versions_and_the_code_version(ab_build: BuildResult) -> None:
    assert re.fullmatch(r"ctl-v1\.trt-v2\.code-[0-9a-f]{7}(-dirty-[0-9a-f]{6})?", ab_build.tag)
    assert ab_build.repository == "127.0.0.1:5000/demo-classifier"


def test_labels_carry_provenance(ab_build: BuildResult, docker_client) -> None:  # type: ignore[no-untyped-def]
    labels = docker_client.images.get(ab_build.reference).labels
    for key in ("revision", "created", "source", "version"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.version"] == ab_build.tag
    assert labels["io.bentoship.model.control.name"] == "demo-classifier"
    assert labels["io.bentoship.model.control.version"] == "1"
    assert labels["io.bentoship.model.treatment.version"] == "2"
    assert len(labels["io.bentoship.model.treatment.run_id"]) == 32
    assert labels["io.bentoship.weights"] == "control=90,treatment=10"
    assert labels["io.bentoship.allow_pickle"] == "false"
    assert "/work" not in json.dumps(labels) and "/tmp" not in json.dumps(labels)


def test_image_runs_as_non_root(ab_build: BuildResult, docker_client) -> None:  # type: ignore[no-untyped-def]
    config = docker_client.images.get(ab_build.reference).attrs["Config"]
    assert config["User"] not in ("", "0", "root")
    assert list(config["ExposedPorts"]) == ["3000/tcp"]


def test_smoke_test_answered_one_row_per_example_row(ab_build: BuildResult) -> None:
    assert len(ab_build.example_rows_out) == len(ab_build.example_rows_in) == 5
    for row in ab_build.example_rows_out:
        assert row["variant"] in ("control", "treatment")
        assert 0.0 <= row["score"] <= 1.0 and row["prediction"] in (0, 1)


def test_push_reports_a_digest_the_registry_serves(ab_build: BuildResult) -> None:
    assert ab_build.digest and re.fullmatch(r"sha256:[0-9a-f]{64}", ab_build.digest)
    request = urllib.request.Request(
        f"http://127.0.0.1:5000/v2/demo-classifier/manifests/{ab_build.digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        method="HEAD",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == ab_build.digest


def test_same_versions_and_code_reuse_the_image(ab_build: BuildResult, demo_store: Settings) -> None:
    again = build(replace(AB, push=False), demo_store, echo=print)
    assert again.reused
    assert again.image_id == ab_build.image_id


def test_run_starts_the_pushed_digest_and_predicts(ab_build: BuildResult, docker_client) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        cli, ["run", ab_build.pinned, "--port", "3917", "--output", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    try:
        assert answer["url"] == "http://127.0.0.1:3917"
        assert answer["response"]["rows"][0]["model_version"] in ("1", "2")
    finally:
        docker_client.containers.get(answer["container"]).remove(force=True)


def test_container_never_ready_fails_the_build_and_tags_nothing(
    demo_store: Settings, docker_client, ab_build: BuildResult  # type: ignore[no-untyped-def]
) -> None:
    name = f"never-ready-{uuid.uuid4().hex[:8]}"  # nothing from an earlier run can match
    request = BuildRequest(control="demo-classifier/2", name=name, ready_timeout_s=1.0)
    containers_before = {c.id for c in docker_client.containers.list(all=True)}
    with pytest.raises(SmokeTestError, match=r"not ready after 1s.*Last log lines"):
        build(request, demo_store, echo=print)
    assert docker_client.images.list(name=f"127.0.0.1:5000/{name}") == []
    assert {c.id for c in docker_client.containers.list(all=True)} == containers_before


def test_registry_down_is_a_clear_error(demo_store: Settings, ab_build: BuildResult) -> None:
    down = replace(demo_store, oci_registry="127.0.0.1:5999")
    with pytest.raises(PushError, match="127.0.0.1:5999 is not reachable.*Nothing was recorded"):
        build(replace(AB, name="registry-down"), down, echo=print)


def test_no_docker_engine_fails_with_how_to_start_one(
    demo_store: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", demo_store.tracking_uri)
    monkeypatch.setenv("BENTOSHIP_HOME", str(demo_store.home))
    result = CliRunner().invoke(cli, ["build", "--model", "demo-classifier@champion"])
    assert result.exit_code == 1
    assert "ci/setup.sh" in result.output


def test_smoke_module_reads_the_example_from_the_image(ab_build: BuildResult, docker_client) -> None:  # type: ignore[no-untyped-def]
    running = smoke.start(docker_client, ab_build.reference)
    try:
        row = smoke.example_row(running.container)
        assert set(row) == {r for r in ab_build.example_rows_in[0]}
    finally:
        smoke.stop(running.container)
