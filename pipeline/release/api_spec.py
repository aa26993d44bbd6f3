"""Load and validate the OpenAPI specs of bentoship services.

`load_spec` reads a JSON or YAML file; `validate_spec` checks a document against the OpenAPI
schemas and lists every problem with its JSON path. pipeline/release/api_diff.py compares two.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

__all__ = ["load_spec", "validate_spec"]

_MAX_PROBLEMS_SHOWN = 20


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read an OpenAPI document from a `.json` file, or YAML for any other suffix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read OpenAPI spec {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineError(
                f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
    else:
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PipelineError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(spec, dict):
        found = "an empty document" if spec is None else f"a {type(spec).__name__}"
        raise PipelineError(
            f"{path} is not an OpenAPI document: expected a mapping at the top level, found {found}"
        )
    return spec


def validate_spec(spec: Mapping[str, Any], *, source: str = "the spec") -> None:
    """Check `spec` against the OpenAPI 2.0/3.0/3.1/3.2 schemas (`openapi-spec-validator`).

    Raises PipelineError listing every problem with its JSON path. `source` names the
    document in the message (usually its file).
    """
    # Imported here: the validator builds its schema registries at import time, and only
    # commands that validate should pay for that.
    from jsonschema.exceptions import SchemaError, UnknownType
    from jsonschema.validators import validator_for
    from jsonschema_path import SchemaPath
    from openapi_spec_validator import (
        OpenAPIV2SpecValidator,
        OpenAPIV30SpecValidator,
        OpenAPIV31SpecValidator,
        OpenAPIV32SpecValidator,
        schemas,
    )
    from openapi_spec_validator.shortcuts import get_validator_cls
    from openapi_spec_validator.validation.exceptions import ValidatorDetectError
    from referencing.exceptions import Unresolvable

    try:
        validator_cls = get_validator_cls(spec)
    except ValidatorDetectError:
        raise PipelineError(
            f"{source} is not an OpenAPI document: it has no `openapi` (or `swagger`) version "
            "field with a supported version (2.0, 3.0.x, 3.1.x, 3.2.x)"
        ) from None
    problems: list[str] = []
    try:
        validator = validator_cls(SchemaPath.from_dict(dict(spec)))
        # The structural pass first: the semantic pass (refs, parameters, schema objects)
        # repeats its findings with paths relative to each schema object, which only confuses.
        # It runs on `jsonschema` explicitly: openapi-spec-validator switches to jsonschema-rs
        # whenever that is installed (Schemathesis brings it), whose errors read differently.
        document = {
            OpenAPIV2SpecValidator: schemas.schema_v2,
            OpenAPIV30SpecValidator: schemas.schema_v30,
            OpenAPIV31SpecValidator: schemas.schema_v31,
            OpenAPIV32SpecValidator: schemas.schema_v32,
        }[validator_cls]
        structure = validator_for(document)(document)
        errors = list(structure.iter_errors(validator.schema))
        for error in errors or validator.iter_errors():
            problems.extend(p for p in _problems(error) if p not in problems)
    except UnknownType as exc:
        # OpenAPI 3.0 has no `null` type; BentoML 1.4 still writes `{"type": "null"}` into its
        # 3.0.2 specs for optional fields, and the validator stops at the first one.
        problems.append(
            f"type {exc.type!r} is not an OpenAPI {spec.get('openapi')} type "
            "(use `nullable: true`, or declare `openapi: 3.1.0`)"
        )
    except Unresolvable as exc:
        problems.append(f"$ref {getattr(exc, 'ref', '')!r} does not resolve: it points at nothing")
    except SchemaError as exc:
        problems.append(f"the validator could not follow the document: {exc.message}")
    if problems:
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = "\n".join(f"  - {p}" for p in shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise PipelineError(f"{source} is not a valid OpenAPI document:\n{lines}{tail}")


def _problems(error: Any) -> list[str]:
    """Lines for a jsonschema ValidationError: the failing spots inside it, without values."""
    if error.context:  # anyOf/oneOf failed: report inside the alternatives, not the whole value
        # Most spec objects may also be a `$ref`; that alternative's complaint is noise.
        subs = [e for e in error.context if list(e.validator_value or ()) != ["$ref"]]
        return [line for sub in subs or error.context for line in _problems(sub)]
    message = error.message
    shown = repr(error.instance)
    if len(shown) > 40 and message.startswith(shown):
        message = "value" + message[len(shown) :]
    return [f"{error.json_path}: {message}"]
