"""The demo service's OpenAPI spec is the contract consumers read: valid OpenAPI 3, every
column typed with whether it is required and an example, response rows and error bodies
exactly as the service sends them, and named after the model and code versions it serves.

The spec comes from the real pipeline path (`build.plan` on a real MLflow store with the demo
models, which is what `bentoship openapi export --model` and the build use); the bodies it is
checked against come from the real Starlette app of services/ (models replaced by scorers).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openapi_spec_validator
import pytest
import yaml
from click.testing import CliRunner
from openapi_schema_validator import OAS30Validator

from pipeline.build.plan import PROJECT_ROOT, BuildRequest, Plan, plan, resolve_request
from pipeline.cli import cli
from pipeline.identity import code_version, openapi_sha256
from pipeline.models import registry
from pipeline.release.api_diff import diff_specs
from pipeline.release.api_spec import validate_spec
from pipeline.settings import Settings
from services.app import INLINE_BODY_BYTES, AppState, create_app
from services.config import ServiceConfig, Serving
from services.flavors import ModelOutput
from services.loading import LoadedModel
from services.openapi import build_spec
from services.predictor import Predictor
from services.schema import compile_schema, validate
from tests import servicekit
from tests.stores import store_settings, train_demo

AB = BuildRequest(control="demo-classifier@champion", treatment="demo-classifier@challenger")
_MLFLOW_TYPES = {
    "double": ("number", "double"),
    "float": ("number", "float"),
    "long": ("integer", "int64"),
    "integer": ("integer", "int32"),
    "boolean": ("boolean", None),
    "string": ("string", None),
}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A real SQLite MLflow store with the two demo versions."""
    settings = store_settings(tmp_path_factory.mktemp("demo-store"))
    train_demo(settings)
    return settings


@pytest.fixture(scope="module")
def demo_plan(demo_store: Settings, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    resolved = resolve_request(AB, demo_store, lambda _: None)
    return plan(resolved, demo_store, tmp_path_factory.mktemp("plan"), lambda _: None)


@pytest.fixture(scope="module")
def spec(demo_plan: Plan) -> dict[str, Any]:
    return demo_plan.openapi


@pytest.fixture(scope="module")
def config(demo_plan: Plan) -> ServiceConfig:
    return ServiceConfig.model_validate(demo_plan.config)


def inline(spec: dict[str, Any], node: Any) -> Any:
    """`node` with every local `$ref` replaced by its target (the spec has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline(spec, target)
        return {k: inline(spec, v) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(spec, v) for v in node]
    return node


def conforms(spec: dict[str, Any], schema: Any, instance: Any) -> None:
    """Raise if `instance` does not match `schema` under OpenAPI 3.0's schema dialect."""
    OAS30Validator(inline(spec, schema)).validate(instance)


def response_schema(spec: dict[str, Any], status: int) -> Any:
    responses = spec["paths"]["/predict"]["post"]["responses"]
    return responses[str(status)]["content"]["application/json"]["schema"]


# --- valid OpenAPI 3 ----------------------------------------------------------------------


def test_demo_spec_is_valid_openapi_3(spec: dict[str, Any]) -> None:
    openapi_spec_validator.validate(spec)  # the validator library, strictly
    validate_spec(spec, source="the demo spec")  # and what `openapi diff --validate` uses
    assert spec["openapi"] == "3.0.3"


def test_every_example_in_the_spec_matches_its_own_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("Row", "PredictRequest", "PredictionRow", "PredictResponse", "Error"):
        conforms(spec, schemas[name], schemas[name]["example"])
    for response in spec["paths"]["/predict"]["post"]["responses"].values():
        media = response["content"]["application/json"]
        if "example" in media:
            conforms(spec, media["schema"], media["example"])


# --- every column: type, required, example --------------------------------------------------


def test_every_feature_column_is_typed_required_and_has_an_example(
    spec: dict[str, Any], demo_plan: Plan
) -> None:
    control = demo_plan.infos[0]
    mlmodel = yaml.safe_load((control.path / "MLmodel").read_text())
    columns = json.loads(mlmodel["signature"]["inputs"])
    example = json.loads((control.path / "input_example.json").read_text())
    first = dict(zip(example["columns"], example["data"][0]))
    row = spec["components"]["schemas"]["Row"]
    assert len(columns) == 30  # the breast-cancer features
    assert set(row["properties"]) == {c["name"] for c in columns} | {"request_id"}
    assert row["additionalProperties"] is False
    for column in columns:
        prop = row["properties"][column["name"]]
        json_type, json_format = _MLFLOW_TYPES[column["type"]]
        assert prop["type"] == json_type and prop.get("format") == json_format, column
        assert (column["name"] in row["required"]) == column.get("required", True)
        assert prop["example"] == first[column["name"]]
        assert f"'{column['type']}'" in prop["description"]
    key = row["properties"]["request_id"]
    assert "request_id" not in row["required"]
    for value in ("user-42", 42, None):
        conforms(spec, key, value)


# --- responses and errors, as the service sends them ---------------------------------------


class _App:
    """The real Starlette app of services/ for `config`, called in-process through httpx."""

    def __init__(self, config: ServiceConfig, scorer: Any | None) -> None:
        state = AppState()
        if scorer is not None:
            models = {
                v.name: LoadedModel("sklearn", "test", config.feature_names,
                                    ModelOutput("classification", (0, 1)), scorer)
                for v in config.variants
            }
            state.activate(Predictor.from_config(config, models), None)
        self.app = create_app(config, state)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())


