"""The service's OpenAPI 3.0 document, built from the config alone (pure).

Served at ``/docs.json`` (replacing BentoML's, which knows nothing about a mounted app; the
Swagger UI at ``/`` reads it) and at ``/openapi.json``. The pipeline stores the same document
in the image (``/home/bentoship/bento/openapi.json``) and in the release ledger.

What a consumer's generated client types is kept stable across releases that change only
model versions: ``model_version`` is a string (the versions served are in its description and
in ``info``), and ``variant`` always lists both roles, ``control`` and ``treatment``, so a
client generated from a single-model release still reads an A/B release's rows.
"""

from __future__ import annotations

from typing import Any, get_args

from services.config import Flavor, ServiceConfig, Task
from services.json_schema import (
    ERROR_CODES,
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
    "422": "Rows, fields or a routing header fail validation, or the model cannot score a row "
    "(values outside what it computes with) (`invalid_input`); `detail` lists every problem.",
    "500": "A hook failed, or the model failed even on its own example (`preprocess_failed`, "
    "`postprocess_failed`, `model_failed`, `internal_error`).",
    "503": "Models not loaded and warmed up yet (`not_ready`), the model did not answer within "
    "the deadline (`model_timeout`), or every model-call slot is taken (`overloaded`): retry, "
    "preferably on another replica.",
}
# Error codes the routing layer answers with (404 and 405, same body shape).
_ROUTING_CODES = ("not_found", "method_not_allowed")
# Variant roles the pipeline configures; always listed so the enum does not change between a
# single-model release and an A/B release.
_ROLES = ("control", "treatment")
# What JSON numbers each column type accepts (services/values.py `check_value`).
_BOUNDS: dict[str, tuple[float, float]] = {
    "long": (-(2**63), 2**63 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "float": (-3.4028234663852886e38, 3.4028234663852886e38),
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
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF + "Error"},
                    "example": _error_example(status, config),
                }
            },
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
                "description": "Send every row to this variant (testing, debugging). "
                "An empty value counts as absent.",
                # The service treats an empty header as absent (proxies send such headers).
                "schema": {"type": "string", "enum": [*(v.name for v in config.variants), ""]},
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
                # What every variant answers, as the metrics label it: a canary's answer
                # metrics are rendered from it (pipeline/release/kayenta.py).
                "output": config.output.model_dump(mode="json"),
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
                "Row": _row(config),
                "PredictRequest": request_schema(config, _REF + "Row"),
                "PredictionRow": _prediction_row(config),
                "PredictResponse": _response(config),
                "Error": _error(),
                "Metadata": _metadata_schema(config),
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


def _error_example(status: str, config: ServiceConfig) -> dict[str, Any]:
    """A body as the service sends it with `status` (the codes of services/errors.py)."""
    rows = f"{config.max_rows + 1} rows sent; at most {config.max_rows} per request"
    code, row, field, text = {
        "400": ("invalid_json", None, None, "body is not valid JSON: unexpected character"),
        "413": ("too_many_rows", None, "rows", rows),
        "422": ("invalid_input", 0, config.request_fields[0].name, "required field is missing"),
        "500": ("model_failed", None, None, "model returned NaN or infinite scores"),
        "503": ("not_ready", None, None, "models are still loading"),
    }[status]
    return {"error": code, "detail": [{"row": row, "field": field, "problem": text}]}


def _row(config: ServiceConfig) -> dict[str, Any]:
    """One input row: every feature typed (with the range the service accepts), required or
    nullable, with an example; the routing key a string or an integer, or null."""
    schema = row_schema(config)
    properties = schema["properties"]
    for feature in config.request_fields:
        if feature.type in _BOUNDS:
            low, high = _BOUNDS[feature.type]
            properties[feature.name].update(minimum=low, maximum=high)
    key_field = config.routing.key_field
    key_header = config.routing.key_header
    header = f"the `{key_header}` header, else " if key_header else ""
    if key_field is not None and key_field not in [f.name for f in config.request_fields]:
        # OpenAPI 3.0 reads `nullable` only next to a `type`, so each branch carries it; anyOf,
        # because null matches both branches and oneOf would then refuse it.
        properties[key_field] = {
            "anyOf": [
                {"type": "string", "nullable": True},
                {"type": "integer", "nullable": True},
            ],
            "description": "Experiment key: rows with the same key always go to the same "
            "variant. A string, or an integer used as its decimal string; null or absent "
            f"means {header}a random variant.",
            "example": "user-42",
        }
    return schema


