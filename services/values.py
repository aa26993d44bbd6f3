"""JSON values against column types: whether a parsed value fits a feature's type, and the
words a 4xx answer uses for what it got (`check_value`, `json_type_name`).

The request validation (`schema.py`, `frames.py`) and the configuration's examples
(`config.py`) share these rules; the OpenAPI document states the same ranges (`openapi.py`).
"""

from __future__ import annotations

import math

NUMERIC_TYPES: frozenset[str] = frozenset({"double", "float", "long", "integer"})
FLOAT32_MAX = 3.4028234663852886e38
_FLOAT64_MAX = 1.7976931348623157e308
_INT_RANGES = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}


def check_value(column_type: str, value: object) -> str | None:
    """Why ``value`` (parsed from JSON) does not fit ``column_type``, or None when it does.

    Booleans are never numbers and numbers never booleans; integer columns take integral
    floats such as ``3.0``; ``float`` (32-bit) columns refuse values that would overflow.
    """
    if isinstance(value, bool):
        fits = column_type == "boolean"
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if column_type in ("double", "float"):
            if column_type == "float" and abs(value) > FLOAT32_MAX:
                return "out of range for a 32-bit float"
            if abs(value) > _FLOAT64_MAX:
                return "out of range for a double"
            return None
        if column_type in _INT_RANGES:
            if isinstance(value, float):
                if not value.is_integer():
                    return "expected an integer, got a fraction"
                value = int(value)
            low, high = _INT_RANGES[column_type]
            return (
                None if low <= value <= high else f"out of range for {column_type} ({low}..{high})"
            )
        fits = False
    else:
        fits = isinstance(value, str) and column_type == "string"
    if fits:
        return None
    return f"expected {_EXPECTED[column_type]}, got {json_type_name(value)}"


_EXPECTED = {
    "double": "a number",
    "float": "a number",
    "long": "an integer",
    "integer": "an integer",
    "boolean": "a boolean",
    "string": "a string",
}


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
