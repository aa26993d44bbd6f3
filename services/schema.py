"""Validating a ``/predict`` body against the configured features.

Pure functions, no BentoML. :func:`parse_body` turns bytes into JSON values (orjson, strict:
no NaN/Infinity literals), :func:`validate` turns ``{"rows": [...]}`` into a
:class:`Batch`: a matrix in feature order plus each row's experiment key. Every problem is
collected, each as ``{"row": i, "field": name, "problem": "..."}``, and raised together
(first :data:`MAX_PROBLEMS` of them).

Rules:

- the body is an object whose only key is ``rows``, a non-empty array of at most
  ``max_rows`` objects (more rows: ``too_many_rows``, 413);
- each row has every required feature, no field that is neither a feature nor the routing
  ``key_field``; ``null`` or a missing optional feature becomes NaN;
- ``double``/``float`` take JSON numbers, ``long``/``integer`` take integers (``3.0`` is
  accepted, ``3.5`` is not), ``boolean`` only ``true``/``false`` (never 0/1) and numbers
  never booleans, ``string`` only strings. JSON itself cannot carry NaN or infinity.
- the row's key (``key_field``) is a string or an integer (``3.0`` counts as ``3``), or
  absent/``null``.

A matrix is ``float64`` when every feature is numeric or boolean (booleans become 1.0/0.0),
otherwise ``object`` with the raw values (strings kept) for loaders that take DataFrames.
The same rules as JSON Schemas, for the OpenAPI document, are in ``json_schema.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from services.config import Feature, ServiceConfig
from services.errors import (
    InvalidInputError,
    MalformedBodyError,
    Problem,
    TooManyRowsError,
    problem,
)
from services.values import FLOAT32_MAX, NUMERIC_TYPES, check_value, json_type_name

MAX_PROBLEMS = 50
_FEW_VALUES = 256  # see _has_booleans
_ABSENT = object()  # a row without its key field (null is a key: none)


@dataclass(frozen=True)
class RowSchema:
    """What a row must look like, precomputed from the config once."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    required: tuple[bool, ...]
    key_field: str | None
    max_rows: int

    # Cached: asked once a request, and looking at every type again cost ~1.5 us of the ~7 us
    # a one-row request spends in validate (30 features).
    @cached_property
    def all_numeric(self) -> bool:
        return all(t in NUMERIC_TYPES for t in self.types)

    @cached_property
    def has_strings(self) -> bool:
        return "string" in self.types


@dataclass(frozen=True)
class Batch:
    """A validated request: ``matrix`` has one row per input row, columns in feature order."""

    matrix: np.ndarray
    keys: list[str | None]

    def __len__(self) -> int:
        return len(self.keys)


def compile_schema(config: ServiceConfig, fields: Sequence[Feature] | None = None) -> RowSchema:
    """The rows a caller sends (``config.request_fields``), or rows of `fields`."""
    columns = config.request_fields if fields is None else tuple(fields)
    return RowSchema(
        names=tuple(f.name for f in columns),
        types=tuple(f.type for f in columns),
        required=tuple(f.required for f in columns),
        key_field=config.routing.key_field,
        max_rows=config.max_rows,
    )