def _prediction_row(config: ServiceConfig) -> dict[str, Any]:
    schema = response_row_schema(config)
    properties = schema["properties"]
    names = [v.name for v in config.variants]
    served = ", ".join(
        f"{v.name}: {v.registered_name} version {v.version}" for v in config.variants
    )
    properties["variant"] = {
        "type": "string",
        "enum": [*names, *(r for r in _ROLES if r not in names)],
        "description": f"The variant that scored this row ({served}).",
    }
    properties["model_version"] = {
        "type": "string",
        "description": "The registered model version that scored this row; this release "
        f"serves {served}.",
        "example": config.control.version,
    }
    schema["additionalProperties"] = False
    return schema


def _response(config: ServiceConfig) -> dict[str, Any]:
    schema = response_schema(_REF + "PredictionRow")
    schema["properties"]["rows"].update(minItems=1, maxItems=config.max_rows)
    schema["additionalProperties"] = False
    schema["example"] = {"rows": [response_row_schema(config)["example"]]}
    return schema


def _error() -> dict[str, Any]:
    """The one error body: `error` a code of services/errors.py (or of a 404/405), `detail`
    every problem found."""
    schema = error_schema([*ERROR_CODES, *_ROUTING_CODES])
    schema["additionalProperties"] = False
    schema["properties"]["detail"]["items"]["additionalProperties"] = False
    schema["properties"]["detail"]["minItems"] = 1
    return schema


def _metadata_schema(config: ServiceConfig) -> dict[str, Any]:
    string = {"type": "string"}
    nullable_string = {"type": "string", "nullable": True}
    variant = {
        "type": "object",
        "properties": {
            "name": string,
            "model_tag": string,
            "registered_name": string,
            "version": string,
            "run_id": string,
            "flavor": {"type": "string", "enum": list(get_args(Flavor))},
            "weight": {"type": "integer", "minimum": 0, "maximum": 100},
            "loader": {
                **nullable_string,
                "description": "How the model was loaded; null until ready.",
            },
        },
        "required": [
            "name",
            "model_tag",
            "registered_name",
            "version",
            "run_id",
            "flavor",
            "weight",
            "loader",
        ],
    }
    feature = {
        "type": "object",
        "properties": {
            "name": string,
            "type": {
                "type": "string",
                "enum": ["double", "float", "long", "integer", "boolean", "string"],
            },
            "required": {"type": "boolean"},
            "example": {"description": "A value of the column's type, or null."},
        },
        "required": ["name", "type", "required", "example"],
    }
    return {
        "type": "object",
        "description": "What this service runs: the same facts as `info.x-bentoship`, plus readiness.",
        "properties": {
            "name": string,
            "code_version": string,
            "image_tag": string,
            "ready": {"type": "boolean"},
            "variants": {"type": "array", "items": variant},
            "features": {"type": "array", "items": feature},
            "routing": {
                "type": "object",
                "properties": {
                    "salt": string,
                    "key_field": nullable_string,
                    "key_header": nullable_string,
                    "override_header": nullable_string,
                },
                "required": ["salt", "key_field", "key_header", "override_header"],
            },
            "max_rows": {"type": "integer"},
            "threshold": {"type": "number"},
            "allow_pickle": {"type": "boolean"},
            "trusted_types": {"type": "array", "items": string},
            "output": {
                "type": "object",
                "description": "What the models answer: task, classes, targets.",
                "properties": {
                    "task": {"type": "string", "enum": list(get_args(Task))},
                    "classes": {"type": "array", "items": {"anyOf": [string, {"type": "integer"}]}},
                    "targets": {"type": "integer"},
                    "target_names": {"type": "array", "items": string},
                },
                "required": ["task", "classes", "targets", "target_names"],
            },
            "hooks": {
                "type": "object",
                "nullable": True,
                "description": "The team's hook module and the columns it declared; null: none.",
            },
        },
        "required": [
            "name",
            "code_version",
            "image_tag",
            "ready",
            "variants",
            "features",
            "routing",
            "max_rows",
            "threshold",
            "allow_pickle",
            "trusted_types",
            "output",
            "hooks",
        ],
    }
