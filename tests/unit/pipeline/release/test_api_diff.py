"""The OpenAPI diff that decides whether a release changes the HTTP API incompatibly.

Every row mutates the spec fixture `service_v1.yaml` (POST /predict, its error bodies, the
health endpoints) and pins the changes seen in both directions: v1 -> mutated and back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pipeline.cli.openapi import openapi
from pipeline.errors import PipelineError
from pipeline.release.api_diff import Change, diff_specs
from pipeline.release.api_spec import load_spec, validate_spec

FIXTURES = Path(__file__).parents[3] / "fixtures" / "openapi"
V1 = FIXTURES / "service_v1.yaml"
PREDICT = "POST /predict"
REQ = f"{PREDICT} request"
OK = f"{PREDICT} response 200"
ERROR_CODES = ("400", "413", "422", "500")

Spec = dict[str, Any]
Seen = set[tuple[str, str, str]]


def schemas(spec: Spec) -> Any:
    return spec["components"]["schemas"]


def row(spec: Spec) -> Any:
    return schemas(spec)["Row"]


def prediction(spec: Spec) -> Any:
    return schemas(spec)["Prediction"]


def b(path: str, message: str) -> tuple[str, str, str]:
    return ("breaking", path, message)


def c(path: str, message: str) -> tuple[str, str, str]:
    return ("compatible", path, message)


def on_errors(kind: str, field: str, message: str) -> Seen:
    return {(kind, f"{PREDICT} response {code} {field}", message) for code in ERROR_CODES}


# --- mutations of service_v1.yaml ---------------------------------------------------------


def remove_readyz(spec: Spec) -> None:
    del spec["paths"]["/readyz"]


def add_get_predict(spec: Spec) -> None:
    spec["paths"]["/predict"]["get"] = {"responses": {"200": {"description": "usage"}}}


def remove_required_feature(spec: Spec) -> None:
    del row(spec)["properties"]["mean_texture"]
    row(spec)["required"].remove("mean_texture")


def remove_optional_feature(spec: Spec) -> None:
    del row(spec)["properties"]["request_id"]


def rename_feature(spec: Spec) -> None:
    props = row(spec)["properties"]
    props["radius_mean"] = props.pop("mean_radius")
    row(spec)["required"] = ["radius_mean", "mean_texture"]


def number_to_integer(spec: Spec) -> None:
    row(spec)["properties"]["mean_radius"]["type"] = "integer"


def string_to_enum(spec: Spec) -> None:
    row(spec)["properties"]["request_id"]["enum"] = ["a", "b"]


def require_optional_feature(spec: Spec) -> None:
    row(spec)["required"].append("worst_area")


def remove_enum_value(spec: Spec) -> None:
    row(spec)["properties"]["clinic"]["enum"] = ["north"]


def not_nullable(spec: Spec) -> None:
    del row(spec)["properties"]["worst_area"]["nullable"]


def lower_max_rows(spec: Spec) -> None:
    schemas(spec)["PredictRequest"]["properties"]["rows"]["maxItems"] = 100


def raise_min_rows(spec: Spec) -> None:
    schemas(spec)["PredictRequest"]["properties"]["rows"]["minItems"] = 2


def optional_body(spec: Spec) -> None:
    spec["paths"]["/predict"]["post"]["requestBody"]["required"] = False


def remove_response_field(spec: Spec) -> None:
    del prediction(spec)["properties"]["variant"]
    prediction(spec)["required"].remove("variant")


def score_to_string(spec: Spec) -> None:
    prediction(spec)["properties"]["score"]["type"] = "string"


def prediction_to_number(spec: Spec) -> None:
    prediction(spec)["properties"]["prediction"]["type"] = "number"


def response_field_optional(spec: Spec) -> None:
    prediction(spec)["required"].remove("model_version")


def nullable_score(spec: Spec) -> None:
    prediction(spec)["properties"]["score"]["nullable"] = True


def variant_enum(spec: Spec) -> None:
    prediction(spec)["properties"]["variant"]["enum"] = ["control", "treatment"]


def json_to_csv(spec: Spec) -> None:
    responses = spec["paths"]["/predict"]["post"]["responses"]
    responses["200"]["content"] = {"text/csv": {"schema": {"type": "string"}}}


def remove_error_row(spec: Spec) -> None:
    del schemas(spec)["Problem"]["properties"]["row"]
    schemas(spec)["Problem"]["required"].remove("row")


def detail_to_string(spec: Spec) -> None:
    schemas(spec)["ErrorBody"]["properties"]["detail"] = {"type": "string"}


def remove_413(spec: Spec) -> None:
    del spec["paths"]["/predict"]["post"]["responses"]["413"]


def bump_version(spec: Spec) -> None:
    spec["info"]["version"] = "2"


def pydantic_style_nullable(spec: Spec) -> None:
    # What pydantic/BentoML write for `float | None`: same meaning as `nullable: true`.
    # (A `null` type is only valid OpenAPI from 3.1 on; the version itself is not compared.)
    spec["openapi"] = "3.1.0"
    row(spec)["properties"]["worst_area"] = {"anyOf": [{"type": "number"}, {"type": "null"}]}


def inline_refs(spec: Spec) -> None:
    rows = schemas(spec)["PredictRequest"]["properties"]["rows"]
    rows["items"] = copy.deepcopy(row(spec))
    del schemas(spec)["Row"]


def all_of_row(spec: Spec) -> None:
    full = row(spec)
    schemas(spec)["Row"] = {
        "allOf": [
            {
                "type": "object",
                "required": ["mean_radius"],
                "properties": {"mean_radius": full["properties"]["mean_radius"]},
            },
            {
                "type": "object",
                "required": ["mean_texture"],
                "properties": {k: v for k, v in full["properties"].items() if k != "mean_radius"},
            },
        ]
    }


def nothing(spec: Spec) -> None:
    pass


Case = tuple[Callable[[Spec], None], Seen, Seen]

CASES: dict[str, Case] = {
    "endpoint removed / added": (
        remove_readyz,
        {b("GET /readyz", "endpoint removed")},
        {c("GET /readyz", "endpoint added")},
    ),
    "method added / removed": (
        add_get_predict,
        {c("GET /predict", "endpoint added")},
        {b("GET /predict", "endpoint removed")},
    ),
    "required request property removed / new required property": (
        remove_required_feature,
        {b(f"{REQ} rows[].mean_texture", "property removed")},
        {b(f"{REQ} rows[].mean_texture", "new required property")},
    ),
    "optional request property removed / new optional property": (
        remove_optional_feature,
        {b(f"{REQ} rows[].request_id", "property removed")},
        {c(f"{REQ} rows[].request_id", "new optional property")},
    ),
    "request property renamed (both ways)": (
        rename_feature,
        {
            b(f"{REQ} rows[].mean_radius", "property removed (renamed to 'radius_mean'?)"),
            b(f"{REQ} rows[].radius_mean", "new required property"),
        },
        {
            b(f"{REQ} rows[].radius_mean", "property removed (renamed to 'mean_radius'?)"),
            b(f"{REQ} rows[].mean_radius", "new required property"),
        },
    ),
    "request type narrowed number->integer / widened": (
        number_to_integer,
        {b(f"{REQ} rows[].mean_radius", "type narrowed from number to integer")},
        {c(f"{REQ} rows[].mean_radius", "type widened from integer to number")},
    ),
    "request string narrowed to enum / enum lifted": (
        string_to_enum,
        {b(f"{REQ} rows[].request_id", 'now restricted to enum ["a", "b"]')},
        {c(f"{REQ} rows[].request_id", "enum restriction lifted")},
    ),
    "request property newly required / no longer required": (
        require_optional_feature,
        {b(f"{REQ} rows[].worst_area", "property is now required")},
        {c(f"{REQ} rows[].worst_area", "property is no longer required")},
    ),
    "request enum value removed / added": (
        remove_enum_value,
        {b(f"{REQ} rows[].clinic", 'enum values removed: "south"')},
        {c(f"{REQ} rows[].clinic", 'enum values added: "south"')},
    ),
    "request null no longer accepted / accepted again": (
        not_nullable,
        {b(f"{REQ} rows[].worst_area", "type narrowed from null|number to number")},
        {c(f"{REQ} rows[].worst_area", "type widened from number to null|number")},
    ),
    "request limit tightened / loosened": (
        lower_max_rows,
        {b(f"{REQ} rows", "maxItems tightened from 1000 to 100")},
        {c(f"{REQ} rows", "maxItems loosened from 100 to 1000")},
    ),
    "request lower limit raised / lowered": (
        raise_min_rows,
        {b(f"{REQ} rows", "minItems tightened from 1 to 2")},
        {c(f"{REQ} rows", "minItems loosened from 2 to 1")},
    ),
    "request body optional / required": (
        optional_body,
        set(),
        {b(REQ, "request body is now required")},
    ),
    "2xx response property removed / added": (
        remove_response_field,
        {b(f"{OK} rows[].variant", "property removed")},
        {c(f"{OK} rows[].variant", "property added")},
    ),
    "2xx response type changed (both ways)": (
        score_to_string,
        {b(f"{OK} rows[].score", "response type changed from number to string")},
        {b(f"{OK} rows[].score", "response type changed from string to number")},
    ),
    "2xx response integer->number changed (both ways)": (
        prediction_to_number,
        {b(f"{OK} rows[].prediction", "response type changed from integer to number")},
        {b(f"{OK} rows[].prediction", "response type changed from number to integer")},
    ),
    "2xx response property may be absent / always present": (
        response_field_optional,
        {b(f"{OK} rows[].model_version", "property may now be absent")},
        {c(f"{OK} rows[].model_version", "property is now always present")},
    ),
    "2xx response may be null / never null": (
        nullable_score,
        {b(f"{OK} rows[].score", "response type changed from number to null|number")},
        {c(f"{OK} rows[].score", "response type narrowed from null|number to number")},
    ),
    "2xx response restricted to enum / enum lifted": (
        variant_enum,
        {c(f"{OK} rows[].variant", 'now restricted to enum ["control", "treatment"]')},
        {b(f"{OK} rows[].variant", "enum restriction lifted")},
    ),
    "2xx response media type replaced": (
        json_to_csv,
        {
            b(OK, "media type application/json removed"),
            c(f"{OK} text/csv", "media type text/csv added"),
        },
        {
            b(f"{OK} text/csv", "media type text/csv removed"),
            c(OK, "media type application/json added"),
        },
    ),
    "error body property removed / added": (
        remove_error_row,
        on_errors("breaking", "detail[].row", "property removed"),
        on_errors("compatible", "detail[].row", "property added"),
    ),
    "error body shape changed (both ways)": (
        detail_to_string,
        on_errors("breaking", "detail", "response type changed from array to string"),
        on_errors("breaking", "detail", "response type changed from string to array"),
    ),
    "documented error status removed / added": (
        remove_413,
        {b(f"{PREDICT} response 413", "documented status code 413 removed")},
        {c(f"{PREDICT} response 413", "status code 413 added")},
    ),
    "info.version is informational": (
        bump_version,
        {c("info.version", "informational: version '1' -> '2'")},
        {c("info.version", "informational: version '2' -> '1'")},
    ),
    "anyOf [X, null] means nullable X": (pydantic_style_nullable, set(), set()),
    "$ref and inline schema are the same": (inline_refs, set(), set()),
    "allOf is merged": (all_of_row, set(), set()),
    "no change": (nothing, set(), set()),
}


@pytest.fixture(scope="module")
def v1() -> Spec:
    return load_spec(V1)


def seen(changes: list[Change]) -> Seen:
    return {(ch.kind, ch.path, ch.message) for ch in changes}


@pytest.mark.parametrize(("mutate", "forward", "backward"), CASES.values(), ids=CASES.keys())
def test_diff_classifies_each_change_in_both_directions(
    v1: Spec, mutate: Callable[[Spec], None], forward: Seen, backward: Seen
) -> None:
    changed = copy.deepcopy(v1)
    mutate(changed)

    assert seen(diff_specs(v1, changed)) == forward
    assert seen(diff_specs(changed, v1)) == backward


# Each lower limit a request schema can carry: where it is set, and a lower and a higher value.
LOWER_LIMITS: dict[str, tuple[Callable[[Spec], Spec], str, int, int]] = {
    "minimum": (lambda spec: row(spec)["properties"]["mean_radius"], "rows[].mean_radius", 0, 5),
    "minLength": (lambda spec: row(spec)["properties"]["request_id"], "rows[].request_id", 1, 8),
    "minItems": (lambda spec: schemas(spec)["PredictRequest"]["properties"]["rows"], "rows", 1, 2),
    "minProperties": (row, "rows[]", 2, 3),
}


@pytest.mark.parametrize(
    ("key", "schema", "field", "low", "high"),
    [(key, *where) for key, where in LOWER_LIMITS.items()],
    ids=LOWER_LIMITS.keys(),
)
def test_a_raised_lower_limit_in_a_request_breaks_and_a_lowered_one_does_not(
    v1: Spec, key: str, schema: Callable[[Spec], Spec], field: str, low: int, high: int
) -> None:
    # A request the service accepted at the lower limit is refused once the limit is raised.
    lenient, strict = copy.deepcopy(v1), copy.deepcopy(v1)
    schema(lenient)[key] = low
    schema(strict)[key] = high
    for spec in (lenient, strict):
        validate_spec(spec, source=key)

    assert seen(diff_specs(lenient, strict)) == {
        b(f"{REQ} {field}", f"{key} tightened from {low} to {high}")
    }
    assert seen(diff_specs(strict, lenient)) == {
        c(f"{REQ} {field}", f"{key} loosened from {high} to {low}")
    }


def test_every_mutated_spec_is_still_a_valid_spec(v1: Spec) -> None:
    # Otherwise a row could pass by diffing something no service would publish.
    for name, (mutate, _, _) in CASES.items():
        changed = copy.deepcopy(v1)
        mutate(changed)
        validate_spec(changed, source=name)


def test_output_is_ordered_breaking_first_then_by_path(v1: Spec) -> None:
    changed = copy.deepcopy(v1)
    for mutate in (bump_version, remove_readyz, add_get_predict, remove_error_row, lower_max_rows):
        mutate(changed)

    changes = diff_specs(v1, changed)

    kinds = [ch.kind for ch in changes]
    assert kinds == sorted(kinds, key=lambda k: k != "breaking")
    breaking = [ch.path for ch in changes if ch.kind == "breaking"]
    assert breaking == sorted(breaking)
    assert changes == diff_specs(v1, copy.deepcopy(changed))


@pytest.mark.parametrize(
    "child",
    [
        {"$ref": "#/components/schemas/Tree"},
        {"anyOf": [{"$ref": "#/components/schemas/Tree"}, {"type": "null"}]},
    ],
    ids=["ref", "nullable ref"],
)
def test_recursive_schemas_terminate(v1: Spec, child: Spec) -> None:
    tree = {"type": "object", "properties": {"child": child}}
    old, new = copy.deepcopy(v1), copy.deepcopy(v1)
    for spec in (old, new):
        schemas(spec)["Tree"] = copy.deepcopy(tree)
        row(spec)["properties"]["tree"] = {"$ref": "#/components/schemas/Tree"}
    schemas(new)["Tree"]["properties"]["label"] = {"type": "string"}

    assert seen(diff_specs(old, new)) == {c(f"{REQ} rows[].tree.label", "new optional property")}


def test_unresolvable_ref_is_an_error_naming_it(v1: Spec) -> None:
    broken = copy.deepcopy(v1)
    del schemas(broken)["Row"]

    with pytest.raises(PipelineError, match="cannot resolve \\$ref '#/components/schemas/Row'"):
        diff_specs(v1, broken)


# --- validation and loading ---------------------------------------------------------------


def test_valid_spec_passes_validation(v1: Spec) -> None:
    validate_spec(v1)


def test_invalid_spec_lists_every_problem_with_its_location() -> None:
    spec = load_spec(FIXTURES / "invalid.yaml")

    with pytest.raises(PipelineError) as excinfo:
        validate_spec(spec, source="invalid.yaml")

    assert str(excinfo.value).splitlines() == [
        "invalid.yaml is not a valid OpenAPI document:",
        "  - $.info: 'version' is a required property",
        "  - $.paths['/predict'].post.responses['200']: 'description' is a required property",
        (
            "  - $.paths['/predict'].post.responses['200'].content['application/json'].schema.type:"
            " 'float' is not one of ['array', 'boolean', 'integer', 'number', 'object', 'string']"
        ),
    ]


def test_null_type_in_openapi_30_is_explained(v1: Spec) -> None:
    # BentoML 1.4 writes exactly this into the OpenAPI 3.0.2 specs it serves.
    spec = copy.deepcopy(v1)
    pydantic_style_nullable(spec)
    spec["openapi"] = "3.0.3"

    with pytest.raises(PipelineError, match="worst_area.anyOf\\[1\\].type: 'null' is not one of"):
        validate_spec(spec)


def test_document_without_openapi_version_is_rejected() -> None:
    with pytest.raises(PipelineError, match="no `openapi` \\(or `swagger`\\) version field"):
        validate_spec({"info": {"title": "x", "version": "1"}, "paths": {}}, source="x.yaml")


def test_load_spec_reads_json_and_yaml_alike(tmp_path: Path, v1: Spec) -> None:
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(v1))

    assert load_spec(as_json) == v1


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.json",
            '{"openapi": "3.0.3",\n  "info": }',
            "bad.json is not valid JSON: line 2 column 11: Expecting value",
        ),
        ("bad.yaml", "openapi: [3.0.3\n", "bad.yaml is not valid YAML"),
        ("list.yaml", "- openapi\n", "list.yaml is not an OpenAPI document: expected a mapping"),
        ("empty.yml", "", "empty.yml is not an OpenAPI document: .* found an empty document"),
    ],
)
def test_load_spec_names_the_file_it_cannot_read(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)

    with pytest.raises(PipelineError, match=message):
        load_spec(tmp_path / name)


def test_load_spec_missing_file() -> None:
    with pytest.raises(PipelineError, match="cannot read OpenAPI spec .*nope.yaml"):
        load_spec(FIXTURES / "nope.yaml")


# --- the `openapi diff` command -----------------------------------------------------------


@click.group()
def root() -> None:
    """Stands in for the bentoship root group."""


root.add_command(openapi)


def write(tmp_path: Path, name: str, spec: Spec) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


def run(*args: str) -> Any:
    return CliRunner(catch_exceptions=False).invoke(root, ["openapi", "diff", *args])


def test_cli_exits_0_and_lists_compatible_changes(tmp_path: Path, v1: Spec) -> None:
    new = copy.deepcopy(v1)
    bump_version(new)
    remove_optional_feature(v1 := copy.deepcopy(v1))  # v1 lacked request_id: new adds it

    result = run(write(tmp_path, "old.json", v1), write(tmp_path, "new.json", new), "-o", "json")

    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "breaking": [],
        "compatible": [
            {"path": f"{REQ} rows[].request_id", "message": "new optional property"},
            {"path": "info.version", "message": "informational: version '1' -> '2'"},
        ],
    }


def test_cli_exits_1_on_a_breaking_change(tmp_path: Path, v1: Spec) -> None:
    new = copy.deepcopy(v1)
    remove_required_feature(new)
    bump_version(new)

    result = run(str(V1), write(tmp_path, "new.json", new), "--output", "json")

    assert result.exit_code == 1
    assert json.loads(result.stdout)["breaking"] == [
        {"path": f"{REQ} rows[].mean_texture", "message": "property removed"}
    ]


def test_cli_table_puts_breaking_changes_first(tmp_path: Path, v1: Spec) -> None:
    new = copy.deepcopy(v1)
    bump_version(new)
    remove_413(new)

    result = run(str(V1), write(tmp_path, "new.json", new))

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "WHERE", "CHANGE"]
    assert lines[1].startswith("breaking    POST /predict response 413")
    assert lines[2].startswith("compatible  info.version")
    assert lines[-1].startswith("1 breaking, 1 compatible change(s) from")


def test_cli_no_changes(v1: Spec) -> None:
    result = run(str(V1), str(V1))

    assert result.exit_code == 0
    assert result.stdout.startswith("No API changes from")


def test_cli_exits_2_on_a_missing_file() -> None:
    result = run(str(V1), str(FIXTURES / "nope.yaml"))

    assert result.exit_code == 2
    assert "nope.yaml' does not exist" in result.stderr


def test_cli_exits_2_on_an_unreadable_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    result = run(str(V1), str(broken))

    assert result.exit_code == 2
    assert "Invalid value for NEW" in result.stderr
    assert "broken.json is not valid JSON: line 1 column 2" in result.stderr


def test_cli_validate_rejects_an_invalid_spec_with_exit_2() -> None:
    result = run(str(V1), str(FIXTURES / "invalid.yaml"), "--validate")

    assert result.exit_code == 2
    assert "'version' is a required property" in result.stderr


def test_cli_help_documents_exit_codes() -> None:
    result = run("--help")

    assert result.exit_code == 0
    assert "0  no changes, or only compatible ones" in result.stdout
    assert "1  at least one breaking change" in result.stdout
    assert "2  usage error" in result.stdout
