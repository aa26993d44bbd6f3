"""services/openapi.py: a valid OpenAPI document that tells callers what a row is."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from services.config import ServiceConfig
from services.openapi import build_spec


def spec_for(config_data: dict[str, Any]) -> dict[str, Any]:
    config_data["features"] = [
        {"name": "mean_radius", "type": "double", "required": True, "example": 17.99},
        {"name": "age", "type": "long", "required": False, "example": 40},
        {"name": "smoker", "type": "boolean", "required": True},
    ]
    return build_spec(ServiceConfig.model_validate(config_data))


def test_spec_is_valid_openapi(config_data: dict[str, Any]) -> None:
    spec = spec_for(config_data)
    validate(spec)
    assert spec["openapi"] == "3.0.3"


def test_info_names_model_versions_and_code_version(config_data: dict[str, Any]) -> None:
    info = spec_for(config_data)["info"]
    assert info["title"] == "demo-classifier"
    assert info["version"] == "ctl-v1.trt-v2.code-1a2b3c4"
    assert "control: demo-classifier version 1 (sklearn, run r1, weight 90%)" in info["description"]
    assert (
        "treatment: demo-classifier version 2 (xgboost, run r2, weight 10%)" in info["description"]
    )
    assert "Service code 1a2b3c4" in info["description"]
    assert [v["version"] for v in info["x-bentoship"]["variants"]] == ["1", "2"]


def test_predict_documents_columns_responses_and_errors(config_data: dict[str, Any]) -> None:
    spec = spec_for(config_data)
    operation = spec["paths"]["/predict"]["post"]
    assert set(operation["responses"]) == {"200", "400", "413", "422", "500", "503"}
    for status in ("400", "413", "422", "500"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    schemas = spec["components"]["schemas"]
    row = schemas["Row"]
    assert row["properties"]["mean_radius"]["type"] == "number"
    assert row["properties"]["mean_radius"]["example"] == 17.99
    assert (
        row["properties"]["age"]["type"] == "integer"
        and row["properties"]["age"]["nullable"] is True
    )
    assert row["properties"]["smoker"]["type"] == "boolean"
    assert row["required"] == ["mean_radius", "smoker"]
    assert schemas["PredictRequest"]["properties"]["rows"]["maxItems"] == 1000
    assert schemas["PredictionRow"]["required"] == [
        "prediction",
        "probabilities",
        "score",
        "variant",
        "model_version",
    ]
    assert schemas["Error"]["required"] == ["error", "detail"]
    headers = {p["name"] for p in operation["parameters"]}
    assert headers == {"x-bentoship-key", "x-bentoship-variant"}
