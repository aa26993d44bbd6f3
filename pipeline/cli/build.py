"""CLI commands for building: `bentoship demo train`, `base`, `build`, `run`, `serve`, `push`.

The root group in pipeline/cli/root.py registers them; they only parse, call pipeline.build
(and pipeline.models.demo), and print: progress on stderr, the result on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli.options import (
    check_treatment_options,
    emit,
    model_options,
    output_option,
    quiet_option,
    say,
)
from pipeline.identity import PORT
from pipeline.progress import Progress
from pipeline.settings import Settings, load_settings


def _settings() -> Settings:
    return load_settings()


@click.group()
def demo() -> None:
    """Demo models to try bentoship with."""


@demo.command("train")
@click.option("--if-missing", is_flag=True,
              help="Do nothing if demo-classifier already has @champion and @challenger.")
@output_option
def demo_train(if_missing: bool, output: str) -> None:
    """Train and register two demo models (scikit-learn control, XGBoost treatment).

    \b
    Both are binary classifiers on scikit-learn's bundled breast-cancer data, registered as
    two versions of `demo-classifier` with aliases @champion (control) and @challenger
    (treatment), in the MLflow store of MLFLOW_TRACKING_URI (default: a SQLite file under
    .bentoship/).
    """
    from pipeline.models import demo as demo_models

    settings = _settings()
    if if_missing:
        existing = demo_models.existing(settings.tracking_uri, settings.registry_uri)
        if existing is not None:
            control, treatment = existing
            emit({"control": {"model": str(control)}, "treatment": {"model": str(treatment)},
                  "tracking_uri": settings.tracking_uri, "trained": False}, output,
                 f"Demo models already registered: {control} @champion, {treatment} @challenger")
            return
    say(f"Training demo models into {settings.tracking_uri}")
    artifact_root = settings.embedded_artifact_root
    result = demo_models.train(settings.tracking_uri, settings.registry_uri, artifact_root=artifact_root)
    emit(
        {
            "control": {"model": str(result.control), "aliases": list(result.control.aliases),
                        "accuracy": result.control_accuracy},
            "treatment": {"model": str(result.treatment), "aliases": list(result.treatment.aliases),
                          "accuracy": result.treatment_accuracy},
            "tracking_uri": settings.tracking_uri,
            "trained": True,
        },
        output,
        f"Registered {result.control} @champion (scikit-learn, accuracy "
        f"{result.control_accuracy:.3f}) and {result.treatment} @challenger (XGBoost, accuracy "
        f"{result.treatment_accuracy:.3f}).\nNext: bentoship build --model "
        f"{result.control.name}@champion --treatment {result.control.name}@challenger",
    )


@click.command()
@model_options
@click.option("--name", help="Service and image repository name. [default: the control's "
              "registered name]")
@click.option("--push", is_flag=True, help="Push to the OCI registry and report the digest.")
@click.option("--max-rows", type=int, default=1000, show_default=True,
              help="Largest batch one request may carry.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Binary classifiers: probability of the second class at or above which it "
              "is the prediction.")
@click.option("--ready-timeout", type=float, default=120.0, show_default=True, metavar="SECONDS",
              help="How long the smoke test waits for the container's /readyz.")
@click.option("--services-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              hidden=True, help="Build from this copy of services/ (tests and benchmarks); its "
              "code version is then a hash of its content, src-<hash7>.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file whose [build] table sets keep_requirements / drop_requirements / "
              "trusted_types and whose [service] table the hooks and key_field. [default: "
              "./bentoship.toml if present]")
@output_option
@quiet_option
def build(control: str, treatment: str | None, treatment_weight: int | None, name: str | None,
          push: bool, allow_pickle: bool, trusted_types: tuple[str, ...], hooks: str | None,
          max_rows: int, threshold: float, ready_timeout: float,
          services_dir: Path | None, config_file: Path | None, output: str, quiet: bool) -> None:
    """Build a smoke-tested Docker image serving registry model versions.

    \b
    Resolves the versions, verifies their artifacts, builds a Bento from services/, builds
    the image with the Docker SDK (hermetic: no network during the build), starts it, posts
    the model's input example and only then tags it:
        <registry>/<name>:ctl-v<N>[.trt-v<M>].code-<git sha>[-dirty-<hash>]
    Building the same versions and code again reuses the existing image. Test, notebook and
    lint tools in a model's requirements.txt (pytest, ipykernel, black...) are not installed;
    each one left out is reported.

    \b
    Examples:
      bentoship build --model demo-classifier@champion
      bentoship build --model demo-classifier/1 --treatment demo-classifier/2 \\
                      --treatment-weight 10 --push --output json
      bentoship build --model churn/3 --trust-type xgboost.sklearn.XGBClassifier \\
                      --trust-type xgboost.core.Booster
      bentoship build --model demo-classifier@champion --hooks docs/examples/triage_hooks.py
    """
    from pipeline.build.starter import Starter

    check_treatment_options(treatment, treatment_weight)
    settings = _settings()
    # First thing: the Bento's builder imports BentoML on the other core while this process
    # imports the build and plans (a code-only rebuild's Bento phase 0.9 -> 0.4 s). A build
    # that finds its image stops it unused.
    with Starter(settings.bentoml_home) as starter:
        from pipeline.build.builder import build as run_build
        from pipeline.build.plan import BuildRequest
        from pipeline.config import DEFAULT_CONFIG_FILE, load_build_config

        if config_file is None and DEFAULT_CONFIG_FILE.is_file():
            config_file = DEFAULT_CONFIG_FILE
        request = BuildRequest(control=control, treatment=treatment, name=name,
                               treatment_weight=treatment_weight, push=push,
                               allow_pickle=allow_pickle, max_rows=max_rows, threshold=threshold,
                               ready_timeout_s=ready_timeout, services_dir=services_dir,
                               build_config=load_build_config(config_file),
                               trusted_types=trusted_types, hooks=hooks)
        result = run_build(request, settings, echo=Progress(quiet=quiet), starter=starter)
    sizes = ", ".join(f"{group} {size / 1e6:.1f} MB" for group, size in result.layer_sizes.items())
    lines = [
        (f"{'Reused' if result.reused else 'Built'} {result.reference} "
        f"({result.size_bytes / 1e6:.0f} MB: {sizes}) in {result.seconds:.0f}s"),
    ]
    if result.pinned:
        lines.append(f"Pushed: {result.pinned}")
    if result.example_rows_out:
        lines.append(f"Smoke test prediction: {result.example_rows_out[0]}")
    emit(result.as_dict(), output, "\n".join(lines))


@click.command()
@click.argument("image_ref", metavar="IMAGE")
@click.option("--port", type=int, default=PORT, show_default=True, help="Host port on 127.0.0.1.")
@click.option("--name", "container_name", help="Container name. [default: none]")
@output_option
def run(image_ref: str, port: int, container_name: str | None, output: str) -> None:
    """Start IMAGE (tag or repo@sha256 digest) in the background and show one prediction.

    The container runs as in production: non-root, read-only root filesystem. Stop it with
    `docker rm -f CONTAINER`.
    """
    from pipeline.build import smoke
    from pipeline.build.engine import connect

    client = connect()
    say(f"Starting {image_ref} on 127.0.0.1:{port}")
    trial = smoke.try_image(client, image_ref, host_port=port, name=container_name)
    running, example, answer = trial.running, trial.row, trial.answer
    emit(
        {"container": running.container.name, "url": running.url,
         "openapi": f"{running.url}/docs.json", "request": {"rows": [example]},
         "response": answer, "ready_after_s": round(running.ready_after_s, 1)},
        output,
        f"Container {running.container.name} ready after {running.ready_after_s:.1f}s at "
        f"{running.url}\nPrediction for the model's example row: {answer['rows'][0]}\n"
        f"OpenAPI spec: {running.url}/docs.json (Swagger UI at {running.url}/)\n"
        f"Stop it with: docker rm -f {running.container.name}",
    )


@click.command()
@model_options
@click.option("--port", type=int, default=PORT, show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with [build] and [service] tables, as for `build`. [default: "
              "./bentoship.toml if present]")
def serve(control: str, treatment: str | None, treatment_weight: int | None, port: int,
          allow_pickle: bool, trusted_types: tuple[str, ...], hooks: str | None,
          config_file: Path | None) -> None:
    """Serve model versions locally without Docker, exactly as the image would.

    Same resolution, verification and service as `bentoship build`; runs `bentoml serve` in
    the foreground on 127.0.0.1 until Ctrl-C (or SIGTERM), then removes the Bento it built.
    """
    from pipeline.build.builder import serve as run_serve
    from pipeline.build.plan import BuildRequest

    check_treatment_options(treatment, treatment_weight)
    from pipeline.config import DEFAULT_CONFIG_FILE, load_build_config

    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    request = BuildRequest(control=control, treatment=treatment,
                           treatment_weight=treatment_weight, allow_pickle=allow_pickle,
                           trusted_types=trusted_types, hooks=hooks,
                           build_config=load_build_config(config_file))
    sys.exit(run_serve(request, _settings(), port, echo=say))


@click.command()
@click.argument("image_ref", metavar="IMAGE")
@output_option
@quiet_option
def push(image_ref: str, output: str, quiet: bool) -> None:
    """Push a built IMAGE (REPOSITORY:TAG) to its OCI registry and print its digest.

    From then on refer to the image as REPOSITORY@sha256:..., never by tag.
    """
    from pipeline.build import transfer
    from pipeline.build.engine import connect

    repository, _, tag = image_ref.rpartition(":")
    if not repository or "/" in tag:
        raise click.UsageError(f"IMAGE must be REPOSITORY:TAG, got {image_ref!r}")
    digest = transfer.push(connect(), repository, tag, echo=Progress(quiet=quiet),
                           docker_config=load_settings().docker_config)
    emit({"image": image_ref, "digest": digest, "pinned": f"{repository}@{digest}"}, output,
         f"{repository}@{digest}")


@click.command()
@output_option
@quiet_option
def base(output: str, quiet: bool) -> None:
    """Build (or reuse) the platform's base image, push it, and print its reference.

    Every service image is built FROM it: Debian bookworm with CPython 3.11, the serving
    runtime of services/requirements.lock in /opt/venv, and a non-root user. The
    lock's wheels are downloaded on the host into the wheel cache, and the image is built
    from bentoship/python-root:3.11-bookworm (made by ci/setup.sh) without network. It is
    tagged bentoship/base:<first 12 hex of the lock's sha256> and reused until the lock,
    Dockerfile.base or the root image change. When the OCI registry answers it is pushed
    and named by digest, <registry>/bentoship/base@sha256:...; otherwise by its local tag.

    \b
    Progress goes to stderr, the reference alone to stdout:
      base_ref="$(bentoship base)"      # what ci/setup.sh does
    """
    from pipeline.build.base import ensure_base_image
    from pipeline.build.engine import connect

    result = ensure_base_image(connect(), _settings(), echo=Progress(quiet=quiet))
    emit({"ref": result.ref, "image_id": result.image_id, "lock_sha256": result.lock_sha256},
         output, result.ref)
