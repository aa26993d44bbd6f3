"""CLI commands for CI: `bentoship ci on-model-registered|on-commit|webhook` and `rollback`.

The root group in pipeline/cli/root.py registers them; they parse, call pipeline.flows or
pipeline.flows.receiver, and print. ci/github-actions.yml and ci/Jenkinsfile call only these.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import (
    allow_dirty_option,
    emit,
    output_option,
    quiet_option,
    say,
    wait_option,
)
from pipeline.errors import LedgerUnavailable

_CONFIG_HELP = ("TOML file with [release] and [ci] tables (docs/ci-flows.md). "
                "[default: ./bentoship.toml if present]")


def _config_path(path: Path | None) -> Path | None:
    from pipeline.config import DEFAULT_CONFIG_FILE

    if path is None and DEFAULT_CONFIG_FILE.is_file():
        return DEFAULT_CONFIG_FILE
    return path


def _configs(path: Path | None) -> tuple[Any, Any]:
    from pipeline.config import load_ci_config, load_release_config

    path = _config_path(path)
    return load_release_config(path), load_ci_config(path)


def _build_config(path: Path | None) -> Any:
    """The [build] and [service] tables (requirements, trusted types, the team's hooks)."""
    from pipeline.config import load_build_config

    return load_build_config(_config_path(path))


def _quiet_stdout() -> contextlib.AbstractContextManager[Any]:
    """Keep stdout for the result: MLflow's client prints run links there (HTTP tracking)."""
    return contextlib.redirect_stdout(sys.stderr)


def _progress(quiet: bool) -> Any:
    from pipeline.progress import Progress

    return Progress(quiet=quiet)


config_option = click.option("--config", "config_path", type=click.Path(path_type=Path,
                             dir_okay=False), help=_CONFIG_HELP)
out_option = click.option("--out", "outdir", type=click.Path(path_type=Path, file_okay=False),
                          default=Path("release"), show_default=True,
                          help="Where the release files are written.")
name_option = click.option("--name", help="Service name. [default: the one the ledger knows, or "
                           "the model's registered name]")
submit_option = click.option("--submit", is_flag=True, help="Also save the pipeline with "
                             "`spin pipeline save` (needs `spin` on PATH).")


def _flow_text(result: Any) -> str:
    if result.action == "skipped":
        return f"Nothing released: {result.reason}"
    done = result.handoff
    lines = [
        f"Release {done.record.short_id} ({done.spec.kind}, {done.spec.mode}): {done.spec.image}",
        f"  {result.reason}",
    ]
    if done.spec.baseline_image:
        lines.append(f"Baseline (production): {done.spec.baseline_image}")
    lines += [f"  {rel}" for rel in sorted(done.files)]
    lines.append(done.submit_note)
    return "\n".join(lines)


@click.group("ci")
def ci() -> None:
    """What CI jobs call: release a new model version, deploy a hotfix, receive webhooks.

    \b
    bentoship ci on-model-registered --model NAME --version N   (end of a training job)
    bentoship ci on-commit --message TEXT --sha SHA             (every push to main)
    bentoship ci webhook                                        (a long-running receiver)
    """


@ci.command("on-model-registered")
@click.option("--model", required=True, metavar="NAME", help="The registered model's name.")
@click.option("--version", "version", required=True, type=click.IntRange(min=1), metavar="N",
              help="The version just registered.")
@name_option
@config_option
@out_option
@submit_option
@click.option("--allow-breaking-api", is_flag=True,
              help="Release even if the service's API breaks production's callers.")
@allow_dirty_option
@wait_option
@output_option
@quiet_option
def on_model_registered(model: str, version: int, name: str | None, config_path: Path | None,
                        outdir: Path, submit: bool, allow_breaking_api: bool, allow_dirty: bool,
                        wait_s: float, output: str, quiet: bool) -> None:
    """Release NAME/N against production: as the treatment beside production's control.

    \b
    With `[ci] new_version_as = "control"` it replaces the control instead. The first release of
    a service deploys NAME/N alone, directly. Does nothing (exit 0, saying why) when the version
    already is production's control or production already runs exactly these versions and code.
    """
    from pipeline import flows
    from pipeline.settings import load_settings

    release_config, ci_config = _configs(config_path)
    with _quiet_stdout():
        result = flows.on_model_registered(model, str(version), load_settings(), release_config,
                                           ci_config, outdir, _progress(quiet), name=name,
                                           submit=submit, allow_breaking_api=allow_breaking_api,
                                           allow_dirty=allow_dirty, wait_s=wait_s,
                                           build_config=_build_config(config_path))
    emit(result.as_dict(), output, _flow_text(result))


@ci.command("on-commit")
@click.option("--message", required=True, metavar="TEXT",
              help="The commit message (`git log -1 --format=%B`).")
@click.option("--sha", required=True, metavar="SHA",
              help="The commit CI was triggered for; must be the checked-out HEAD.")
@name_option
@config_option
@out_option
@submit_option
@wait_option
@output_option
@quiet_option
def on_commit(message: str, sha: str, name: str | None, config_path: Path | None, outdir: Path,
              submit: bool, wait_s: float, output: str, quiet: bool) -> None:
    """Deploy a code-only hotfix when the commit message says `[deploy: code-only]`.

    \b
    Rebuilds the image of the newest successful release (same model versions, manifests
    verified) with the code of this checkout, tags it with the new code version, and hands it
    to the canary as a hotfix release. Without a deploy flag, or with `[deploy: skip]` /
    `[skip deploy]`, nothing happens and the reason is printed (exit 0). Flags in the message:
      [deploy: code-only]   or the trailer `Deploy: code-only`
      [deploy: skip]        or `[skip deploy]`, or the trailer `Deploy: skip`
      [api: allow-breaking] or the trailer `Api: allow-breaking`: release even if the
                            service's API breaks production's callers
    """
    from pipeline import flows
    from pipeline.settings import load_settings

    release_config, _ = _configs(config_path)
    with _quiet_stdout():
        result = flows.on_commit(message, sha, load_settings(), release_config, outdir,
                                 _progress(quiet), name=name, submit=submit, wait_s=wait_s,
                                 build_config=_build_config(config_path))
    emit(result.as_dict(), output, _flow_text(result))


@ci.command("webhook")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (put a TLS proxy in front for anything but loopback).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8686, show_default=True)
@config_option
@click.option("--out", "outdir", type=click.Path(path_type=Path, file_okay=False),
              help="Each release's files go into a folder of their own under this one. "
              "[default: $BENTOSHIP_HOME/webhook/releases, outside the checkout, whose code "
              "version a new file would make -dirty]")
