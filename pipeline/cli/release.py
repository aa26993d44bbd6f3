"""CLI commands that make releases: `bentoship release` and `render`.

The root group in pipeline/cli/root.py registers them; they only parse, call
pipeline.release (files, handoff), and print. The ledger's commands are `releases.py`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import (
    allow_dirty_option,
    check_treatment_options,
    emit,
    model_options,
    output_option,
    quiet_option,
    say,
    wait_option,
)
from pipeline.settings import load_settings

_MODEL = re.compile(r"^(?P<name>[^/]+)/(?P<version>\d+)(?:/(?P<run_id>[0-9a-f]+))?$")


def _model(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    match = _MODEL.match(value.strip())
    if not match:
        raise click.BadParameter(
            f"{value!r}: use NAME/VERSION or NAME/VERSION/RUN_ID, e.g. demo-classifier/2"
        )
    return {"name": match["name"], "version": match["version"], "run_id": match["run_id"] or ""}


def _image(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from pipeline.errors import ReleaseError
    from pipeline.release.spec import parse_image_reference

    if value is None:
        return None
    try:
        return parse_image_reference(value, option=f"--{param.name}")
    except ReleaseError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@click.command("render")
@click.option(
    "--image",
    required=True,
    callback=_image,
    metavar="REPO@sha256:DIGEST",
    help="The image to release, by digest (a tag is refused).",
)
@click.option(
    "--baseline",
    callback=_image,
    metavar="REPO@sha256:DIGEST",
    help="The image production runs now, same repository. Without it this is a "
    "first release: straight to production, no canary comparison.",
)
@click.option("--name", required=True, help="Service name (Kubernetes names, Prometheus `app`).")
@click.option(
    "--control",
    required=True,
    callback=_model,
    metavar="NAME/VERSION[/RUN_ID]",
    help="The control model version inside the image.",
)
@click.option(
    "--treatment",
    callback=_model,
    metavar="NAME/VERSION[/RUN_ID]",
    help="The treatment model version, if the image A/B-tests one.",
)
@click.option(
    "--tag",
    "image_tag",
    required=True,
    metavar="TAG",
    help="The image's tag, ctl-v<N>[.trt-v<M>].code-<sha7>[-dirty-<hash6>].",
)
@click.option("--code-version", help="Code version. [default: the code part of --tag]")
@click.option(
    "--kind",
    type=click.Choice(["model", "hotfix", "rollback"]),
    default="model",
    show_default=True,
    help="What changed since production.",
)
@click.option(
    "--skip-canary",
    is_flag=True,
    help="Rollbacks only: deploy straight to production without canary analysis.",
)
@click.option(
    "--openapi",
    "openapi_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The service's OpenAPI spec, copied into the release.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with a [release] table. [default: ./bentoship.toml if present]",
)
@click.option(
    "--out",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write pipeline.json, canary-config.json and k8s/ into.",
)
@output_option
def render(
    image: tuple[str, str],
    baseline: tuple[str, str] | None,
    name: str,
    control: dict[str, str],
    treatment: dict[str, str] | None,
    image_tag: str,
    code_version: str | None,
    kind: str,
    skip_canary: bool,
    openapi_file: Path | None,
    config_file: Path | None,
    outdir: Path,
    output: str,
) -> None:
    """Write the Spinnaker pipeline, Kayenta canary config and Kubernetes manifests.

    Only renders: the image must already be pushed. Nothing is recorded in the release ledger
    and nothing is written if any input is invalid.

    \b
    Example:
      bentoship render --name demo-classifier \\
          --image 127.0.0.1:5000/demo-classifier@sha256:<new> \\
          --baseline 127.0.0.1:5000/demo-classifier@sha256:<production> \\
          --control demo-classifier/1 --treatment demo-classifier/2 \\
          --tag ctl-v1.trt-v2.code-1a2b3c4 --out release/
    """
    from pipeline.config import DEFAULT_CONFIG_FILE
    from pipeline.errors import ReleaseError
    from pipeline.release.files import render_from_inputs
    from pipeline.release.spec import baseline_digest_in

    repository, digest = image
    try:
        baseline_digest = baseline_digest_in(repository, baseline)
    except ReleaseError as exc:
        raise click.BadParameter(str(exc), param_hint="--baseline") from None
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    spec, files = render_from_inputs(
        name=name,
        repository=repository,
        digest=digest,
        baseline_digest=baseline_digest,
        control=control,
        treatment=treatment,
        image_tag=image_tag,
        code_version=code_version,
        kind=kind,  # type: ignore[arg-type]
        skip_canary=skip_canary,
        openapi_file=openapi_file,
        config_file=config_file,
        outdir=outdir,
    )
    mode = "canary" if spec.mode == "canary" else "direct to production"
    say(f"Rendered a {kind} release of {spec.image} ({mode}) into {outdir}")
    emit(
        {
            "name": name,
            "image": spec.image,
            "baseline": spec.baseline_image,
            "mode": spec.mode,
            "kind": kind,
            "outdir": str(outdir.resolve()),
            "files": {rel: str(path) for rel, path in files.items()},
        },
        output,
        "\n".join(str(path) for path in files.values()),
    )


@click.command("release")
@model_options
@click.option("--name", help="Service name. [default: the control's registered name]")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file whose [release] table sets namespace, accounts, replicas, canary "
              "durations and thresholds, and whose [build] table the build reads. [default: "
              "built-in defaults]")
@click.option("--out", "outdir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("release"), show_default=True, help="Where the files are written.")
@click.option("--submit", is_flag=True,
              help="Also save the pipeline with `spin pipeline save` (needs `spin` on PATH).")
@click.option("--allow-breaking-api", is_flag=True,
              help="Release even if the service's OpenAPI spec breaks callers of production's "
              "(recorded as api_change=breaking-allowed). CI: `[api: allow-breaking]` in the "
              "commit message.")
@click.option("--rehearse", "rehearse_it", is_flag=True,
              help="Rehearse the canary here before handing it off (`bentoship rehearse`): a "
              "release whose canary does not pass is recorded as rehearsal_failed, not "
              "submitted, and the command exits 1.")
@click.option("--rehearse-duration", default="5m", show_default=True, metavar="TIME",
              help="With --rehearse: how long to replay traffic.")
@click.option("--rehearse-rate", type=click.FloatRange(min=0.1), default=20, show_default=True,
              metavar="REQ/S", help="With --rehearse: requests per second over all pods.")
@click.option("--rehearse-traffic", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE.jsonl", help="With --rehearse: the requests to replay. [default: "
              "the models' input examples and evaluation datasets]")
@allow_dirty_option
@wait_option
@output_option
@quiet_option
def release(control: str, treatment: str | None, treatment_weight: int | None, name: str | None,
            config_path: Path | None, outdir: Path, submit: bool, allow_pickle: bool,
            trusted_types: tuple[str, ...], hooks: str | None,
            allow_breaking_api: bool, rehearse_it: bool, rehearse_duration: str,
            rehearse_rate: float, rehearse_traffic: Path | None, allow_dirty: bool,
            wait_s: float, output: str, quiet: bool) -> None:
    """Build (or reuse) and push the image, render the canary release, record it.

    \b
    Writes into --out: pipeline.json (for `spin pipeline save --file`), canary-config.json
    (Kayenta) and the Kubernetes manifests, all referring to the image by digest. The
    baseline is the image of production, the newest promoted release of this service in the
    ledger; the first release deploys directly. The release is recorded in the ledger, as
    handed-off, only after the push and the rendering succeeded; its pipeline reports whether
    it was promoted (or `bentoship releases mark`).

    \b
    Before anything is built, the service's OpenAPI spec is compared with the one recorded
    for the production release: a breaking change (`bentoship openapi diff` rules) is
    refused unless --allow-breaking-api. The decision is recorded as `api_change`.

    \b
    A checkout with uncommitted changes is refused unless --allow-dirty (recorded as
    allow_dirty). One release per service at a time, across machines sharing the MLflow
    server: a second one waits up to --wait seconds for the first's lease, then exits 1
    naming its holder.

    \b
    With --rehearse the rendered canary runs here first (`bentoship rehearse`): recorded as
    rehearsal_failed and not handed off unless it passes.
    """
    from pipeline.build.plan import BuildRequest
    from pipeline.cli.rehearse import duration
    from pipeline.config import load_build_config, load_release_config
    from pipeline.release import handoff

    config = load_release_config(config_path)
    check_treatment_options(treatment, treatment_weight)
    settings = load_settings()
    if not rehearse_it and (rehearse_traffic is not None or rehearse_duration != "5m"
                            or rehearse_rate != 20):
        raise click.UsageError("--rehearse-duration, --rehearse-rate and --rehearse-traffic "
                               "need --rehearse")
    echo = lambda m: say(m, quiet=quiet)
    rehearse = None
    if rehearse_it:
        from pipeline.rehearse.run import Options, rehearser

        rehearse = rehearser(Options(duration_s=duration(rehearse_duration), rate=rehearse_rate,
                                     traffic=rehearse_traffic), settings, echo)
    request = BuildRequest(control=control, treatment=treatment, name=name,
                           treatment_weight=treatment_weight, allow_pickle=allow_pickle,
                           build_config=load_build_config(config_path),
                           trusted_types=trusted_types, hooks=hooks)
    done = handoff.release(request, settings, config, outdir, echo=echo, submit=submit,
                           allow_breaking_api=allow_breaking_api, allow_dirty=allow_dirty,
                           wait_s=wait_s, rehearse=rehearse)
    emit(done.as_dict(), output, _handoff_text(done))


def _handoff_text(done: Any) -> str:
    lines = [f"Release {done.record.short_id} ({done.spec.kind}, {done.spec.mode}): {done.spec.image}"]
    if done.spec.baseline_image:
        lines.append(f"Baseline (production): {done.spec.baseline_image}")
    if done.api is not None:
        lines.append(f"API change against production: {done.api.decision}")
    lines += [f"  {rel}" for rel in sorted(done.files)]
    lines.append(done.submit_note)
    return "\n".join(lines)