def parse_body(raw: bytes) -> Any:
    """Parse a request body as JSON, or raise ``invalid_json`` (400)."""
    if not raw.strip():
        raise MalformedBodyError(
            "empty body",
            [problem(None, None, 'body is empty; expected a JSON object {"rows": [...]}')],
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBodyError(
            "body is not JSON", [problem(None, None, f"body is not valid JSON: {exc}")]
        ) from None


def validate(body: Any, schema: RowSchema) -> Batch:
    """Check a parsed body against the schema; return a :class:`Batch` or raise.

    Raises ``InvalidInputError`` (422) with every problem found, or ``TooManyRowsError``
    (413) when there are more than ``max_rows`` rows.
    """
    rows = _rows_of(body, schema)
    if schema.all_numeric:
        fast = _fast_numeric(rows, schema)
        if fast is not None:
            return fast
    return _checked(rows, schema)


def _rows_of(body: Any, schema: RowSchema) -> list[Any]:
    if not isinstance(body, dict):
        raise InvalidInputError(
            "body is not an object",
            [
                problem(
                    None,
                    None,
                    f'expected a JSON object {{"rows": [...]}}, got {json_type_name(body)}',
                )
            ],
        )
    problems: list[Problem] = [
        problem(None, str(key), "unexpected top-level key; only 'rows' is accepted")
        for key in body
        if key != "rows"
    ]
    rows = body.get("rows")
    if "rows" not in body:
        problems.insert(0, problem(None, "rows", "required: an array of row objects"))
    elif not isinstance(rows, list):
        problems.insert(
            0,
            problem(None, "rows", f"expected an array of row objects, got {json_type_name(rows)}"),
        )
    elif not rows:
        problems.insert(0, problem(None, "rows", "expected at least one row"))
    if problems:
        raise InvalidInputError("invalid body", _capped(problems))
    assert isinstance(rows, list)
    if len(rows) > schema.max_rows:
        raise TooManyRowsError(
            "too many rows",
            [
                problem(
                    None, "rows", f"{len(rows)} rows sent; at most {schema.max_rows} per request"
                )
            ],
        )
    return rows


def _fast_numeric(rows: list[Any], schema: RowSchema) -> Batch | None:
    """The common case, all-numeric features and a clean batch, checked in bulk.

    Every step is one C-level call over all rows or values rather than a Python loop: this
    runs for every request, and per value Python work (3,000 values in a 100-row request of
    30 features) cost more than scoring the rows. Returns None whenever anything looks off;
    :func:`_checked` then finds and words every problem. It must never accept what
    ``_checked`` would refuse.
    """
    names = schema.names
    width = len(names)
    if set(map(type, rows)) != {dict}:
        return None
    # One C call a row instead of a Python loop over its fields (a tuple even for one feature).
    pick = itemgetter(*names) if width > 1 else (lambda row: (row[names[0]],))
    try:
        values = list(map(pick, rows))
    except KeyError:
        return None
    keys = _fast_keys(rows, schema)
    if keys is None:
        return None
    matrix = _number_matrix(values, width)
    if matrix is None or not _in_range(matrix, schema.types):
        return None
    return Batch(matrix=matrix, keys=keys)


def _fast_keys(rows: list[dict[str, Any]], schema: RowSchema) -> list[str | None] | None:
    """Each row's routing key, or None unless every row is a clean one: its only field
    besides the features is the key field, and its key is a string, an integer or absent."""
    names = schema.names
    key_field = schema.key_field
    fields = sum(map(len, rows))
    if key_field is None:
        return [None] * len(rows) if fields == len(rows) * len(names) else None
    keys: list[str | None] = []
    present = 0
    for row in rows:
        key = row.get(key_field, _ABSENT)
        if key is _ABSENT:
            keys.append(None)
            continue
        present += 1
        kind = type(key)
        if kind is str or key is None:
            keys.append(key)
        elif kind is int:
            keys.append(str(key))
        else:
            return None  # 3.0 counts as 3, a float feature as the key: the checked path decides
    # Every row holds all the features (they were picked), so its fields beyond them number
    # at least one where it has a key field that is not a feature: equal sums mean no other.
    extra = 0 if key_field in names else present
    return keys if fields == len(rows) * len(names) + extra else None


def _number_matrix(values: list[tuple[Any, ...]], width: int) -> np.ndarray | None:
    """``values`` as a float64 matrix if every one is a finite JSON number, else None.

    numpy's type discovery does the type check in C: a string, ``null``, object or an integer
    beyond 64 bits gives a non-numeric dtype, a nested array another shape or a ValueError.
    Only booleans pass it (as 1 and 0), so they are looked for apart.
    """
    try:
        matrix = np.array(values)
    except (ValueError, OverflowError):
        return None
    if matrix.dtype.kind not in "iuf" or matrix.shape != (len(values), width):
        return None
    flat = matrix.reshape(-1)
    if _has_booleans(values, flat, width):
        return None
    if matrix.dtype.kind != "f":
        return matrix.astype(np.float64)
    # A finite sum means every value is finite (NaN and infinity carry through a sum); a sum
    # that overflows only leaves the rows to the checked path.
    return matrix if math.isfinite(flat.sum()) else None


def _has_booleans(values: list[tuple[Any, ...]], flat: np.ndarray, width: int) -> bool:
    """Whether any of ``values`` (``flat`` as numpy read them) is a boolean.

    A few values are looked at one by one: each numpy call costs about as much as that for
    a couple of hundred. Many are looked at only where numpy read a 0 or a 1.
    """
    if flat.size <= _FEW_VALUES:
        return bool in set(map(type, chain.from_iterable(values)))
    suspects = np.flatnonzero((flat == 0) | (flat == 1)).tolist()
    return any(type(values[i // width][i % width]) is bool for i in suspects)


def _in_range(matrix: np.ndarray, types: tuple[str, ...]) -> bool:
    """Every column's values fit its type (``check_value``'s rules, on the whole column)."""
    for j, column_type in enumerate(types):
        if column_type == "double":
            continue
        column = matrix[:, j]
        if column_type == "float":
            if np.any(np.abs(column) > FLOAT32_MAX):
                return False
        else:
            # long/integer: integral, and within range (2**63 itself is not a long).
            if np.any(column != np.floor(column)):
                return False
            bound = 2.0**63 if column_type == "long" else 2.0**31
            if np.any(column >= bound) or np.any(column < -bound):
                return False
    return True


def _checked(rows: list[Any], schema: RowSchema) -> Batch:
    names, types, required = schema.names, schema.types, schema.required
    key_field = schema.key_field
    allowed = set(names)
    if key_field is not None:
        allowed.add(key_field)
    numeric = not schema.has_strings
    problems: list[Problem] = []
    values: list[list[Any]] = []
    keys: list[str | None] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(problem(i, None, f"expected a row object, got {json_type_name(row)}"))
            keys.append(None)
            continue
        for field in row:
            if field not in allowed:
                problems.append(
                    problem(i, str(field), "unexpected field; not a feature of this model")
                )
        out: list[Any] = []
        for name, column_type, needed in zip(names, types, required):
            value = row.get(name)
            if value is None:
                if needed:
                    what = "is null" if name in row else "is missing"
                    problems.append(problem(i, name, f"required field {what}"))
                out.append(math.nan if numeric else None)
                continue
            why = check_value(column_type, value)
            if why is not None:
                problems.append(problem(i, name, why))
                out.append(math.nan)
                continue
            if numeric:
                out.append(float(value))
            else:
                out.append(value)
        values.append(out)
        keys.append(_key_of(row, key_field, i, problems))
    if problems:
        raise InvalidInputError(f"{len(problems)} problem(s) in rows", _capped(problems))
    matrix = np.array(values, dtype=np.float64 if numeric else object)
    return Batch(matrix=matrix, keys=keys)


def _key_of(
    row: dict[str, Any], key_field: str | None, i: int, problems: list[Problem]
) -> str | None:
    if key_field is None:
        return None
    key = row.get(key_field)
    if key is None or type(key) is str:
        return key
    if type(key) is int:
        return str(key)
    if type(key) is float and key.is_integer():  # JSON (and the OpenAPI spec) call 3.0 an integer
        return str(int(key))
    problems.append(
        problem(
            i, key_field, f"routing key must be a string or an integer, got {json_type_name(key)}"
        )
    )
    return None


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], problem(None, None, f"{more} more problem(s) not shown")]
