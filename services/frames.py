"""Running a team's hooks (``services/hooks.py``) on pandas DataFrames, and checking what they
give back. Only requests of a service with hooks come here; pandas is imported on first use.

request rows --validate--> Batch --request_frame--> DataFrame --preprocess--> features matrix
answer rows --answer_frame--> DataFrame --postprocess--> declared columns, added to the rows
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.config import Feature
from services.errors import InvalidInputError, PostprocessError, PreprocessError, describe, problem
from services.hooks import RejectInput
from services.schema import MAX_PROBLEMS, Batch
from services.values import NUMERIC_TYPES, check_value

_DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32",
           "boolean": "bool", "string": "object"}


def request_frame(batch: Batch, fields: Sequence[Feature], key_field: str | None) -> Any:
    """The validated rows as a DataFrame: one column per request field, typed, in order."""
    import pandas as pd

    data: dict[str, Any] = {}
    for j, field in enumerate(fields):
        column = batch.matrix[:, j]
        dtype = _DTYPES[field.type]
        if dtype == "object":
            data[field.name] = pd.Series(column, dtype=object)
            continue
        if batch.matrix.dtype == object:
            column = np.array([math.nan if v is None else v for v in column], dtype=np.float64)
        missing = np.isnan(column.astype(np.float64))
        if missing.any() and dtype in ("int64", "int32", "bool"):
            # Integers and booleans with a missing value: pandas' nullable dtypes keep them exact.
            nullable = {"int64": "Int64", "int32": "Int32", "bool": "boolean"}[dtype]
            data[field.name] = pd.array([None if m else v for v, m in zip(column.tolist(), missing)],
                                        dtype=nullable)
        else:
            data[field.name] = column.astype(dtype)
    names = {f.name for f in fields}
    if key_field is not None and key_field not in names:
        data[key_field] = pd.Series(batch.keys, dtype=object)
    return pd.DataFrame(data)


def run_preprocess(hook: Callable[..., Any], frame: Any, features: Sequence[Feature]) -> np.ndarray:
    """``hook(frame)``, checked: one row per request row with every feature, as a matrix in
    feature order (float64 when every feature is numeric or boolean, else object)."""
    import pandas as pd

    out = _call(hook, PreprocessError, "preprocess", frame)
    if not isinstance(out, pd.DataFrame) or len(out) != len(frame):
        got = f"{len(out)} rows" if isinstance(out, pd.DataFrame) else type(out).__name__
        raise PreprocessError("preprocess hook returned the wrong shape", [
            problem(None, None, f"expected a DataFrame of {len(frame)} rows, got {got}")])
    missing = [f.name for f in features if f.name not in out.columns]
    if missing:
        raise PreprocessError("preprocess hook left out model features", [
            problem(None, name, "the model needs this feature; preprocess did not return it")
            for name in missing])
    if all(f.type in NUMERIC_TYPES or f.type == "boolean" for f in features):
        columns = []
        for f in features:
            try:
                columns.append(pd.to_numeric(out[f.name]).to_numpy(dtype=np.float64,
                                                                    na_value=np.nan))
            except (TypeError, ValueError) as exc:
                raise PreprocessError("preprocess hook returned a non-number", [
                    problem(None, f.name, f"feature {f.name} is {f.type}: {describe(exc)}")]
                ) from exc
        return np.column_stack(columns) if columns else np.empty((len(out), 0))
    values = out[[f.name for f in features]].astype(object)
    return values.where(values.notna(), None).to_numpy(dtype=object)


def answer_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame.from_records(rows)


def run_postprocess(
    hook: Callable[..., Any], request: Any, rows: list[dict[str, Any]],
    response: Sequence[Feature],
) -> list[dict[str, Any]]:
    """``hook(request, answer)``, checked against the declared response columns; the rows with
    those columns added (or replaced)."""
    import pandas as pd

    answer = answer_frame(rows)
    out = _call(hook, PostprocessError, "postprocess", request, answer)
    if not isinstance(out, pd.DataFrame) or len(out) != len(rows):
        got = f"{len(out)} rows" if isinstance(out, pd.DataFrame) else type(out).__name__
        raise PostprocessError("postprocess hook returned the wrong shape", [
            problem(None, None, f"expected a DataFrame of {len(rows)} rows, got {got}")])
    declared = {c.name for c in response}
    unknown = [str(c) for c in out.columns if c not in declared and c not in answer.columns]
    missing = [c.name for c in response if c.name not in out.columns]
    if unknown or missing:
        detail = [problem(None, c, "returned but not declared in @postprocessor(response=...)")
                  for c in unknown]
        detail += [problem(None, c, "declared but not returned") for c in missing]
        raise PostprocessError("postprocess hook broke its declared columns", detail)
    problems = []
    columns = {c.name: out[c.name].tolist() for c in response}
    for column in response:
        values = columns[column.name]
        for i, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
                values[i] = None
                if column.required:
                    problems.append(problem(i, column.name, "declared required, returned empty"))
                continue
            why = check_value(column.type, value)
            if why is not None:
                problems.append(problem(i, column.name, f"declared {column.type}: {why}"))
    if problems:
        raise PostprocessError("postprocess hook returned values of the wrong type",
                               problems[:MAX_PROBLEMS])
    for i, row in enumerate(rows):
        for name, values in columns.items():
            row[name] = values[i]
    return rows


def _call(hook: Callable[..., Any], error: type[PreprocessError | PostprocessError],
          name: str, *args: Any) -> Any:
    try:
        return hook(*args)
    except RejectInput as exc:
        raise InvalidInputError(
            f"{len(exc.problems)} row(s) refused by the {name} hook",
            [problem(row, field, why) for row, field, why in exc.problems[:MAX_PROBLEMS]],
        ) from None
    except Exception as exc:
        raise error(f"{name} hook raised", [problem(None, None, describe(exc))]) from exc
