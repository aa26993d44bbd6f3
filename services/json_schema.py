"""JSON Schemas (OpenAPI 3.0 dialect) of the ``/predict`` bodies, and example rows.

Pure functions of the config, no BentoML: :func:`row_schema` types each configured feature
(required or nullable, with its example) and the routing key, :func:`request_schema` and
:func:`response_schema` wrap rows, :func:`error_schema` is every error body. ``openapi.py``
assembles them into the service's document; ``schema.py`` is what enforces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.config import ServiceConfig

_JSON_TYPES: dict[str, dict[str, str]] = {
    "double": {"type": "number", "format": "double"},
    "float": {"type": "number", "format": "float"},
    "long": {"type": "integer", "format": "int64"},
    "integer": {"type": "integer", "format": "int32"},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
}


def example_value(column_type: str, example: Any) -> Any:
    """The configured example, or a neutral value of the right type."""
    if example is not None:
        return example
    return {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": ""}[
        column_type
    ]


def example_row(config: ServiceConfig) -> dict[str, Any]:
    return {f.name: example_value(f.type, f.example) for f in config.features}


def row_schema(config: ServiceConfig) -> dict[str, Any]:
    """JSON Schema of one input row: each feature typed, required or nullable, with an example."""
    properties: dict[str, Any] = {}
    for feature in config.features:
        prop: dict[str, Any] = dict(_JSON_TYPES[feature.type])
        prop["description"] = f"MLflow column type '{feature.type}'" + (
            "" if feature.required else "; optional, null or absent means missing (NaN)"
        )
        if not feature.required:
            prop["nullable"] = True
        prop["example"] = example_value(feature.type, feature.example)
        properties[feature.name] = prop
    key_field = config.routing.key_field
    if key_field is not None and key_field not in properties:
        properties[key_field] = {
            "oneOf": [{"type": "string"}, {"type": "integer"}],
            "nullable": True,
            "description": "Experiment key: rows with the same key always go to the same variant.",
            "example": "user-42",
        }
    return {
        "type": "object",
        "properties": properties,
        "required": [f.name for f in config.features if f.required],
        "additionalProperties": False,
        "example": example_row(config),
    }


def request_schema(config: ServiceConfig, row_ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "items": {"$ref": row_ref},
                "minItems": 1,
                "maxItems": config.max_rows,
            }
        },
        "required": ["rows"],
        "additionalProperties": False,
        "example": {"rows": [example_row(config)]},
    }


def response_row_schema(config: ServiceConfig) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "prediction": {
                "type": "integer",
                "enum": [0, 1],
                "description": f"1 when score >= threshold ({config.threshold}), else 0",
            },
            "score": {
                "type": "number",
                "format": "double",
                "description": "Probability of the positive class (classifier) or the value (regressor).",
            },
            "variant": {"type": "string", "enum": [v.name for v in config.variants]},
            "model_version": {
                "type": "string",
                "enum": sorted({v.version for v in config.variants}),
            },
        },
        "required": ["prediction", "score", "variant", "model_version"],
        "example": {
            "prediction": 1,
            "score": 0.93,
            "variant": config.control.name,
            "model_version": config.control.version,
        },
    }


def response_schema(row_ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "items": {"$ref": row_ref},
                "description": "One row out per row in, in the same order.",
            }
        },
        "required": ["rows"],
    }


ERROR_CODES: tuple[str, ...] = (
    "invalid_json",
    "invalid_input",
    "too_many_rows",
    "payload_too_large",
    "preprocess_failed",
    "postprocess_failed",
    "model_failed",
    "not_ready",
    "internal_error",
)


def error_schema(codes: Sequence[str] = ERROR_CODES) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "error": {"type": "string", "enum": list(codes)},
            "detail": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "row": {
                            "type": "integer",
                            "nullable": True,
                            "description": "0-based row index",
                        },
                        "field": {"type": "string", "nullable": True},
                        "problem": {"type": "string"},
                    },
                    "required": ["row", "field", "problem"],
                },
            },
        },
        "required": ["error", "detail"],
        "example": {
            "error": "invalid_input",
            "detail": [
                {"row": 0, "field": "mean_radius", "problem": "expected a number, got a string"}
            ],
        },
    }
