"""The service's OpenAPI 3.0 document, built from the config alone (pure).

Served at ``/docs.json`` (replacing BentoML's, which knows nothing about a mounted app) and
at ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from services.config import ServiceConfig
from services.schema import (
    error_schema,
    request_schema,
    response_row_schema,
    response_schema,
    row_schema,
)

OPENAPI_VERSION = "3.0.3"
_REF = "#/components/schemas/"

_ERRORS = {
    "400": "Body is not JSON (`invalid_json`).",
    "413": "More rows than `max_rows` (`too_many_rows`) or body too large (`payload_too_large`).",
    "422": "Rows, fields or a routing header fail validation (`invalid_input`); `detail` lists every problem.",
    "500": "A hook or model failed (`preprocess_failed`, `postprocess_failed`, `model_failed`, `internal_error`).",
    "503": "Models not loaded and warmed up yet (`not_ready`).",
}


def build_spec(config: ServiceConfig) -> dict[str, Any]:
    """A valid OpenAPI 3.0.3 document for the service described by ``config``."""
    variants = "; ".join(
        f"{v.name}: {v.registered_name} version {v.version} ({v.flavor}, run {v.run_id or 'unknown'}, weight {v.weight}%)"
        for v in config.variants
    )
    routing = config.routing
    description = (
        f"Predictions from {variants}. Service code {config.code_version}, image tag {config.image_tag}.\n\n"
        "Each row is routed to a variant by a sticky hash of its key "
        f"(row field `{routing.key_field}`, else header `{routing.key_header}`; "
        "keyless rows are assigned at random with the configured weights). "
        f"Header `{routing.override_header}` forces a variant."
    )
    error_responses = {
        status: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
        }
        for status, text in _ERRORS.items()
    }
    headers = []
    if routing.key_header:
        headers.append(
            {
                "name": routing.key_header,
                "in": "header",
                "required": False,
                "description": "Experiment key for rows that carry none: same key, same variant.",
                "schema": {"type": "string"},
            }
        )
    if routing.override_header:
        headers.append(
            {
                "name": routing.override_header,
                "in": "header",
                "required": False,
                "description": "Send every row to this variant (testing, debugging).",
                "schema": {"type": "string", "enum": [v.name for v in config.variants]},
            }
        )
    text_ok = {
        "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": config.name,
            "version": config.image_tag,
            "description": description,
            "x-bentoship": {
                "code_version": config.code_version,
                "image_tag": config.image_tag,
                "variants": [
                    {
                        "name": v.name,
                        "registered_name": v.registered_name,
                        "version": v.version,
                        "run_id": v.run_id,
                        "flavor": v.flavor,
                        "weight": v.weight,
                    }
                    for v in config.variants
                ],
            },
        },
        "servers": [{"url": "."}],
        "tags": [{"name": "predict"}, {"name": "infra"}],
        "paths": {
            "/predict": {
                "post": {
                    "tags": ["predict"],
                    "operationId": "predict",
                    "summary": f"Score up to {config.max_rows} rows",
                    "parameters": headers,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF + "PredictRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One output row per input row, in input order.",
                            "content": {
                                "application/json": {"schema": {"$ref": _REF + "PredictResponse"}}
                            },
                        },
                        **error_responses,
                    },
                }
            },
            "/metadata": {
                "get": {
                    "tags": ["infra"],
                    "operationId": "metadata",
                    "summary": "Model versions, weights, features and code version served",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {"schema": {"$ref": _REF + "Metadata"}}
                            },
                        }
                    },
                }
            },
            "/livez": {"get": {"tags": ["infra"], "summary": "Liveness", "responses": text_ok}},
            "/readyz": {
                "get": {
                    "tags": ["infra"],
                    "summary": "Readiness: 200 once every model loaded and answered a warm-up",
                    "responses": {**text_ok, "503": {"description": "Not ready yet"}},
                }
            },
            "/metrics": {
                "get": {"tags": ["infra"], "summary": "Prometheus metrics", "responses": text_ok}
            },
            "/docs.json": {
                "get": {"tags": ["infra"], "summary": "This document", "responses": _json_ok()}
            },
            "/openapi.json": {
                "get": {"tags": ["infra"], "summary": "This document", "responses": _json_ok()}
            },
        },
        "components": {
            "schemas": {
                "Row": row_schema(config),
                "PredictRequest": request_schema(config, _REF + "Row"),
                "PredictionRow": response_row_schema(config),
                "PredictResponse": response_schema(_REF + "PredictionRow"),
                "Error": error_schema(),
                "Metadata": {"type": "object", "additionalProperties": True},
            }
        },
    }


def _json_ok() -> dict[str, Any]:
    return {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
