"""`bentoship openapi ...`: export a service's spec, compare the HTTP API of two versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline.cli.options import check_treatment_options, emit, model_ref, output_option, say
from pipeline.errors import PipelineError
from pipeline.release.api_diff import Change, diff_specs
from pipeline.release.api_spec import load_spec, validate_spec

_spec_path = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group("openapi")
def openapi() -> None:
    """Export, compare and check the OpenAPI specs of bentoship services."""


@openapi.command("diff")
@click.argument("old", type=_spec_path)
@click.argument("new", type=_spec_path)
@click.option(
    "--validate",
    is_flag=True,
    help="Also check both files against the OpenAPI schema first. Off by default: "
    "BentoML 1.4 writes `type: null` into its OpenAPI 3.0 specs, which strict validation rejects.",
)
@output_option
@click.pass_context
def diff(ctx: click.Context, old: Path, new: Path, validate: bool, output: str) -> None:
    """List the API changes from OLD to NEW (JSON or YAML files) and flag the breaking ones.

    A change is breaking when a caller of OLD can fail against NEW: an endpoint, request
    property, response property or status code removed; a request property newly required or
    its type narrowed; a response type changed; an error body changed.

    \b
    Exit codes:
      0  no changes, or only compatible ones
      1  at least one breaking change
      2  usage error: OLD or NEW missing, unreadable, not JSON/YAML,
         or (with --validate) not a valid OpenAPI document
    """
    old_spec = _read(old, "OLD", validate)
    new_spec = _read(new, "NEW", validate)
    try:
        changes = diff_specs(old_spec, new_spec)
    except PipelineError as exc:  # an unresolvable $ref: the file is not one we can read
        raise click.UsageError(f"cannot compare {old} and {new}: {exc}", ctx) from exc
    breaking = [c for c in changes if c.kind == "breaking"]
    compatible = [c for c in changes if c.kind == "compatible"]
    result: dict[str, Any] = {
        "breaking": [_as_json(c) for c in breaking],
        "compatible": [_as_json(c) for c in compatible],
    }
    emit(result, output, _table(changes, old, new))
    if breaking:
        ctx.exit(1)


@openapi.command("export")
@click.argument("image_ref", metavar="[IMAGE]", required=False)
@click.option("--model", "control", metavar="NAME@ALIAS|NAME/VERSION", callback=model_ref,
              help="Instead of an IMAGE: the control model version of the service to describe.")
@click.option("--treatment", metavar="NAME@ALIAS|NAME/VERSION", callback=model_ref,
              help="With --model: an optional treatment model version.")
@click.option("--treatment-weight", type=int, metavar="PERCENT",
              help="With --model: share of traffic for the treatment. [default: 10]")
@click.option("--name", help="With --model: service name. [default: the control's registered "
              "name]")
@click.option("--max-rows", type=int, default=1000, show_default=True,
              help="With --model: largest batch one request may carry.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="With --model, binary classifiers: probability at or above which the "
              "second class is the prediction.")
@click.option("--allow-pickle", is_flag=True,
              help="With --model: accept models that only load by unpickling.")
@click.option("--trust-type", "trusted_types", multiple=True, metavar="TYPE",
              help="With --model: trust this skops type by name (repeatable), as for `build`.")
@click.option("--hooks", metavar="MODULE|FILE.py",
              help="With --model: the team's hook module, as for `build`.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write the spec here (YAML for .yaml/.yml, else JSON). "
              "[default: JSON on stdout]")
def export(image_ref: str | None, control: str | None, treatment: str | None,
           treatment_weight: int | None, name: str | None, max_rows: int, threshold: float,
           allow_pickle: bool, trusted_types: tuple[str, ...], hooks: str | None,
           out: Path | None) -> None:
    """Write the OpenAPI spec of a built service image, or of the one `build` would make.

    \b
    IMAGE (a tag or REPOSITORY@sha256:...; pulled if it is not here): the spec the image
    stored at build time, /home/bentoship/bento/openapi.json, checked against its label
    io.bentoship.openapi_sha256. It is the document the running service serves at /docs.json.
    --model REF [--treatment REF]: the spec of the service `bentoship build` would make from
    these versions and this checkout, without Docker (models are resolved and verified).

    \b
    Examples:
      bentoship openapi export 127.0.0.1:5000/demo-classifier@sha256:... -o openapi.json
      bentoship openapi export --model demo-classifier@champion \\
                               --treatment demo-classifier@challenger -o next.json
      bentoship openapi diff openapi.json next.json
    """
    from pipeline.identity import openapi_sha256
    from pipeline.release.api_export import service_spec_for_models, service_spec_of_image

    if (image_ref is None) == (control is None):
        raise click.UsageError("give either IMAGE or --model REF (not both)")
    if image_ref is not None:
        given = [flag for flag, value in (("--treatment", treatment),
                                          ("--treatment-weight", treatment_weight),
                                          ("--name", name), ("--hooks", hooks),
                                          ("--trust-type", trusted_types or None))
                 if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only go with --model, not with IMAGE")
        spec = service_spec_of_image(image_ref)
    else:
        from pipeline.build.plan import BuildRequest
        from pipeline.settings import load_settings

        assert control is not None
        check_treatment_options(treatment, treatment_weight)
        request = BuildRequest(control=control, treatment=treatment, name=name,
                               treatment_weight=treatment_weight, allow_pickle=allow_pickle,
                               max_rows=max_rows, threshold=threshold,
                               trusted_types=trusted_types, hooks=hooks)
        spec = service_spec_for_models(request, load_settings(), say)
    info = spec.get("info") or {}
    summary = (f"OpenAPI {spec.get('openapi')} spec of {info.get('title')} {info.get('version')} "
               f"(sha256 {openapi_sha256(spec)})")
    if out is None:
        say(summary)
        emit(spec, "text", json.dumps(spec, indent=2))  # stdout, in the document's own order
        return
    if out.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(spec, indent=2) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    say(f"{summary} written to {out}")


def _read(path: Path, name: str, validate: bool) -> dict[str, Any]:
    try:
        spec = load_spec(path)
        if validate:
            validate_spec(spec, source=str(path))
    except PipelineError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from exc
    return spec


def _as_json(change: Change) -> dict[str, str]:
    return {"path": change.path, "message": change.message}


def _table(changes: list[Change], old: Path, new: Path) -> str:
    if not changes:
        return f"No API changes from {old} to {new}."
    width = max(len(c.path) for c in changes)
    lines = [f"{'KIND':<10}  {'WHERE':<{width}}  CHANGE"]
    lines += [f"{c.kind:<10}  {c.path:<{width}}  {c.message}" for c in changes]
    n_breaking = sum(c.kind == "breaking" for c in changes)
    lines.append(
        f"\n{n_breaking} breaking, {len(changes) - n_breaking} compatible change(s) "
        f"from {old} to {new}."
    )
    return "\n".join(lines)
