"""CLI commands for releases: `bentoship release`, `render` and `releases list|show|mark`.

The root group in pipeline/cli/root.py registers them; they only parse, call
pipeline.release (files, handoff, ledger), and print.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


def _client() -> Any:
    from pipeline.models.registry import settings_client
    from pipeline.settings import load_settings

    return settings_client(load_settings())


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


@click.group("releases")
def releases() -> None:
    """The release ledger: every recorded release, in the MLflow experiment bentoship-releases."""


@releases.command("list")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many releases to show, newest first.",
)
@click.option("--name", help="Only releases of this service.")
@output_option
def list_releases(limit: int, name: str | None, output: str) -> None:
    """List recorded releases, newest first."""
    from pipeline.release import ledger

    client = _client()
    records = ledger.list_releases(client, limit=limit, name=name)
    rows = [
        (
            r.short_id,
            r.created.strftime("%Y-%m-%d %H:%M:%S"),
            r.name,
            r.kind,
            r.status,
            r.image_tag,
            r.models,
        )
        for r in records
    ]
    text = (
        _table(("ID", "CREATED (UTC)", "SERVICE", "KIND", "STATUS", "TAG", "MODELS"), rows)
        if rows
        else f"No releases recorded in {client.tracking_uri}."
    )
    emit(
        {"tracking_uri": client.tracking_uri, "releases": [r.to_dict() for r in records]},
        output,
        text,
    )


@releases.command("show")
@click.argument("release_id", metavar="ID")
@output_option
def show_release(release_id: str, output: str) -> None:
    """Show one release; ID is its run id or any unique prefix of it."""
    from pipeline.release import ledger, marking

    client = _client()
    record = ledger.get_release(client, release_id)
    files = ledger.release_files(client, record.release_id)
    lines = [
        f"Release   {record.release_id}",
        f"Created   {record.created.isoformat()}",
        f"Service   {record.name}",
        f"Kind      {record.kind} ({record.mode})",
        f"Status    {record.status}"
        + (f" (since {record.outcome_at}, by {record.outcome_by}"
           + (f": {record.outcome_reason}" if record.outcome_reason else "") + ")"
           if record.outcome_at else ""),
        f"Image     {record.image}",
        f"Tag       {record.image_tag}",
        f"Baseline  {record.baseline or 'none (first release)'}",
        f"Code      {record.code_version}",
        f"Replaces  {_predecessor(record.predecessor)}",
        *(["Dirty     allowed (--allow-dirty)"] if record.allow_dirty == "true" else []),
        f"API       {record.api_change or 'not checked'}"
        + (" (OpenAPI spec: openapi.json below)" if "openapi.json" in files else ""),
        *(
            f"Model     {variant}: {m.get('name')}/{m.get('version')}"
            + (f" (run {m['run_id']})" if m.get("run_id") else "")
            for variant, m in sorted(record.model_versions.items())
        ),
        f"Files     {record.artifact_uri}",
        *(f"          {path}" for path in files),
    ]
    history = marking.outcome_history(client, record.release_id)
    lines += [f"History   {h.get('at')}: {h.get('from')} -> {h.get('to')} by {h.get('by')}"
              + (f" ({h['reason']})" if h.get("reason") else "") for h in history]
    emit({"release": record.to_dict(), "files": files, "history": history}, output,
         "\n".join(lines))


_MARK_HELP = """Record what became of a release: promoted, rolled-back or failed.

\b
ID is the release's id or a unique prefix (`bentoship releases list`). Allowed changes:
  handed-off -> promoted      the canary passed and production runs it now
  handed-off -> rolled-back   it reached production and was undone
  handed-off -> failed        it never reached production (canary failed, deploy failed)
  promoted   -> rolled-back   a later rollback replaced it
Marking a release with the status it already has changes nothing (exit 0). Production, what
the next release is compared with and what `bentoship rollback` leaves, is the newest
promoted release. Who marked it (your user@host, or $BENTOSHIP_CI_JOB), when and --reason
are kept in its history (`bentoship releases show ID`).

\b
The rendered pipeline reports its outcome itself when the webhook receiver's secret was set at
render time; otherwise run this by hand or from a Spinnaker Run Job stage:
  bentoship releases mark 3a15cdcbcd2e --status promoted
  bentoship releases mark 3a15cdcbcd2e --status failed --reason "canary score 41"
"""


@releases.command("mark", help=_MARK_HELP)
@click.argument("release_id", metavar="ID")
@click.option("--status", required=True, type=click.Choice(["promoted", "rolled-back", "failed"]),
              help="What became of the release.")
@click.option("--reason", default="", metavar="TEXT", help="Why, kept in its history.")
@output_option
def mark_release(release_id: str, status: str, reason: str, output: str) -> None:
    from pipeline.release import marking

    settings = load_settings()
    client = _client()
    done = marking.mark_release(client, release_id, status, by=_marked_by(settings.ci_job),
                               reason=reason)
    record = done.record
    if done.changed:
        text = f"Release {record.short_id} ({record.image}): {done.previous} -> {record.status}"
    else:
        text = f"Release {record.short_id} is {record.status} already; nothing changed"
    text += "".join(f"\nRelease {r.short_id} ({r.image}): promoted -> {r.status}, "
                    f"replaced by this rollback" for r in done.also)
    emit({"release_id": record.release_id, "status": record.status, "previous": done.previous,
          "changed": done.changed, "also": [r.release_id for r in done.also],
          "release": record.to_dict()}, output, text)


def _marked_by(ci_job: str) -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    who = f"{user}@{socket.gethostname()}"
    return f"{who} (CI job {ci_job})" if ci_job else who


def _predecessor(predecessor: str) -> str:
    if predecessor == "none":
        return "nothing (first release)"
    return f"release {predecessor[:12]}" if predecessor else "not recorded"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in (header, *rows)
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
