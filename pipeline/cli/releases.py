"""CLI commands for the release ledger: `bentoship releases list|show|mark`.

The root group in pipeline/cli/root.py registers them; they only parse, call
pipeline.release (ledger, marking), and print.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from pipeline.cli.options import emit, output_option
from pipeline.settings import load_settings


def _client() -> Any:
    from pipeline.models.registry import settings_client

    return settings_client(load_settings())


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
