"""Image layers, extras, integrity, labels, push by digest and idempotent rebuilds.

Against a real MLflow store, real BentoML, the real Docker engine and the real registry on
127.0.0.1:5000. Every image here goes to a repository of its own (`imgtest-<random>`), removed
again at the end, so that runs in parallel and other tests never see each other's tags. Code
changes are made in copies of `services/` (`BuildRequest.services_dir`), whose code version is
a hash of their content: edits elsewhere in the checkout do not move these tags.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import socket
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from click.testing import CliRunner

from pipeline import identity
from pipeline.build import bento, image, oci
from pipeline.build.base import BaseImage, lock_pins
from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import PROJECT_ROOT, BuildRequest, plan, resolve_request
from pipeline.cli import cli
from pipeline.errors import ArtifactError, ConfigError, PushError
from pipeline.models import demo
from pipeline.models.integrity import DIGEST_TAG
from pipeline.models.registry import client_for, ensure_experiment, fluent_uris
from pipeline.settings import Settings
from tests.stores import store_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "demo-classifier"


@dataclass(frozen=True)
class Store:
    settings: Settings
    versions: dict[str, str]  # what each version is: control, treatment, new_treatment, ...


def _log_xgboost(settings: Settings, requirements: list[str], run_name: str) -> str:
    """Register another XGBoost version of the demo model with these extra requirements."""
    import mlflow
    import xgboost as xgb
    from mlflow.models import infer_signature

    client = client_for(settings.tracking_uri, settings.registry_uri)
    with fluent_uris(settings.tracking_uri, settings.registry_uri):
        mlflow.set_experiment(
            experiment_id=ensure_experiment(client, demo.DEMO_EXPERIMENT, settings.artifact_root)
        )
        x_train, x_test, y_train, _ = demo._dataset()
        example = x_test.head(5)
        booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "seed": 3},
                            xgb.DMatrix(x_train, label=y_train), num_boost_round=10)
        with mlflow.start_run(run_name=run_name):
            info = mlflow.xgboost.log_model(
                booster, name="model", model_format="ubj",
                pip_requirements=[f"xgboost-cpu=={installed('xgboost-cpu')}", *requirements],
                signature=infer_signature(example, booster.predict(xgb.DMatrix(example))),
                input_example=example, registered_model_name=MODEL,
            )
        return str(info.registered_model_version)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """v1 sklearn control, v2 XGBoost treatment, v4 a retrained treatment, v5 needing
    `tabulate` (absent from the base), v6 pinning a numpy the base does not have."""
    settings = store_settings(tmp_path_factory.mktemp("image-store"))
    first = demo.train(settings.tracking_uri, artifact_root=settings.artifact_root)
    second = demo.train(settings.tracking_uri, artifact_root=settings.artifact_root)
    return Store(settings, {
        "control": first.control.version,
        "treatment": first.treatment.version,
        "new_treatment": second.treatment.version,
        "extras": _log_xgboost(settings, ["tabulate==0.9.0"], "extras"),
        "conflict": _log_xgboost(settings, ["numpy==1.26.4"], "conflict"),
    })


@pytest.fixture(scope="module")
def name(docker_client: Any) -> Iterator[str]:
    """A repository name of this module's own; its images and registry tags go at the end."""
    chosen = f"imgtest-{secrets.token_hex(3)}"
    yield chosen
    repository = f"127.0.0.1:5000/{chosen}"
    for found in docker_client.images.list(name=repository):
        for digest in found.attrs.get("RepoDigests") or []:
            _delete_manifest(repository, digest.split("@", 1)[1])
        docker_client.images.remove(found.id, force=True)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two copies of the service template: `a` as checked out, `b` with a code change."""
    root = tmp_path_factory.mktemp("services")
    copies = {}
    for key in ("a", "b"):
        copies[key] = root / key / "services"
        shutil.copytree(bento.SERVICES_DIR, copies[key],
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "bentoship.json"))
    with (copies["b"] / "routing.py").open("a") as f:
        f.write("\n# a code-only change: this comment\n")
    return copies


def _request(store: Store, name: str, services: Path, treatment: str = "treatment",
             **changes: Any) -> BuildRequest:
    return BuildRequest(control=f"{MODEL}/{store.versions['control']}",
                        treatment=f"{MODEL}/{store.versions[treatment]}", name=name,
                        services_dir=services, **changes)


@pytest.fixture(scope="module")
def first(store: Store, name: str, services: dict[str, Path], base_image: BaseImage) -> BuildResult:
    """The first build of control + treatment: smoke-tested and pushed."""
    return build(_request(store, name, services["a"], push=True), store.settings, echo=print)


@pytest.fixture(scope="module")
def code_change(store: Store, name: str, services: dict[str, Path],
                first: BuildResult) -> BuildResult:
    return build(_request(store, name, services["b"], smoke_test=False), store.settings,
                 echo=print)


def _layers(client: Any, result: BuildResult) -> list[image.Layer]:
    return image.layers(client, result.image_id)


def _of(layers: list[image.Layer], group: str) -> list[str]:
    return [layer.diff_id for layer in layers if layer.group == group]


# --- layers ---------------------------------------------------------------------------------------


def test_layers_are_base_then_one_per_model_then_code(
    first: BuildResult, docker_client: Any, base_image: BaseImage
) -> None:
    layers = _layers(docker_client, first)
    base_layers = docker_client.api.inspect_image(base_image.image_id)["RootFS"]["Layers"]
    groups = [layer.group for layer in layers]
    assert groups == ["base"] * len(base_layers) + ["models"] * 2 + ["code"]
    assert [layer.diff_id for layer in layers] == docker_client.api.inspect_image(
        first.image_id)["RootFS"]["Layers"]
    assert _of(layers, "base") == base_layers
    assert first.layer_sizes["models"] > 0 and first.layer_sizes["extras"] == 0


def test_code_only_rebuild_reuses_base_and_model_layers(
    first: BuildResult, code_change: BuildResult, docker_client: Any
) -> None:
    before, after = _layers(docker_client, first), _layers(docker_client, code_change)
    assert code_change.tag != first.tag and code_change.tag.startswith("ctl-v1.trt-v2.code-src-")
    assert [layer.diff_id for layer in after[:-1]] == [layer.diff_id for layer in before[:-1]]
    assert after[-1].group == "code" and after[-1].diff_id != before[-1].diff_id
    assert code_change.layer_sizes["code"] < 1_000_000


def test_new_treatment_version_reuses_base_and_control_layers(
    store: Store, name: str, services: dict[str, Path], first: BuildResult, docker_client: Any
) -> None:
    result = build(_request(store, name, services["a"], treatment="new_treatment",
                            smoke_test=False), store.settings, echo=print)
    before, after = _layers(docker_client, first), _layers(docker_client, result)
    assert _of(after, "base") == _of(before, "base")
    control = f"/v{store.versions['control']}/"
    assert [layer.diff_id for layer in after if control in layer.created_by] == [
        layer.diff_id for layer in before if control in layer.created_by]
    new = f"/v{store.versions['new_treatment']}/"
    (treatment_layer,) = [layer.diff_id for layer in after if new in layer.created_by]
    assert treatment_layer not in _of(before, "models")
    assert _of(after, "code") != _of(before, "code")


def test_extras_layer_holds_exactly_the_missing_package_and_is_reused(
    store: Store, name: str, services: dict[str, Path], first: BuildResult, docker_client: Any
) -> None:
    with_extras = build(_request(store, name, services["a"], treatment="extras"),
                        store.settings, echo=print)  # smoke-tested: the service still starts
    layers = _layers(docker_client, with_extras)
    assert [layer.group for layer in layers].count("extras") == 1
    assert _of(layers, "base") == _of(_layers(docker_client, first), "base")
    # Only tabulate: the base's numpy, pandas, ... are neither downloaded nor copied again.
    assert 0 < with_extras.layer_sizes["extras"] < 1_000_000
    listing = docker_client.containers.run(
        with_extras.image_id, entrypoint=["python", "-c"], remove=True, network_disabled=True,
        command=[("import os, tabulate; "
                  "print(sorted(os.listdir('/opt/extras')), tabulate.__file__)")],
    ).decode()
    assert "['bin', 'tabulate', 'tabulate-0.9.0.dist-info'] /opt/extras/tabulate/" in listing
    # The wheels went through a builder stage: neither they nor its paths are in the image.
    assert "/tmp/extras" not in json.dumps(docker_client.api.history(with_extras.image_id))

    code_change = build(_request(store, name, services["b"], treatment="extras",
                                 smoke_test=False), store.settings, echo=print)
    assert _of(_layers(docker_client, code_change), "extras") == _of(layers, "extras")


# --- refusals -------------------------------------------------------------------------------------


def test_conflicting_requirements_fail_before_anything_is_built(
    store: Store, services: dict[str, Path], docker_client: Any
) -> None:
    request = _request(store, "imgtest-conflict", services["a"], treatment="conflict")
    with pytest.raises(ConfigError) as refused:
        build(request, store.settings, echo=print)
    message = str(refused.value)
    assert "numpy" in message and "1.26.4" in message
    assert f"numpy=={lock_pins()['numpy']}" in message
    assert f"{MODEL}/{store.versions['conflict']}" in message
    assert docker_client.images.list(name="127.0.0.1:5000/imgtest-conflict") == []


def test_tampered_artifact_refuses_the_build_and_names_the_file(
    fresh_demo_store: Settings, services: dict[str, Path], docker_client: Any,
    base_image: BaseImage
) -> None:
    request = BuildRequest(control=f"{MODEL}/2", name="imgtest-tampered", push=True,
                           services_dir=services["a"])
    plan(resolve_request(request, fresh_demo_store, print), fresh_demo_store,
         fresh_demo_store.home / "first", print)  # the first look records the manifest
    (model_file,) = fresh_demo_store.artifact_root.rglob("model.ubj")
    model_file.write_bytes(model_file.read_bytes() + b"\0")

    with pytest.raises(ArtifactError, match=r"no longer match the manifest.*changed: model\.ubj"):
        build(request, fresh_demo_store, echo=print)
    repository = "127.0.0.1:5000/imgtest-tampered"
    assert docker_client.images.list(name=repository) == []
    assert oci.find(repository, resolve_request(request, fresh_demo_store, print).tag) is None


def test_registry_down_is_a_push_error_before_anything_is_built(
    store: Store, name: str, services: dict[str, Path], docker_client: Any
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = replace(store.settings, oci_registry=f"127.0.0.1:{port}")
    with pytest.raises(PushError, match=rf"127\.0\.0\.1:{port} is not reachable.*Nothing was "
                                        "recorded as released"):
        build(_request(store, name, services["b"], treatment="new_treatment", push=True), down,
              echo=print)
    assert docker_client.images.list(name=f"127.0.0.1:{port}/{name}") == []
    client = client_for(store.settings.tracking_uri)
    assert client.get_experiment_by_name("bentoship-releases") is None


# --- provenance -----------------------------------------------------------------------------------


def test_labels_carry_manifests_requirements_and_base_digest(
    first: BuildResult, store: Store, docker_client: Any, base_image: BaseImage
) -> None:
    labels = docker_client.images.get(first.reference).labels
    assert re.fullmatch(r"127\.0\.0\.1:5000/bentoship/base@sha256:[0-9a-f]{64}",
                        labels["io.bentoship.base"])
    assert labels["io.bentoship.base"] == base_image.ref
    assert re.fullmatch(r"[0-9a-f]{64}", labels["io.bentoship.requirements_sha256"])
    client = client_for(store.settings.tracking_uri)
    for variant in ("control", "treatment"):
        recorded = client.get_model_version(MODEL, store.versions[variant]).tags[DIGEST_TAG]
        assert labels[f"io.bentoship.model.{variant}.manifest_sha256"] == recorded
    config = docker_client.api.inspect_image(first.image_id)["Config"]
    assert config["User"] == "10001" and list(config["ExposedPorts"]) == ["3000/tcp"]


def test_history_labels_and_files_hold_no_host_paths_or_secrets(
    first: BuildResult, store: Store, docker_client: Any
) -> None:
    history = json.dumps(docker_client.api.history(first.image_id))
    config = json.dumps(docker_client.api.inspect_image(first.image_id)["Config"])
    for text in (history, config):
        for host in ("/work", "/tmp/", "/root", str(store.settings.home), str(PROJECT_ROOT)):
            assert host not in text
        assert not re.search(r"(?i)(token|passw(or)?d|secret|api[_-]?key)\s*[=:]", text)
    container = docker_client.containers.create(first.image_id)
    try:
        stream, _ = container.get_archive(identity.BENTO_DIR)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            for member in archive.getmembers():
                handle = archive.extractfile(member)
                content = handle.read() if handle is not None else b""
                for host in (str(store.settings.home), str(PROJECT_ROOT), "/tmp/pytest"):
                    assert host.encode() not in content, f"{member.name} names {host}"
    finally:
        container.remove(force=True)


# --- registry and idempotency (these remove local images: keep them last) ------------------------


def test_json_output_reports_tag_digest_labels_and_layer_sizes(
    first: BuildResult, store: Store, name: str, services: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTOSHIP_HOME", str(store.settings.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.settings.tracking_uri)
    result = CliRunner().invoke(cli, [
        "build", "--model", f"{MODEL}/{store.versions['control']}", "--treatment",
        f"{MODEL}/{store.versions['treatment']}", "--name", name,
        "--services-dir", str(services["a"]), "--output", "json", "--quiet",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet: nothing but the result
    out = json.loads(result.stdout)
    assert out["tag"] == first.tag and out["reused"] is True and out["reused_from"] == "local"
    assert out["digest"] == first.digest and out["pinned"] == f"{first.repository}@{first.digest}"
    assert out["labels"]["io.bentoship.base"].startswith("127.0.0.1:5000/bentoship/base@sha256:")
    assert set(out["layer_sizes"]) == {"base", "extras", "models", "code"}
    assert sum(out["layer_sizes"].values()) == out["size_bytes"]


def test_same_versions_and_code_are_found_locally_and_not_rebuilt(
    first: BuildResult, store: Store, name: str, services: dict[str, Path], docker_client: Any
) -> None:
    images_before = {i.id for i in docker_client.images.list(all=True)}
    lines: list[str] = []
    again = build(_request(store, name, services["a"]), store.settings, echo=lines.append)
    assert again.reused and again.reused_from == "local"
    assert again.image_id == first.image_id and again.digest == first.digest
    assert any("already exists locally" in line for line in lines)
    assert {i.id for i in docker_client.images.list(all=True)} == images_before


def test_pushed_digest_pulls_into_an_engine_without_the_image(
    first: BuildResult, docker_client: Any
) -> None:
    docker_client.images.remove(first.reference)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(first.image_id)
    docker_client.api.pull(first.pinned)
    pulled = docker_client.images.get(first.pinned)
    assert pulled.id == first.image_id  # the same config, so the same image
    request = urllib.request.Request(
        f"http://127.0.0.1:5000/v2/{first.name}/manifests/{first.tag}",
        headers={"Accept": ", ".join(oci.MANIFEST_TYPES)}, method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == first.digest


def test_same_build_in_the_registry_is_pulled_not_rebuilt(
    first: BuildResult, store: Store, name: str, services: dict[str, Path], docker_client: Any
) -> None:
    for found in docker_client.images.list(name=first.repository):
        if found.id == first.image_id:
            docker_client.images.remove(found.id, force=True)
    lines: list[str] = []
    again = build(_request(store, name, services["a"]), store.settings, echo=lines.append)
    assert again.reused and again.reused_from == "registry"
    assert again.digest == first.digest and again.image_id == first.image_id
    assert any("already exists in the registry" in line for line in lines)
    assert docker_client.images.get(first.reference).id == first.image_id  # tagged again


def _delete_manifest(repository: str, digest: str) -> None:
    registry, name = oci.split(repository)
    request = urllib.request.Request(f"{oci.base_url(registry)}/v2/{name}/manifests/{digest}",
                                     method="DELETE")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError:
        pass  # deletion is disabled in that registry: the tag stays, harmlessly
