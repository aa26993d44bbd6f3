"""JSON Schemas (OpenAPI 3.0 dialect) of the ``/predict`` bodies, and example rows.

Pure functions of the config, no BentoML: :func:`row_schema` types each configured feature
(required or nullable, with its example) and the routing key, :func:`request_schema` and
:func:`response_schema` wrap rows, :func:`error_schema` is every error body. ``openapi.py``
assembles them into the service's document; ``schema.py`` is what enforces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.config import Feature, ServiceConfig

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
    """An example row of the models' features (their input example)."""
    return {f.name: example_value(f.type, f.example) for f in config.features}


def example_request_row(config: ServiceConfig) -> dict[str, Any]:
    """An example row of what a caller sends: the hook's declared fields, else the features."""
    return {f.name: example_value(f.type, f.example) for f in config.request_fields}


def column_schema(column: Feature, what: str = "MLflow column type") -> dict[str, Any]:
    prop: dict[str, Any] = dict(_JSON_TYPES[column.type])
    prop["description"] = f"{what} '{column.type}'" + (
        "" if column.required else "; optional, null or absent means missing"
    )
    if not column.required:
        prop["nullable"] = True
    prop["example"] = example_value(column.type, column.example)
    return prop


def row_schema(config: ServiceConfig) -> dict[str, Any]:
    """JSON Schema of one input row: each request field typed, required or nullable, with an
    example, and the routing key."""
    fields = config.request_fields
    declared = fields is not config.features
    properties: dict[str, Any] = {
        f.name: column_schema(f, "declared by the preprocess hook, type" if declared
                              else "MLflow column type")
        for f in fields
    }
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
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
        "example": example_request_row(config),
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
        "example": {"rows": [example_request_row(config)]},
    }


def response_row_schema(config: ServiceConfig) -> dict[str, Any]:
    """One answer row: what the models answer (``config.output``), the hook's declared
    columns, the variant and the model version."""
    output = config.output
    properties: dict[str, Any] = {}
    example: dict[str, Any] = {}
    if output.task == "classification":
        classes = list(output.classes)
        integers = isinstance(classes[0], int)
        properties["prediction"] = {
            "type": "integer" if integers else "string",
            "enum": classes,
            "description": (
                f"The predicted class: {classes[1]!r} when its probability is at least "
                f"{config.threshold}, else {classes[0]!r}." if output.binary
                else "The class with the highest probability."
            ),
        }
        probability = {"type": "number", "format": "double", "minimum": 0, "maximum": 1}
        properties["probabilities"] = {
            "type": "object",
            "properties": {key: dict(probability) for key in output.keys},
            "required": list(output.keys),
            "additionalProperties": False,
            "description": "The probability of every class, keyed by the class label as a string.",
        }
        share = round(1 / len(classes), 4)
        example["prediction"] = classes[-1]
        example["probabilities"] = {key: share for key in output.keys}
        if output.binary:
            properties["score"] = {
                **probability,
                "description": f"The probability of class {classes[1]!r} (the positive class).",
            }
            example["score"] = share
    else:
        number = {"type": "number", "format": "double"}
        if output.targets == 1:
            properties["prediction"] = {**number, "description": "The predicted value."}
            example["prediction"] = 0.0
        elif output.target_names:
            names = list(output.target_names)
            properties["prediction"] = {
                "type": "object",
                "properties": {n: dict(number) for n in names},
                "required": names,
                "additionalProperties": False,
                "description": "The predicted value of each target.",
            }
            example["prediction"] = {n: 0.0 for n in names}
        else:
            properties["prediction"] = {
                "type": "array", "items": dict(number), "minItems": output.targets,
                "maxItems": output.targets,
                "description": f"The {output.targets} predicted values, in the model's order.",
            }
            example["prediction"] = [0.0] * output.targets
    if config.hooks is not None:
        for column in config.hooks.response:
            properties[column.name] = column_schema(column, "added by the postprocess hook, type")
            example[column.name] = example_value(column.type, column.example)
    properties["variant"] = {"type": "string", "enum": [v.name for v in config.variants]}
    properties["model_version"] = {
        "type": "string",
        "enum": sorted({v.version for v in config.variants}),
    }
    example.update(variant=config.control.name, model_version=config.control.version)
    required = [name for name in properties if name != "score" or output.binary]
    if config.hooks is not None:
        optional = {c.name for c in config.hooks.response if not c.required}
        required = [name for name in required if name not in optional]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "example": example,
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
    "model_timeout",
    "overloaded",
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
