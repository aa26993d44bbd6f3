"""`bentoship rehearse RELEASE_DIR`: the handoff's canary, run and judged on this machine."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from pipeline.cli.options import emit, output_option, say


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def duration(text: str) -> float:
    """`90s`, `5m`, `1h` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration: use e.g. 90s, 5m or 1h") from None


@click.command()
@click.argument("release_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--duration", "duration_text", default="5m", show_default=True, metavar="TIME",
              help="How long to replay traffic (90s, 5m, 1h). The first rate window of it is "
              "warm-up; the rest is judged.")
@click.option("--rate", type=click.FloatRange(min=0.1), default=20, show_default=True,
              metavar="REQ/S", help="Requests per second over all pods.")
@click.option("--traffic", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE.jsonl",
              help="Requests to replay, one per line: a row or {\"rows\": [...]}. [default: the "
              "models' input examples and evaluation datasets in MLflow]")
@click.option("--step", "step_s", type=click.IntRange(min=1), metavar="SECONDS",
              help="Query step. [default: the release's, shorter when it would judge fewer "
              "than 50 points]")
@click.option("--replicas", type=click.IntRange(min=1), metavar="N",
              help="Pods per arm. [default: the Deployments' replicas]")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.html",
              help="Where to write the report. [default: RELEASE_DIR/rehearsal/report.html]")
@output_option
def rehearse(release_dir: Path, duration_text: str, rate: float, traffic: Path | None,
             step_s: int | None, replicas: int | None, report: Path | None, output: str) -> None:
    """Run a rendered canary release here and judge it as Kayenta would.

    \b
    Starts the baseline and canary images by the digests in pipeline.json (read-only,
    non-root, as the Deployments run them), a private Prometheus scraping them with the
    rendered relabelling, replays traffic split over every pod as the production Service
    would, then runs canary-config.json's exact PromQL per scope and judges it like
    Kayenta's NetflixACAJudge (Mann-Whitney U at 98%, effect sizes, critical metrics, NaN
    strategy, group weights, the stage's pass and marginal scores).

    \b
    Exit 0 only when the verdict is pass; 1 on marginal or fail (and on errors).
    Everything it starts is stopped afterwards, also on Ctrl-C.

    \b
      bentoship rehearse release/                       # 5 minutes, the models' examples
      bentoship rehearse release/ --duration 90s --rate 40 --traffic rows.jsonl -o json
    """
    from pipeline.rehearse.run import Options, rehearse_release, table
    from pipeline.settings import load_settings

    options = Options(duration_s=duration(duration_text), rate=rate, step_s=step_s,
                      replicas=replicas, traffic=traffic)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result, path = rehearse_release(release_dir, options, settings=load_settings(),
                                        echo=say, report=report)
    except KeyboardInterrupt:
        say("Interrupted: the rehearsal's containers and Prometheus are stopped.")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    verdict = result.verdict
    emit({**verdict.as_json(), "report": str(path), "seconds": round(result.seconds, 1),
          "step_seconds": result.step_s},
         output, f"{table(verdict)}\nreport: {path}")
    if verdict.verdict != "pass":
        sys.exit(1)