@click.option("--tolerance", type=click.IntRange(min=1), default=300, show_default=True,
              metavar="SECONDS", help="Refuse deliveries signed longer ago than this.")
@click.option("--queue-size", type=click.IntRange(min=1), default=100, show_default=True,
              metavar="N", help="Accepted deliveries that may wait for the release worker; "
              "beyond that a new one is answered 429 with Retry-After (MLflow retries it).")
@click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Answer 408 to a client whose body takes longer than this to arrive.")
def webhook(host: str, port: int, config_path: Path | None, outdir: Path | None,
            tolerance: int, queue_size: int, read_timeout: float) -> None:
    """Receive MLflow registry webhooks (MLflow 3.3+) and release what they announce.

    \b
    Verifies each delivery's HMAC-SHA256 signature with BENTOSHIP_WEBHOOK_SECRET (401, nothing
    runs, when it does not match), ignores other events and repeated delivery ids, answers 202
    at once and runs `ci on-model-registered` for the version in a worker, one at a time
    (429 when --queue-size deliveries already wait; bodies over 1 MiB are 413).
    POST /webhook; GET /healthz and /deliveries/<id> show what happened. Stop with Ctrl-C or
    SIGTERM: no new connections, requests in flight are answered, a running release finishes,
    queued ones resume at the next start.
    """
    from pipeline.flows.receiver import webhook_receiver
    from pipeline.settings import load_settings

    settings = load_settings()
    release_config, ci_config = _configs(config_path)
    receiver = webhook_receiver(settings, release_config, ci_config, outdir=outdir, host=host,
                                port=port, tolerance_s=tolerance, queue_size=queue_size,
                                read_timeout_s=read_timeout, echo=say)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with _quiet_stdout():
        receiver.start()
        say(f"Receiving MLflow webhooks at {receiver.url}/webhook (ledger: "
            f"{settings.tracking_uri})")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        say("Stopping: a release in progress finishes first")
        receiver.stop()


@click.command("rollback")
@click.option("--to", "to", metavar="RELEASE_ID|TAG|REPO@sha256:DIGEST",
              help="What to go back to: a release id (or unique prefix), an image tag "
              "(REPOSITORY:TAG or just the tag) or an image by digest. [default: the release "
              "before production]")
@name_option
@click.option("--baseline", metavar="REPO@sha256:DIGEST",
              help="The image production runs now. Only used when MLflow is down (the ledger "
              "knows it otherwise): the pipeline then replaces it and can undo a failed rollout.")
@config_option
@out_option
@submit_option
@wait_option
@output_option
@quiet_option
def rollback(to: str | None, name: str | None, baseline: str | None, config_path: Path | None,
             outdir: Path, submit: bool, wait_s: float, output: str, quiet: bool) -> None:
    """Deploy an earlier image again, by digest: no build.

    \b
    Checks that the registry still serves the image and that its labels name the models the
    ledger recorded for it, renders a Spinnaker pipeline deploying it straight to production
    (or with a short canary: `[ci] rollback_canary = true`), and records a rollback release.
    With MLflow down, `--to REPO@sha256:...` (or REPO:TAG) still renders the files from the
    registry's labels alone (give --baseline, the image production runs, so the pipeline can
    undo a failed rollout), but nothing is recorded: the command then exits 1 after printing
    the result. Without --to it needs the ledger, and says so.
    """
    from pipeline import flows
    from pipeline.settings import load_settings

    release_config, ci_config = _configs(config_path)
    try:
        with _quiet_stdout():
            result = flows.rollback(load_settings(), release_config, ci_config, outdir,
                                    _progress(quiet), to=to, name=name, baseline=baseline,
                                    submit=submit, wait_s=wait_s)
    except LedgerUnavailable as exc:
        emit(exc.result.as_dict(), output, _rollback_text(exc.result))
        raise
    emit(result.as_dict(), output, _rollback_text(result))


def _rollback_text(result: Any) -> str:
    spec = result.spec
    models = ", ".join(f"{v}={m['name']}/{m['version']}"
                       for v, m in sorted(spec.model_versions.items()))
    lines = [
        f"Rollback ({spec.mode}) to {spec.image}: {result.chosen}",
        f"  models {models}, code {spec.code_version}",
    ]
    if spec.baseline_image:
        lines.append(f"Replaces production: {spec.baseline_image}")
    lines += [f"  {rel}" for rel in sorted(result.files)]
    lines += [f"Ledger: {result.ledger_note}", result.submit_note]
    return "\n".join(lines)