def _bodies(config: ServiceConfig, spec: dict[str, Any]) -> Iterator[tuple[str, httpx.Response]]:
    """One real response per documented situation of POST /predict."""
    row = spec["components"]["schemas"]["Row"]["example"]
    ok = _App(config, lambda m: np.tile([0.25, 0.75], (len(m), 1)))
    yield "200 rows", ok.request("POST", "/predict", json={"rows": [row, {**row, "request_id": 7}]})
    yield (
        "200 forced",
        ok.request(
            "POST", "/predict", json={"rows": [row]}, headers={"x-bentoship-variant": "treatment"}
        ),
    )
    yield "400 invalid_json", ok.request("POST", "/predict", content=b"{not json")
    yield (
        "413 too_many_rows",
        ok.request("POST", "/predict", json={"rows": [row] * (config.max_rows + 1)}),
    )
    yield "413 payload_too_large", ok.request("POST", "/predict", content=b" " * 10_000_000)
    yield (
        "422 invalid_input",
        ok.request("POST", "/predict", json={"rows": [{**row, "mean_radius": "big"}, {"x": 1}]}),
    )
    yield (
        "422 unknown variant",
        ok.request(
            "POST", "/predict", json={"rows": [row]}, headers={"x-bentoship-variant": "canary"}
        ),
    )
    broken = _App(config, lambda m: np.full((len(m), 2), np.nan))
    yield "500 model_failed", broken.request("POST", "/predict", json={"rows": [row]})
    yield "503 not_ready", _App(config, None).request("POST", "/predict", json={"rows": [row]})
    # A body above the inline limit goes to the model-call pool, with its deadline and bound:
    # one call stuck past its deadline takes the only slot, so the next one is refused.
    stuck = threading.Event()
    slow = _App(
        config.model_copy(update={"serving": Serving(model_timeout_s=0.05, max_model_calls=1)}),
        lambda m: (stuck.wait(5), np.tile([0.25, 0.75], (len(m), 1)))[1],
    )
    padded = b" " * (INLINE_BODY_BYTES + 1) + json.dumps({"rows": [row]}).encode()
    yield "503 model_timeout", slow.request("POST", "/predict", content=padded)
    yield "503 overloaded", slow.request("POST", "/predict", content=padded)
    stuck.set()


def test_responses_and_error_bodies_are_documented_exactly_as_sent(
    spec: dict[str, Any], config: ServiceConfig
) -> None:
    operation = spec["paths"]["/predict"]["post"]
    for situation, response in _bodies(config, spec):
        status = str(response.status_code)
        assert situation.startswith(status), (situation, status, response.text)
        assert status in operation["responses"], situation
        assert response.headers["content-type"] == "application/json"
        conforms(spec, response_schema(spec, response.status_code), response.json())
        if status != "200":
            code = response.json()["error"]
            assert f"`{code}`" in operation["responses"][status]["description"], situation


def test_error_statuses_and_rows_are_declared_precisely(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "422", "500", "503"} <= set(responses)
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "detail"] and error["additionalProperties"] is False
    problem = error["properties"]["detail"]["items"]
    assert problem["required"] == ["row", "field", "problem"]
    row = spec["components"]["schemas"]["PredictionRow"]
    assert row["required"] == ["prediction", "probabilities", "score", "variant", "model_version"]
    assert row["properties"]["prediction"]["enum"] == [0, 1]
    assert row["properties"]["probabilities"]["required"] == ["0", "1"]
    assert row["properties"]["variant"]["enum"] == ["control", "treatment"]
    # A string, not an enum of the versions served: a client generated from this release
    # still reads the rows of the next one.
    assert row["properties"]["model_version"]["type"] == "string"
    assert "enum" not in row["properties"]["model_version"]
    with pytest.raises(Exception, match="is not one of"):
        conforms(spec, spec["components"]["schemas"]["Error"], {"error": "oops", "detail": []})


