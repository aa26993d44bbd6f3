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
    _FEW_VALUES,
    MAX_PROBLEMS,
    Batch,
    RowSchema,
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
    bad: list[Any] = [1e39, 2**31, 2**63, 2**64, True, False, None, "1", [1], [], {},
                      math.nan, math.inf]
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


def assert_fast_agrees(rows: list[Any], schema: RowSchema) -> Batch | None:
    """The fast path refuses (None) whatever the checked path refuses, and otherwise answers
    the checked path's matrix and keys exactly (or leaves the rows to it); for these rows and
    for a batch of them large enough that booleans are looked for by numpy."""
    many = rows * (_FEW_VALUES // len(schema.names) + 1)
    assert len(many) * len(schema.names) > _FEW_VALUES
    fast_many = _agreeing(many, schema)
    fast = _agreeing(rows, schema)
    assert (fast is None) == (fast_many is None), rows
    return fast


def _agreeing(rows: list[Any], schema: RowSchema) -> Batch | None:
    fast = _fast_numeric(rows, schema)
    try:
        checked = _checked(rows, schema)
    except InvalidInputError:
        assert fast is None, rows
        return None
    if fast is not None:
        assert fast.matrix.dtype == checked.matrix.dtype == np.float64
        np.testing.assert_array_equal(fast.matrix, checked.matrix)
        assert fast.keys == checked.keys
    return fast


TRICKY_VALUES: list[Any] = [
    True, False, None, "1", "1.5", "", math.nan, math.inf, -math.inf, [1], [], [[1]], {},
    {"a": 1}, 0, 1, 0.0, 1.0, -0.0, 3.0, 2.5, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
    2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30, 1e39,
    -1e39, 3.4e38, 1e300, 5e-324,
]


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=repr)
@pytest.mark.parametrize("column", ["age", "income", "ratio", "count"])
def test_fast_path_agrees_on_a_tricky_value(
    numeric: ServiceConfig, column: str, value: Any
) -> None:
    schema = compile_schema(numeric)
    good = {"age": 4, "income": 0.25, "ratio": 1.5, "count": 2}
    for others in ({}, {"age": 7.0, "income": 3, "count": 0}):
        rows = [{**good, **others}, {**good, **others, column: value}]
        assert_fast_agrees(rows, schema)
        assert_fast_agrees([row for row in reversed(rows)], schema)


@pytest.mark.parametrize(
    "value", [0, 1, 0.0, 1.0, -0.0, 2**53 + 1, 2**62, -(2**63), 1e300, -1e300, 5e-324],
    ids=repr,
)
def test_fast_path_takes_clean_numbers(numeric: ServiceConfig, value: Any) -> None:
    schema = compile_schema(numeric)
    rows = [{"age": 1, "income": value, "ratio": 0.5, "count": 0}, {"age": 2, "income": 1.5,
                                                                   "ratio": 1, "count": 1}]
    assert assert_fast_agrees(rows, schema) is not None


def test_fast_path_takes_rows_with_and_without_keys(config_data: dict[str, Any],
                                                    numeric: ServiceConfig) -> None:
    row = {"age": 1, "income": 2.0, "ratio": 0.5, "count": 1}
    rows = [row, {**row, "request_id": "k"}, {**row, "request_id": 7}, {**row, "request_id": None}]
    assert assert_fast_agrees(rows, compile_schema(numeric)) is not None
    keyed = make_config(
        config_data,
        [{"name": "request_id", "type": "long"}, {"name": "income", "type": "double"}],
    )
    keyed_rows = [{"request_id": 3, "income": 0.5}, {"request_id": -4, "income": 1}]
    assert assert_fast_agrees(keyed_rows, compile_schema(keyed)) is not None


@pytest.mark.parametrize(
    "rows",
    [
        [{"age": 1, "income": 2.0, "ratio": 0.5}],  # an optional feature missing
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1, "extra": 1}],
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1, "request_id": "k", "extra": 1}],
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1, "request_id": "k"},
         {"age": 1, "income": 2.0, "ratio": 0.5, "extra": 1}],  # the same field count in all
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1}, {}],
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1}, 1],
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1}, [1, 2.0, 0.5, 1]],
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1}, "row"],
        [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1}, None],
        *(
            [{"age": 1, "income": 2.0, "ratio": 0.5, "count": 1, "request_id": key}]
            for key in ["k", "", 7, -7, 2**70, 3.0, 3.5, True, None, [1], {}]
        ),
    ],
    ids=repr,
)
def test_fast_path_agrees_on_fields_and_keys(numeric: ServiceConfig, rows: list[Any]) -> None:
    assert_fast_agrees(rows, compile_schema(numeric))


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=repr)
def test_fast_path_agrees_when_the_key_is_a_feature_and_on_one_feature(
    config_data: dict[str, Any], value: Any
) -> None:
    keyed = make_config(
        config_data,
        [{"name": "request_id", "type": "long"}, {"name": "income", "type": "double"}],
    )
    one = make_config(config_data, [{"name": "income", "type": "double"}],
                      routing={**config_data["routing"], "key_field": None})
    for schema in (compile_schema(keyed), compile_schema(one)):
        for row in ({"request_id": value, "income": 1.0}, {"request_id": 4, "income": value},
                    {"income": value}):
            assert_fast_agrees([row, {"request_id": 3, "income": 0.5}], schema)
            assert_fast_agrees([row], schema)


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
