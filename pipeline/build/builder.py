"""`bentoship build`: registry versions -> Bento -> smoke-tested image (-> pushed by digest).

Everything that can be checked is checked before the first side effect (`plan.py`): references
parse, the Docker engine answers, versions resolve (aliases once), artifacts download and match
their manifests, signatures agree, requirements do not conflict. Then every model is loaded and
scored by the service's own code in a child process (`loadcheck.py`), so a model the image could
not load fails in seconds. Only then are models imported, the Bento built, the image built,
smoke-tested, tagged and pushed. A failing step leaves no tag behind: the image is tagged only
after the smoke test passed. With --push, a registry that does not answer fails the build before
anything is built.

The same model versions, code and base again find the existing image, locally or in the
registry (pulled by digest then), and say so instead of rebuilding.

A build that ends with a smoke-tested image (built or found) keeps its verified artifacts and
what its plan found in the build cache (`cache.py`, under `$BENTOSHIP_HOME/cache`). The next
build of the same versions then verifies the cached artifacts instead of downloading them (a
code-only rebuild: the model layers come from Docker's layer cache, only the code layer is
new, and without hooks the load check's findings come from the cache while the smoke test
loads the models with the new code), and a build that changes nothing finds its image after
the one registry check per model (without MLflow's import when it confirms the last answer,
`pipeline/models/recall.py`), without downloading or loading the models.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import identity
from pipeline.build import bento, cache, extras, image, oci, smoke, transfer
from pipeline.build.plan import PROJECT_ROOT, BuildRequest, Plan, Resolved, plan, resolve_request
from pipeline.build.starter import Starter
from pipeline.errors import DockerError, PushError, map_exceptions
from pipeline.identity import source_url
from pipeline.progress import Echo, reporter
from pipeline.settings import Settings


@dataclass
class BuildResult:
    name: str
    repository: str
    tag: str
    image_id: str
    labels: dict[str, str]
    size_bytes: int
    models: dict[str, dict[str, str]]
    reused: bool
    digest: str | None = None  # "sha256:..." once pushed
    example_rows_in: list[dict[str, Any]] = field(default_factory=list)
    example_rows_out: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reused_from: str | None = None  # "local" or "registry" when reused
    layer_sizes: dict[str, int] = field(default_factory=dict)  # base, extras, models, code
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of the build
    # the models' requirements not installed: package, requirement, model, reason
    dropped_requirements: list[dict[str, str]] = field(default_factory=list)
    # what came from the build cache: {"plan": bool, "models": [variant, ...]}
    cache: dict[str, Any] = field(default_factory=lambda: {"plan": False, "models": []})

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str | None:
        return f"{self.repository}@{self.digest}" if self.digest else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.reference,
            "image_id": self.image_id,
            "digest": self.digest,
            "pinned": self.pinned,
            "tag": self.tag,
            "labels": self.labels,
            "size_bytes": self.size_bytes,
            "models": self.models,
            "reused": self.reused,
            "reused_from": self.reused_from,
            "layer_sizes": self.layer_sizes,
            "smoke_test_rows": self.example_rows_out,
            "seconds": round(self.seconds, 1),
            "phases": {k: round(v, 2) for k, v in self.phases.items()},
            "dropped_requirements": self.dropped_requirements,
            "cache": self.cache,
        }


def build(
    req: BuildRequest,
    settings: Settings,
    echo: Echo,
    *,
    check: Callable[[Plan], None] | None = None,
    starter: Starter | None = None,
) -> BuildResult:
    """Build (or find) the image for `req`; see the module docstring for the order of things.

    `echo` takes progress lines; a `pipeline.progress.Progress` also draws bars. `check` is
    called with the plan before the first side effect (a release's API guard); it refuses by
    raising. `starter`: a Bento builder the caller started early (the CLI does), else its own.
    """
    from pipeline.build.engine import connect

    started = time.monotonic()
    progress = reporter(echo)
    phases = _Phases()
    resolved = resolve_request(req, settings, progress)
    client = connect()
    name, tag = resolved.name, resolved.tag
    repository = f"{settings.oci_registry}/{name}"
    if req.push and not oci.answers(settings.oci_registry):
        raise PushError(transfer.push_message(
            repository, f"the registry {settings.oci_registry} does not answer (connection "
            "refused or timed out), so nothing was built"))
    key = resolved.cache_key()
    phases.done("resolve")

    # A build of these exact versions, code and options ended with an image before: what its
    # plan found gives the labels, and if that image is still here (or in the registry), the
    # models need not be downloaded or loaded again. A release's API guard needs the plan.
    known = cache.load_plan(settings.build_cache, key) if check is None else None
    result: BuildResult | None = None
    where: str | None = None
    if known is not None:
        progress("Planning: the last build of these versions and this code found the plan "
                 "(build cache)")
        base = _base(client, settings, progress)
        phases.done("base")
        labels = _labels(resolved, base.ref, known["manifests"], known["requirements_sha256"],
                         known["config_sha256"], known["openapi_sha256"])
        existing, digest, where = _existing(client, repository, tag, lambda: labels, progress,
                                            settings.docker_config)
        phases.done("lookup")
        if existing is not None:
            result = BuildResult(name, repository, tag, existing.id, dict(existing.labels),
                                 int(existing.attrs.get("Size", 0)), resolved.models,
                                 reused=True, digest=digest, example_rows_in=known["examples"],
                                 reused_from=where, cache={"plan": True, "models": []},
                                 dropped_requirements=known["dropped"])
    if result is None:
        with contextlib.nullcontext(starter) if starter else Starter(settings.bentoml_home) as s:
            result, where = _build_planned(req, resolved, settings, client, progress, phases,
                                           key, check, s)

    result.layer_sizes = image.group_sizes(image.layers(client, result.image_id))
    if req.push and where != "registry":
        result.digest = transfer.push(client, repository, tag, progress,
                                      docker_config=settings.docker_config)
        progress(f"Pushed {repository}@{result.digest}")
        phases.done("push")
    result.seconds = time.monotonic() - started
    result.phases = phases.seconds
    return result


def _build_planned(
    req: BuildRequest, resolved: Resolved, settings: Settings, client: Any, progress: Echo,
    phases: _Phases, key: str, check: Callable[[Plan], None] | None, starter: Starter,
) -> tuple[BuildResult, str | None]:
    """Plan, then find or build the image; keep what the next build can reuse. `starter`'s
    Bento builder imports BentoML while the plan is made."""
    name, tag = resolved.name, resolved.tag
    repository = f"{settings.oci_registry}/{name}"
    with tempfile.TemporaryDirectory(prefix="bentoship-build-") as tmp:
        work = Path(tmp)
        p = plan(resolved, settings, work, progress, reuse_check=req.smoke_test)
        if check is not None:
            check(p)
        infos = p.infos
        phases.done("verify")
        phases.split("verify", "loadcheck", p.loadcheck_s)
        base = _base(client, settings, progress)
        phases.done("base")
        examples = p.examples
        used = {"plan": False, "models": list(p.cached)}
        dropped = [d.as_dict() for d in p.requirements.dropped]

        # Labels need the OpenAPI document (a child's for a copy of services/): made only if
        # an image of this tag is found, else after the Bento, the child running meanwhile.
        @functools.cache
        def labels_of() -> dict[str, str]:
            return _labels(resolved, base.ref, {i.variant: i.manifest_sha256 for i in infos},
                           p.requirements.sha256, p.config_sha256,
                           identity.openapi_sha256(p.openapi))

        existing, digest, where = _existing(client, repository, tag, labels_of, progress,
                                            settings.docker_config)
        phases.done("lookup")
        if existing is not None:
            result = BuildResult(name, repository, tag, existing.id, dict(existing.labels),
                                 int(existing.attrs.get("Size", 0)), p.models, reused=True,
                                 digest=digest, example_rows_in=examples, reused_from=where,
                                 cache=used, dropped_requirements=dropped)
        else:
            from pipeline.build.base import lock_pins

            prepared = None
            if p.requirements.extras:
                prepared = extras.prepare_extras(p.requirements.extras, lock_pins(),
                                                 work / "extras", settings, progress)
                phases.done("wheels")
            progress("Building the Bento")
            bento_dir = bento.make_bento(infos, p.context, name, tag, {"bentoship.tag": tag},
                                         settings.bentoml_home, echo=lambda m: progress(f"  {m}"),
                                         starter=starter)
            phases.done("bento")
            labels = labels_of()
            docker_ctx = image.write_docker_context(bento_dir, work / "docker", base.ref, prepared,
                                                    labels)
            # In the code layer, next to bento.yaml: the spec this image serves at /docs.json.
            (docker_ctx / "bento" / identity.OPENAPI_FILE).write_bytes(identity.canonical_json(p.openapi))
            image_id = image.build(client, docker_ctx, progress)
            phases.done("image")
            rows_out: list[dict[str, Any]] = []
            if req.smoke_test:
                progress("Smoke test: starting the container")
                rows_out = smoke.smoke_test(
                    client, image_id, examples, deadline_s=req.ready_timeout_s, echo=progress
                ).rows_out
                phases.done("smoke")
            _tag(client, image_id, repository, tag)
            built = client.images.get(image_id)
            result = BuildResult(name, repository, tag, image_id, labels,
                                 int(built.attrs.get("Size", 0)), p.models, reused=False,
                                 example_rows_in=examples, example_rows_out=rows_out,
                                 cache=used, dropped_requirements=dropped)
        if req.smoke_test or existing is not None:  # only what ended in a tested image
            for info in infos:
                cache.keep_model(settings.build_cache, info.version, info.manifest_sha256,
                                 info.path)
            if p.config["hooks"] is None:
                cache.keep_check(settings.build_cache, p.check_key,
                                 {"output": p.config["output"], "examples": examples})
            cache.keep_plan(settings.build_cache, key, {
                "manifests": {i.variant: i.manifest_sha256 for i in infos},
                "requirements_sha256": p.requirements.sha256,
                "config_sha256": p.config_sha256,
                "openapi_sha256": labels_of()[identity.OPENAPI_LABEL],
                "examples": examples,
                "dropped": dropped,
            })
    return result, where


def _base(client: Any, settings: Settings, progress: Echo) -> Any:
    from pipeline.build.base import ensure_base_image

    progress("Preparing the base image")
    return ensure_base_image(client, settings, echo=lambda m: progress(f"  {m}"))


def _labels(
    resolved: Resolved, base_ref: str, manifests: dict[str, str], requirements_sha256: str,
    config_sha256: str, openapi_sha256: str,
) -> dict[str, str]:
    """The image's identity labels (contract 6) for `resolved` and what its plan found."""
    req = resolved.request
    versions = resolved.versions
    layers = [
        identity.ModelLayer(variant=variant, registered_name=mv.name, version=mv.version,
                            run_id=mv.run_id, manifest_sha256=manifests[variant])
        for variant, mv in versions.items()
    ]
    labels = identity.image_labels(
        tag=resolved.tag,
        name=resolved.name,
        revision=resolved.code.revision or resolved.code.label,
        code_label=resolved.code.label,
        source=source_url(PROJECT_ROOT),
        models=layers,
        weights=dict(zip(("control", "treatment"), resolved.weights[: len(layers)])),
        allow_pickle=req.allow_pickle,
        trusted_types=req.all_trusted_types,
        requirements_sha256=requirements_sha256,
        base_ref=base_ref,
        config_sha256=config_sha256,
    )
    labels[identity.OPENAPI_LABEL] = openapi_sha256
    return labels


def serve(req: BuildRequest, settings: Settings, port: int, echo: Echo) -> int:
    """Run the same service locally without Docker (`bentoml serve` of the built Bento).

    The exported Bento folder (with its models) lives in a temporary directory for as long as
    the server runs and is removed when it stops: on its own, on Ctrl-C or on SIGTERM (both
    forwarded to the server). Returns the server's exit code (128 + N when signal N ended it).
    """
    import os
    import sys

    resolved = resolve_request(req, settings, echo)
    with _sigterm_exits(), tempfile.TemporaryDirectory(prefix="bentoship-serve-") as tmp:
        work = Path(tmp)
        p = plan(resolved, settings, work, echo)
        echo("Building the Bento")
        bento_dir = bento.make_bento(p.infos, p.context, resolved.name, resolved.tag,
                                     {"bentoship.tag": resolved.tag}, settings.bentoml_home,
                                     echo=lambda m: echo(f"  {m}"))
        echo(f"Serving {resolved.name}:{resolved.tag} from {bento_dir} on "
             f"http://127.0.0.1:{port} (Ctrl-C stops)")
        env = {**os.environ, "BENTOML_HOME": str(settings.bentoml_home),
               "BENTOML_DO_NOT_TRACK": "true"}
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        code = _foreground(
            [str(bentoml_cli), "serve", str(bento_dir), "--host", "127.0.0.1", "--port", str(port)],
            env,
        )
    echo(f"Server stopped (exit code {code}); removed {work}")
    return code


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM ends this process as Ctrl-C does: through `finally` blocks and context managers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals are the main's
        yield
        return

    def exit_(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _foreground(command: list[str], env: dict[str, str], grace_s: float = 20.0) -> int:
    """Run `command` until it exits; SIGINT and SIGTERM to this process are forwarded to it.

    The child runs in its own process group, so a terminal's Ctrl-C reaches it once (from
    here), and the signal goes to the whole group (BentoML's workers too). A group that has not
    exited `grace_s` after the first signal is killed. Its output goes to stderr, with the
    progress: it is a log, not a result.
    """
    import os
    import signal
    import subprocess
    import threading

    child = subprocess.Popen(command, env=env, process_group=0, stdout=2)
    stopping: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in handled} if in_main else {}
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > grace_s:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        # Never leave a server or an orphaned worker of its group behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    return 128 - code if code < 0 else code


def _existing(
    client: Any, repository: str, tag: str, labels_of: Callable[[], dict[str, str]], echo: Echo,
    docker_config: Path | None = None,
) -> tuple[Any | None, str | None, str | None]:
    """An image of this same build, here or in the registry: (image, digest, "local"|"registry").

    Same build means same identity labels (`labels_of()`, asked only once an image of this tag
    is found). One found only in the registry is pulled by digest and tagged locally.
    """
    import docker.errors

    reference = f"{repository}:{tag}"
    try:
        found = client.images.get(reference)
    except docker.errors.ImageNotFound:
        found = None
    if found is not None:
        differ = identity.differences(found.labels or {}, labels_of())
        if not differ:
            echo(f"Image {reference} already exists locally with this configuration: "
                 "not rebuilding")
            digests = [d.split("@", 1)[1] for d in found.attrs.get("RepoDigests") or []
                       if d.startswith(f"{repository}@")]
            return found, (digests[0] if digests else None), "local"
        echo(f"Image {reference} exists locally but differs in {', '.join(differ)}: rebuilding")
    try:
        remote = oci.find(repository, tag, docker_config=docker_config)
    except PushError as exc:
        echo(f"Not looking for {reference} in the registry: {exc}")
        return None, None, None
    if remote is None:
        return None, None, None
    differ = identity.differences(remote.labels, labels_of())
    if differ:
        echo(f"{reference} exists in the registry but differs in {', '.join(differ)}: rebuilding")
        return None, None, None
    echo(f"Image {reference} already exists in the registry as {repository}@{remote.digest} "
         "with this configuration: pulling it instead of rebuilding")
    pulled = transfer.pull(client, repository, remote.digest, tag, echo,
                           docker_config=docker_config)
    return pulled, remote.digest, "registry"


class _Phases:
    """Seconds spent in each step of a build, for `--output json` and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def split(self, phase: str, part: str, seconds: float) -> None:
        """Report `seconds` of `phase` as a phase of their own."""
        self.seconds[phase] -= seconds
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def _tag(client: Any, image_id: str, repository: str, tag: str) -> None:
    failed = f"could not tag {image_id} as {repository}:{tag}"
    with map_exceptions({"docker-api": (DockerError, lambda exc: f"{failed}: {exc}")}):
        client.api.tag(image_id, repository, tag, force=True)