# --- info: model versions and code version --------------------------------------------------


def test_info_names_the_model_versions_and_the_code_version(
    spec: dict[str, Any],
    demo_store: Settings,
) -> None:
    client = registry.client_for(demo_store.tracking_uri)
    v1 = registry.resolve(client, "demo-classifier/1")
    v2 = registry.resolve(client, "demo-classifier/2")
    code = code_version(PROJECT_ROOT).label
    info = spec["info"]
    assert info["title"] == "demo-classifier"
    assert info["version"] == f"ctl-v1.trt-v2.code-{code}"
    served = info["x-bentoship"]
    assert served["code_version"] == code
    assert [
        (v["name"], v["registered_name"], v["version"], v["run_id"]) for v in served["variants"]
    ] == [
        ("control", "demo-classifier", "1", v1.run_id),
        ("treatment", "demo-classifier", "2", v2.run_id),
    ]
    assert "control: demo-classifier version 1 (sklearn" in info["description"]
    assert "treatment: demo-classifier version 2 (xgboost" in info["description"]
    assert f"Service code {code}" in info["description"]


# --- `bentoship openapi export --model` ----------------------------------------------------


def test_export_from_model_refs_writes_the_spec_the_build_uses(
    demo_store: Settings,
    spec: dict[str, Any],
    tmp_path: Path,
) -> None:
    env = {"MLFLOW_TRACKING_URI": demo_store.tracking_uri, "BENTOSHIP_HOME": str(demo_store.home)}
    out = tmp_path / "spec.yaml"
    result = CliRunner().invoke(
        cli,
        [
            "openapi",
            "export",
            "--model",
            AB.control,
            "--treatment",
            str(AB.treatment),
            "-o",
            str(out),
        ],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text()) == spec
    assert f"sha256 {openapi_sha256(spec)}" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either IMAGE or --model"),
        (["img:tag", "--model", "demo-classifier/1"], "give either IMAGE or --model"),
        (["img:tag", "--treatment", "demo-classifier/2"], "only go with --model"),
        (["--model", "demo-classifier/1", "--treatment-weight", "5"], "needs --treatment"),
    ],
)
def test_export_needs_exactly_one_source(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["openapi", "export", *args])
    assert result.exit_code == 2
    assert message in result.output


# --- what a consumer's generated client relies on ------------------------------------------


def _variant(name: str, version: str, weight: int) -> dict[str, Any]:
    return {
        "name": name,
        "model_tag": f"demo-classifier:v{version}",
        "registered_name": "demo-classifier",
        "version": version,
        "run_id": f"r{version}",
        "flavor": "sklearn",
        "weight": weight,
    }


def _spec(variants: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    return build_spec(servicekit.make_config(variants, **overrides))


def test_new_model_versions_and_an_added_treatment_are_no_api_change() -> None:
    one = _spec([_variant("control", "1", 100)])
    ab = _spec(
        [_variant("control", "2", 90), _variant("treatment", "3", 10)],
        image_tag="ctl-v2.trt-v3.code-1a2b3c4",
    )
    for old, new in ((one, ab), (ab, one)):
        changes = [c for c in diff_specs(old, new) if c.path != "info.version"]
        assert [c for c in changes if c.kind == "breaking"] == []


def test_dropping_a_column_breaks_and_adding_an_optional_one_does_not() -> None:
    base = servicekit.make_config([_variant("control", "1", 100)])
    data = base.model_dump()
    dropped = copy.deepcopy(data)
    dropped["features"] = dropped["features"][:-1]
    added = copy.deepcopy(data)
    extra = {"name": "extra", "type": "double", "required": False, "example": 1.5}
    added["features"] = [*added["features"], extra]
    old = build_spec(base)
    breaking = diff_specs(old, build_spec(ServiceConfig.model_validate(dropped)))
    assert [(c.kind, c.path, c.message) for c in breaking if c.kind == "breaking"] == [
        ("breaking", "POST /predict request rows[].worst_area", "property removed")
    ]
    compatible = diff_specs(old, build_spec(ServiceConfig.model_validate(added)))
    assert ("compatible", "POST /predict request rows[].extra", "new optional property") in {
        (c.kind, c.path, c.message) for c in compatible
    }
    assert not [c for c in compatible if c.kind == "breaking"]


def test_an_integral_number_is_an_integer_routing_key(config: ServiceConfig) -> None:
    # JSON Schema (and so the spec's `integer`) counts 3.0 as an integer; so does the service.
    row = {f.name: 1.0 for f in config.features}
    batch = validate(
        {"rows": [{**row, "request_id": 3.0}, {**row, "request_id": 3}]}, compile_schema(config)
    )
    assert batch.keys == ["3", "3"]
