"""Compare the OpenAPI specs of bentoship services: what changed, and can it break a caller.

`diff_specs(old, new)` lists what changed between two specs and whether an existing caller
can break on it. The rules, from the caller's side:

- Endpoints: a removed path or method is breaking; a new one is compatible.
- Request bodies (the service must accept everything it accepted before): a removed property
  is breaking (a rename is a removal plus an addition); a new required property, a property
  that became required, a narrowed type (`number` -> `integer`, any type -> an `enum`), removed
  `enum` values and tightened limits (`maximum`, `maxItems`, `minLength`, ...) are breaking.
  New optional properties, widened types, added `enum` values and loosened limits are compatible.
- Responses (the caller must understand everything the service answers), 2xx and error bodies
  alike: a removed property, a property that may now be absent, a changed type, a removed
  status code or media type, new `enum` values are breaking; new properties and status codes
  are compatible.
- `info.version` changes are reported as compatible and informational.

`$ref`s to `#/...` in the same document are resolved before comparing; `allOf` is merged and
`anyOf`/`oneOf` with a `{"type": "null"}` branch (what pydantic and BentoML emit for optional
fields) is read as a nullable type. Other `anyOf`/`oneOf` are compared as a whole: any
difference is breaking. Parameters (query, header, path) are not compared yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline.errors import PipelineError

__all__ = ["Change", "diff_specs"]

Kind = Literal["breaking", "compatible"]
Direction = Literal["request", "response"]

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Limits a request may not tighten: for `max*` a lower value is tighter, for `min*` a higher one.
_UPPER_LIMITS = ("maximum", "maxLength", "maxItems", "maxProperties")
_LOWER_LIMITS = ("minimum", "minLength", "minItems", "minProperties")


@dataclass(frozen=True)
class Change:
    """One difference between two specs.

    `path` says where, e.g. `POST /predict request rows[].mean_radius` or
    `POST /predict response 400 detail[].row`; `message` says what.
    """

    kind: Kind
    path: str
    message: str


def diff_specs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Every change from `old` to `new`: breaking ones first, then by path and message."""
    differ = _Differ(old, new)
    differ.compare()
    return sorted(differ.changes, key=lambda c: (c.kind != "breaking", c.path, c.message))


