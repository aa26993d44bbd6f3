"""services/schema.py (and json_schema.py): what a caller sees for good and bad /predict bodies."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from services.config import ServiceConfig
from services.errors import InvalidInputError, MalformedBodyError, ServiceError, TooManyRowsError
from services.json_schema import row_schema
from services.schema import (
    MAX_PROBLEMS,
    _checked,
    _fast_numeric,
    compile_schema,
    parse_body,
    validate,
)


def make_config(
    config_data: dict[str, Any], features: list[dict[str, Any]], **extra: Any
) -> ServiceConfig:
    return ServiceConfig.model_validate({**config_data, "features": features, **extra})


@pytest.fixture
def numeric(config_data: dict[str, Any]) -> ServiceConfig:
    return make_config(
        config_data,
        [
            {"name": "age", "type": "long", "example": 42},
            {"name": "income", "type": "double", "example": 5.5},
            {"name": "ratio", "type": "float", "required": False},
            {"name": "count", "type": "integer", "required": False},
        ],
        max_rows=5,
    )


@pytest.fixture
def mixed(config_data: dict[str, Any]) -> ServiceConfig:
    return make_config(
        config_data,
        [
            {"name": "age", "type": "long"},
            {"name": "member", "type": "boolean"},
            {"name": "city", "type": "string", "required": False},
        ],
    )


def error_body(body: Any, config: ServiceConfig) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ServiceError) as info:
        validate(body, compile_schema(config))
    return info.value.status, info.value.to_body()


def test_valid_rows_become_a_float_matrix_in_feature_order(numeric: ServiceConfig) -> None:
    body = {
        "rows": [
            {"income": 2.5, "age": 30, "ratio": 0.5, "count": 3, "request_id": "u1"},
            {"age": 31.0, "income": 1, "ratio": None, "request_id": 7},
            {"age": 32, "income": -1e300},
        ]
    }
    batch = validate(body, compile_schema(numeric))
    assert batch.matrix.dtype == np.float64
    np.testing.assert_array_equal(
        batch.matrix,
        [[30, 2.5, 0.5, 3], [31, 1, np.nan, np.nan], [32, -1e300, np.nan, np.nan]],
    )
    assert batch.keys == ["u1", "7", None]


def test_booleans_and_strings_keep_their_types(mixed: ServiceConfig) -> None:
    batch = validate(
        {"rows": [{"age": 1, "member": True, "city": "Oslo"}, {"age": 2, "member": False}]},
        compile_schema(mixed),
    )
    assert batch.matrix.dtype == object
    assert batch.matrix.tolist() == [[1.0, True, "Oslo"], [2.0, False, None]]


# --- the error shape, pinned ------------------------------------------------------------


def test_every_field_problem_is_listed_with_row_and_field(numeric: ServiceConfig) -> None:
    body = {
        "rows": [
            {"age": "30", "income": True, "ratio": 1e39, "count": 2.5, "colour": "red"},
            {"income": 1.0, "age": None},
            [1, 2],
            {"age": 1, "income": 2, "request_id": {"id": 1}},
        ]
    }
    assert error_body(body, numeric) == (
        422,
        {
            "error": "invalid_input",
            "detail": [
                {
                    "row": 0,
                    "field": "colour",
                    "problem": "unexpected field; not a feature of this model",
                },
                {"row": 0, "field": "age", "problem": "expected an integer, got a string"},
                {"row": 0, "field": "income", "problem": "expected a number, got a boolean"},
                {"row": 0, "field": "ratio", "problem": "out of range for a 32-bit float"},
                {"row": 0, "field": "count", "problem": "expected an integer, got a fraction"},
                {"row": 1, "field": "age", "problem": "required field is null"},
                {"row": 2, "field": None, "problem": "expected a row object, got an array"},
                {
                    "row": 3,
                    "field": "request_id",
                    "problem": "routing key must be a string or an integer, got an object",
                },
            ],
        },
    )


def test_missing_required_and_number_for_boolean(mixed: ServiceConfig) -> None:
    assert error_body({"rows": [{"member": 1, "city": 3}]}, mixed) == (
        422,
        {
            "error": "invalid_input",
            "detail": [
                {"row": 0, "field": "age", "problem": "required field is missing"},
                {"row": 0, "field": "member", "problem": "expected a boolean, got a number"},
                {"row": 0, "field": "city", "problem": "expected a string, got a number"},
            ],
        },
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            [{"age": 1}],
            [
                {
                    "row": None,
                    "field": None,
                    "problem": 'expected a JSON object {"rows": [...]}, got an array',
                }
            ],
        ),
        (
            {"rows": {"age": 1}},
            [
                {
                    "row": None,
                    "field": "rows",
                    "problem": "expected an array of row objects, got an object",
                }
            ],
        ),
        (
            {"rows": "x"},
            [
                {
                    "row": None,
                    "field": "rows",
                    "problem": "expected an array of row objects, got a string",
                }
            ],
        ),
        ({"rows": []}, [{"row": None, "field": "rows", "problem": "expected at least one row"}]),
        ({}, [{"row": None, "field": "rows", "problem": "required: an array of row objects"}]),
        (
            {"rows": [{"age": 1, "income": 1}], "inputs": []},
            [
                {
                    "row": None,
                    "field": "inputs",
                    "problem": "unexpected top-level key; only 'rows' is accepted",
                }
            ],
        ),
    ],
)
def test_body_shape_problems(
    numeric: ServiceConfig, body: Any, detail: list[dict[str, Any]]
) -> None:
    assert error_body(body, numeric) == (422, {"error": "invalid_input", "detail": detail})


def test_too_many_rows_is_413(numeric: ServiceConfig) -> None:
    rows = [{"age": 1, "income": 1.0}] * 6
    assert error_body({"rows": rows}, numeric) == (
        413,
        {
            "error": "too_many_rows",
            "detail": [
                {"row": None, "field": "rows", "problem": "6 rows sent; at most 5 per request"}
            ],
        },
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"  ",
        b"not json",
        b'{"rows": [{"age": NaN}]}',
        b'{"rows": [{"age": 1e999}]}',
        b"\xff\xfe",
    ],
)
def test_body_that_is_not_json_is_400(raw: bytes) -> None:
    with pytest.raises(MalformedBodyError) as info:
        parse_body(raw)
    assert info.value.status == 400
    body = info.value.to_body()
    assert body["error"] == "invalid_json"
    assert [set(p) for p in body["detail"]] == [{"row", "field", "problem"}]


def test_problems_are_capped(numeric: ServiceConfig) -> None:
    config = numeric.model_copy(update={"max_rows": 1000})
    _, body = error_body({"rows": [{"age": "x", "income": "y"}] * 100}, config)
    assert len(body["detail"]) == MAX_PROBLEMS + 1
    assert body["detail"][-1] == {
        "row": None,
        "field": None,
        "problem": "150 more problem(s) not shown",
    }


def test_integer_bounds(numeric: ServiceConfig) -> None:
    schema = compile_schema(numeric)
    validate({"rows": [{"age": 2**63 - 1, "income": 0, "count": 2**31 - 1}]}, schema)
    _, body = error_body({"rows": [{"age": 2**63, "income": 0, "count": -(2**31) - 1}]}, numeric)
    assert [p["problem"] for p in body["detail"]] == [
        "out of range for long (-9223372036854775808..9223372036854775807)",
        "out of range for integer (-2147483648..2147483647)",
    ]


def test_fast_path_never_accepts_what_the_checked_path_refuses(numeric: ServiceConfig) -> None:
    schema = compile_schema(numeric)
    rng = random.Random(7)
    good: list[Any] = [0, 1, -3, 2.5, 3.0, 7]
    bad: list[Any] = [1e39, 2**31, 2**63, True, False, None, "1", [1], {}]
    names = ["age", "income", "ratio", "count", "request_id", "extra"]
    accepted_fast = 0
    for _ in range(5000):
        rows = []
        for _ in range(rng.randint(1, 3)):
            rows.append(
                {
                    n: rng.choice(bad if rng.random() < 0.05 else good)
                    for n in names
                    if rng.random() < (0.97 if n not in ("request_id", "extra") else 0.1)
                }
            )
        fast = _fast_numeric(rows, schema)
        accepted_fast += fast is not None
        try:
            checked = _checked(rows, schema)
        except InvalidInputError:
            assert fast is None, rows
            continue
        if fast is not None:
            np.testing.assert_array_equal(fast.matrix, checked.matrix)
            assert fast.keys == checked.keys
    assert accepted_fast > 500


def test_too_many_rows_check_comes_before_row_checks(numeric: ServiceConfig) -> None:
    with pytest.raises(TooManyRowsError):
        validate({"rows": [1] * 6}, compile_schema(numeric))


# --- JSON Schema ------------------------------------------------------------------------


def test_row_schema_types_required_and_examples(numeric: ServiceConfig) -> None:
    schema = row_schema(numeric)
    props = schema["properties"]
    assert (
        props["age"]["type"] == "integer"
        and props["age"]["format"] == "int64"
        and props["age"]["example"] == 42
    )
    assert props["income"] == {
        **props["income"],
        "type": "number",
        "format": "double",
        "example": 5.5,
    }
    assert props["ratio"]["format"] == "float" and props["ratio"]["nullable"] is True
    assert props["count"]["format"] == "int32"
    assert "request_id" in props
    assert schema["required"] == ["age", "income"]
    assert schema["additionalProperties"] is False
    assert schema["example"] == {"age": 42, "income": 5.5, "ratio": 0.0, "count": 0}


def test_example_row_validates(numeric: ServiceConfig, mixed: ServiceConfig) -> None:
    for config in (numeric, mixed):
        example = row_schema(config)["example"]
        assert len(validate({"rows": [example]}, compile_schema(config))) == 1
        assert not any(isinstance(v, float) and math.isnan(v) for v in example.values())