class _Doc:
    """A spec with its local `$ref`s resolvable."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def resolve(self, node: Any) -> tuple[Any, str | None]:
        """Follow `$ref`s from `node`; returns the target and the last ref followed."""
        ref: str | None = None
        seen: set[str] = set()
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                raise PipelineError(f"$ref cycle through {ref!r}")
            seen.add(ref)
            node = self._lookup(ref)
        return node, ref

    def _lookup(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise PipelineError(
                f"cannot resolve $ref {ref!r}: only references inside the same document "
                "(starting with '#/') are supported"
            )
        node: Any = self.spec
        for raw in ref[2:].split("/"):
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise PipelineError(f"cannot resolve $ref {ref!r}: {key!r} does not exist")
        return node


@dataclass(frozen=True)
class _Shape:
    """A schema reduced to what the comparison needs."""

    types: frozenset[str] | None  # None: any type
    enum: tuple[str, ...] | None  # values as JSON text, so unhashable values work too
    properties: Mapping[str, Any]
    required: frozenset[str]
    items: Any
    additional: Any
    alternatives: str | None  # canonical JSON of anyOf/oneOf that are not just "nullable"
    limits: Mapping[str, float]
    ref: str | None


class _Differ:
    def __init__(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        self.old = _Doc(old)
        self.new = _Doc(new)
        self.changes: set[Change] = set()

    def _add(self, kind: Kind, path: str, message: str) -> None:
        self.changes.add(Change(kind, path, message))

    def compare(self) -> None:
        old_info = self.old.spec.get("info") or {}
        new_info = self.new.spec.get("info") or {}
        if old_info.get("version") != new_info.get("version"):
            self._add(
                "compatible",
                "info.version",
                f"informational: version {old_info.get('version')!r} -> "
                f"{new_info.get('version')!r}",
            )
        old_ops = dict(self._operations(self.old))
        new_ops = dict(self._operations(self.new))
        for where in sorted(old_ops.keys() - new_ops.keys()):
            self._add("breaking", where, "endpoint removed")
        for where in sorted(new_ops.keys() - old_ops.keys()):
            self._add("compatible", where, "endpoint added")
        for where in sorted(old_ops.keys() & new_ops.keys()):
            self._request_body(where, old_ops[where], new_ops[where])
            self._responses(where, old_ops[where], new_ops[where])

    def _operations(self, doc: _Doc) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for url, item in (doc.spec.get("paths") or {}).items():
            item, _ = doc.resolve(item)
            for method in _METHODS:
                if isinstance(item, Mapping) and isinstance(item.get(method), Mapping):
                    yield f"{method.upper()} {url}", item[method]

    def _request_body(
        self, where: str, old_op: Mapping[str, Any], new_op: Mapping[str, Any]
    ) -> None:
        old_body, _ = self.old.resolve(old_op.get("requestBody"))
        new_body, _ = self.new.resolve(new_op.get("requestBody"))
        here = f"{where} request"
        if not old_body and not new_body:
            return
        if not new_body:
            self._add("breaking", here, "request body removed")
            return
        if not old_body:
            if new_body.get("required"):
                self._add("breaking", here, "request body added and required")
            else:
                self._add("compatible", here, "optional request body added")
            return
        if new_body.get("required") and not old_body.get("required"):
            self._add("breaking", here, "request body is now required")
        self._content(here, old_body.get("content"), new_body.get("content"), "request")

    def _responses(self, where: str, old_op: Mapping[str, Any], new_op: Mapping[str, Any]) -> None:
        old_responses = old_op.get("responses") or {}
        new_responses = new_op.get("responses") or {}
        for status in sorted(map(str, old_responses)):
            here = f"{where} response {status}"
            if status not in map(str, new_responses):
                self._add("breaking", here, f"documented status code {status} removed")
                continue
            old_response, _ = self.old.resolve(_get(old_responses, status))
            new_response, _ = self.new.resolve(_get(new_responses, status))
            self._content(
                here,
                (old_response or {}).get("content"),
                (new_response or {}).get("content"),
                "response",
            )
        for status in sorted(set(map(str, new_responses)) - set(map(str, old_responses))):
            self._add("compatible", f"{where} response {status}", f"status code {status} added")

    def _content(self, here: str, old: Any, new: Any, direction: Direction) -> None:
        old = old or {}
        new = new or {}
        for media_type in sorted(old):
            spot = _media_spot(here, media_type)
            if media_type not in new:
                self._add("breaking", spot, f"media type {media_type} removed")
                continue
            old_schema = (old[media_type] or {}).get("schema")
            new_schema = (new[media_type] or {}).get("schema")
            if old_schema is not None and new_schema is None:
                self._add("breaking", spot, "schema removed")
            elif old_schema is not None:
                self._schema(spot, "", old_schema, new_schema, direction, frozenset())
        for media_type in sorted(set(new) - set(old)):
            self._add("compatible", _media_spot(here, media_type), f"media type {media_type} added")

    def _schema(
        self,
        here: str,
        field: str,
        old_node: Any,
        new_node: Any,
        direction: Direction,
        visiting: frozenset[tuple[str | None, str | None]],
    ) -> None:
        old = _shape(self.old, old_node)
        new = _shape(self.new, new_node)
        if old.ref is not None or new.ref is not None:
            pair = (old.ref, new.ref)
            if pair in visiting:  # a recursive schema: this pair is already being compared
                return
            visiting = visiting | {pair}
        spot = f"{here} {field}" if field else here
        request = direction == "request"

        self._types(spot, old.types, new.types, request)
        self._enum(spot, old.enum, new.enum, request)
        if request:
            self._limits(spot, old.limits, new.limits)
        if old.alternatives != new.alternatives:
            self._add("breaking", spot, "anyOf/oneOf alternatives changed (not analysed further)")

        if _has(old.types, "object") and _has(new.types, "object"):
            self._properties(here, field, old, new, direction, visiting)
            if isinstance(old.additional, Mapping) and isinstance(new.additional, Mapping):
                self._schema(
                    here, _join(field, "*"), old.additional, new.additional, direction, visiting
                )
        arrays = _has(old.types, "array") and _has(new.types, "array")
        if arrays and old.items is not None and new.items is not None:
            self._schema(here, f"{field}[]", old.items, new.items, direction, visiting)

    def _types(
        self, spot: str, old: frozenset[str] | None, new: frozenset[str] | None, request: bool
    ) -> None:
        if old == new:
            return
        was, now = _type_text(old), _type_text(new)
        if request:
            # The service must still accept every value it accepted before.
            if new is None or (old is not None and _covers(new, old)):
                self._add("compatible", spot, f"type widened from {was} to {now}")
            else:
                self._add("breaking", spot, f"type narrowed from {was} to {now}")
        elif old is None or (new is not None and new < old):
            self._add("compatible", spot, f"response type narrowed from {was} to {now}")
        else:
            self._add("breaking", spot, f"response type changed from {was} to {now}")

    def _enum(
        self, spot: str, old: tuple[str, ...] | None, new: tuple[str, ...] | None, request: bool
    ) -> None:
        if old == new:
            return
        # A request may only accept more values; a response may only send fewer.
        narrower: Kind = "breaking" if request else "compatible"
        wider: Kind = "compatible" if request else "breaking"
        if old is None:
            self._add(narrower, spot, f"now restricted to enum {_enum_text(new)}")
        elif new is None:
            self._add(wider, spot, "enum restriction lifted")
        else:
            if removed := sorted(set(old) - set(new)):
                self._add(narrower, spot, f"enum values removed: {', '.join(removed)}")
            if added := sorted(set(new) - set(old)):
                self._add(wider, spot, f"enum values added: {', '.join(added)}")

    def _limits(self, spot: str, old: Mapping[str, float], new: Mapping[str, float]) -> None:
        for key in (*_UPPER_LIMITS, *_LOWER_LIMITS):
            if old.get(key) == new.get(key):
                continue
            was, now = old.get(key), new.get(key)
            if now is None:
                tighter = False
            elif was is None:
                tighter = True
            else:
                tighter = now < was if key in _UPPER_LIMITS else now > was
            kind: Kind = "breaking" if tighter else "compatible"
            verb = "tightened" if tighter else "loosened"
            self._add(kind, spot, f"{key} {verb} from {was} to {now}")

    def _properties(
        self,
        here: str,
        field: str,
        old: _Shape,
        new: _Shape,
        direction: Direction,
        visiting: frozenset[tuple[str | None, str | None]],
    ) -> None:
        request = direction == "request"
        removed = sorted(old.properties.keys() - new.properties.keys())
        added = sorted(new.properties.keys() - old.properties.keys())
        hint = f" (renamed to {added[0]!r}?)" if len(removed) == 1 and len(added) == 1 else ""
        for name in removed:
            self._add("breaking", f"{here} {_join(field, name)}", f"property removed{hint}")
        for name in added:
            spot = f"{here} {_join(field, name)}"
            if not request:
                self._add("compatible", spot, "property added")
            elif name in new.required:
                self._add("breaking", spot, "new required property")
            else:
                self._add("compatible", spot, "new optional property")
        for name in sorted(old.properties.keys() & new.properties.keys()):
            spot = f"{here} {_join(field, name)}"
            was_required, is_required = name in old.required, name in new.required
            if is_required and not was_required:
                self._add(
                    "breaking" if request else "compatible",
                    spot,
                    "property is now required" if request else "property is now always present",
                )
            elif was_required and not is_required:
                self._add(
                    "compatible" if request else "breaking",
                    spot,
                    "property is no longer required" if request else "property may now be absent",
                )
            self._schema(
                here,
                _join(field, name),
                old.properties[name],
                new.properties[name],
                direction,
                visiting,
            )


def _shape(doc: _Doc, node: Any) -> _Shape:
    schema, ref = doc.resolve(node)
    if not isinstance(schema, Mapping):
        schema = {}
    schema = _merge_all_of(doc, schema)
    types = _types_of(schema)
    alternatives: str | None = None
    for key in ("anyOf", "oneOf"):
        branches = list(schema.get(key) or ())
        non_null = [b for b in branches if not _is_null_schema(doc.resolve(b)[0])]
        if len(non_null) < len(branches) and len(non_null) == 1:
            # `anyOf: [X, {type: null}]` is pydantic's way of writing "X or null".
            inner = _shape(doc, non_null[0])  # unresolved, so a recursive X is still detected
            types = None if inner.types is None else inner.types | {"null"}
            return replace(inner, types=types, ref=ref or inner.ref)
        if branches:
            alternatives = json.dumps(branches, sort_keys=True, default=str)
    enum = schema.get("enum")
    return _Shape(
        types=types,
        enum=None if enum is None else tuple(json.dumps(v, sort_keys=True) for v in enum),
        properties=schema.get("properties") or {},
        required=frozenset(schema.get("required") or ()),
        items=schema.get("items"),
        additional=schema.get("additionalProperties"),
        alternatives=alternatives,
        limits={k: schema[k] for k in (*_UPPER_LIMITS, *_LOWER_LIMITS) if k in schema},
        ref=ref,
    )


def _merge_all_of(doc: _Doc, schema: Mapping[str, Any]) -> Mapping[str, Any]:
    if not schema.get("allOf"):
        return schema
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    properties = dict(merged.get("properties") or {})
    required = list(merged.get("required") or ())
    for part in schema["allOf"]:
        part = _merge_all_of(doc, doc.resolve(part)[0] or {})
        properties.update(part.get("properties") or {})
        required.extend(part.get("required") or ())
        for key, value in part.items():
            if key not in ("properties", "required"):
                merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _types_of(schema: Mapping[str, Any]) -> frozenset[str] | None:
    declared = schema.get("type")
    if isinstance(declared, str):
        types = {declared}
    elif isinstance(declared, list):
        types = set(declared)
    elif "properties" in schema or "additionalProperties" in schema:
        types = {"object"}
    elif "items" in schema:
        types = {"array"}
    else:
        return None
    if schema.get("nullable") is True:  # OpenAPI 3.0
        types.add("null")
    return frozenset(types)


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _covers(wide: frozenset[str], narrow: frozenset[str]) -> bool:
    """Whether every value of a type in `narrow` is also a value of `wide`."""
    return all(t in wide or (t == "integer" and "number" in wide) for t in narrow)


def _has(types: frozenset[str] | None, name: str) -> bool:
    return types is None or name in types


def _media_spot(here: str, media_type: str) -> str:
    # JSON is what every bentoship endpoint speaks: only other media types are named.
    return here if media_type == "application/json" else f"{here} {media_type}"


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _get(responses: Mapping[Any, Any], status: str) -> Any:
    # YAML reads an unquoted `200:` as an int key, so keys are compared as text.
    return next((value for key, value in responses.items() if str(key) == status), None)


def _type_text(types: frozenset[str] | None) -> str:
    return "any" if types is None else "|".join(sorted(types))


def _enum_text(values: tuple[str, ...] | None) -> str:
    return "[" + ", ".join(sorted(values or ())) + "]"
