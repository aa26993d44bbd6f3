"""Docker images of a Bento: tag scheme, labels, layered Dockerfile, build, push and pull.

Tag scheme (docs/contracts.md, contract 6)::

    <registry>/<name>:ctl-v<N>[.trt-v<M>].code-<sha7>[-dirty-<hash6>]

so both model versions and the code version are readable from the tag alone. After a push,
everything refers to the image as `<registry>/<name>@sha256:<digest>`.

Layers, most stable first, so that a code-only rebuild reuses everything but the last:

1. the platform base, `FROM <registry>/bentoship/base@sha256:...` (its own layers);
2. extra dependencies, only when the models need packages the base lacks: wheels prepared on
   the host for exactly that closure (`prepare_extras`), installed in a builder stage without
   network and copied to `/opt/extras`; the layer is reused while the closure is unchanged;
3. one layer per model version (`COPY models/<name>/v<N>/`);
4. the service code (the rest of the Bento), then one `LABEL` step (no layer).

The build uses the engine's classic builder, whose cache is the intermediate images: metadata
steps (`USER`, `EXPOSE`, `ENTRYPOINT`) come right after `FROM`, so they are cached too, and all
labels go into one `LABEL` instruction (passed as build labels, each would be a step of its own).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, ImageBuildError, PushError
from pipeline.models.integrity import file_sha256
from pipeline.progress import Echo
from pipeline.identity import BENTO_DIR, LABEL_PREFIX, OPENAPI_FILE, PORT, UID
from pipeline.progress import reporter

if TYPE_CHECKING:
    from pipeline.config import Settings

EXTRAS_DIR = "/opt/extras"
LAYER_GROUPS = ("base", "extras", "models", "code")
USER = str(UID)



# --- extra dependencies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Extras:
    """The packages the models need beyond the base image, with host-prepared wheels."""

    requirements: tuple[str, ...]  # exact pins of the whole closure, minus what the base has
    wheels: tuple[Path, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()

    def requirements_txt(self) -> str:
        hashes = {_wheel_name(w): file_sha256(w) for w in self.wheels}
        lines = [f"# extras closure sha256: {self.sha256}"]
        for req in self.requirements:
            lines.append(f"{req} --hash=sha256:{hashes[req.split('==')[0]]}")
        return "\n".join(lines) + "\n"


def prepare_extras(
    wanted: Sequence[str],
    base_pins: Mapping[str, str],
    dest: Path,
    settings: Settings,
    echo: Echo,
) -> Extras:
    """Resolve `wanted` against the base's pins and put wheels for the rest into `dest`.

    The closure is resolved on the host for the image's platform (`pip install --dry-run` with
    the base lock as constraints), so the base's packages are neither downloaded again nor
    duplicated in the layer. The resolution is kept in the wheel cache, keyed by the wanted
    requirements and the lock: the same extras resolve to the same pins, offline.
    Raises `ConfigError` (naming the packages) when no versions fit the base's pins.
    """
    from pipeline.build.base import prepare_wheels

    progress = reporter(echo)
    pins = _resolve_extras(wanted, base_pins, settings, progress)
    with progress.task(f"Preparing {len(pins)} wheel(s) for extra dependencies", len(pins),
                       "files") as task:
        def on_line(message: str) -> None:
            if message.strip().endswith(".whl"):
                task.advance(note=message.strip())

        wheels = prepare_wheels(list(pins), dest, no_deps=True, settings=settings, echo=on_line)
    return Extras(pins, tuple(wheels))


def _resolve_extras(
    wanted: Sequence[str], base_pins: Mapping[str, str], settings: Settings, echo: Echo
) -> tuple[str, ...]:
    from packaging.utils import canonicalize_name

    from pipeline.build.base import _PIP_TARGET  # the image's platform, as the base image uses it

    constraints = "".join(f"{n}=={v}\n" for n, v in sorted(base_pins.items()))
    key = hashlib.sha256(
        json.dumps([sorted(wanted), constraints, _PIP_TARGET]).encode()
    ).hexdigest()
    cached = settings.wheel_cache / "extras" / f"{key[:16]}.txt"
    if cached.is_file():
        return tuple(cached.read_text().split())
    echo(f"Resolving extra dependencies {', '.join(wanted)} against the base image's pins")
    pins = {canonicalize_name(n) for n in base_pins}
    settings.wheel_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="extras-", dir=settings.wheel_cache) as tmp:
        (Path(tmp) / "constraints.txt").write_text(constraints)
        (Path(tmp) / "requirements.txt").write_text("\n".join(wanted) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", f"{tmp}/report.json", "-r", f"{tmp}/requirements.txt",
               "-c", f"{tmp}/constraints.txt", "--disable-pip-version-check",
               "--progress-bar", "off", *_PIP_TARGET]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")]
            raise ConfigError(
                f"the models' extra requirements ({', '.join(wanted)}) cannot be installed next "
                "to the base image's pins (services/requirements.lock); nothing was built. "
                "pip says:\n  " + "\n  ".join(errors[-12:])
            )
        report = json.loads((Path(tmp) / "report.json").read_text())
    closure = sorted(
        f"{canonicalize_name(item['metadata']['name'])}=={item['metadata']['version']}"
        for item in report.get("install", [])
        if canonicalize_name(item["metadata"]["name"]) not in pins
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text("\n".join(closure) + "\n")
    return tuple(closure)


def _wheel_name(wheel: Path) -> str:
    from packaging.utils import canonicalize_name, parse_wheel_filename

    return str(canonicalize_name(parse_wheel_filename(wheel.name)[0]))


# --- the Dockerfile and its context ---------------------------------------------------------------


def render_dockerfile(
    base_ref: str, model_dirs: Sequence[str], extras: bool, labels: Mapping[str, str] | None = None
) -> str:
    lines = [
        "# Generated by bentoship: base, extra dependencies, one layer per model, code last.",
        f"FROM {base_ref} AS base",
    ]
    if extras:
        lines += [
            "FROM base AS extras",
            "USER root",
            "COPY extras/ /tmp/extras/",
            ("RUN python -m pip install --no-index --no-deps --require-hashes --no-cache-dir "
             f"--find-links /tmp/extras --target {EXTRAS_DIR} -r /tmp/extras/requirements.txt"),
        ]
    lines += [
        "FROM base",
        f"USER {USER}",
        f"EXPOSE {PORT}",
        f'ENTRYPOINT ["bentoml", "serve", "{BENTO_DIR}", "--host", "0.0.0.0", "--port", "{PORT}"]',
    ]
    if extras:
        lines += [f"COPY --from=extras {EXTRAS_DIR} {EXTRAS_DIR}", f"ENV PYTHONPATH={EXTRAS_DIR}"]
    for rel in model_dirs:
        lines.append(f"COPY {rel}/ {BENTO_DIR}/{rel}/")
    lines.append(f"COPY bento/ {BENTO_DIR}/")
    if labels:
        pairs = [f"{k}={_quote(v)}" for k, v in sorted(labels.items())]
        lines.append("LABEL " + " \\\n      ".join(pairs))
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """A Dockerfile word: double-quoted, with the characters the parser would interpret escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return '"' + re.sub(r"[\r\n]+", " ", escaped) + '"'


def write_docker_context(
    bento_dir: Path,
    dest: Path,
    base_ref: str,
    extras: Extras | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Lay out the Bento so each model version and the code land in their own layers."""
    dest.mkdir(parents=True, exist_ok=True)
    model_dirs: list[str] = []
    models_root = bento_dir / "models"
    for version_dir in sorted(p for p in models_root.glob("*/*") if p.is_dir()):
        rel = version_dir.relative_to(bento_dir).as_posix()
        shutil.copytree(version_dir, dest / rel)
        _drop_host_paths(dest / rel)
        model_dirs.append(rel)
    for name_dir in sorted(p for p in models_root.glob("*") if p.is_dir()):
        for f in name_dir.iterdir():  # e.g. the `latest` pointer file
            if f.is_file():
                target = dest / "bento" / f.relative_to(bento_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
    shutil.copytree(bento_dir, dest / "bento", ignore=_ignore_models(bento_dir), dirs_exist_ok=True)
    if extras is not None:
        (dest / "extras").mkdir()
        for wheel in extras.wheels:
            shutil.copy2(wheel, dest / "extras" / wheel.name)
        (dest / "extras" / "requirements.txt").write_text(extras.requirements_txt())
    (dest / "Dockerfile").write_text(
        render_dockerfile(base_ref, model_dirs, extras is not None, labels)
    )
    return dest


_HOST_ARTIFACT_PATH = re.compile(r"^artifact_path: *(?:file:|/).*$", re.MULTILINE)


def _drop_host_paths(model_dir: Path) -> None:
    """MLflow writes the artifact location into `MLmodel`: with a local store, a host path.

    It is replaced by the model's registry URI (nothing reads it when loading a model folder);
    the manifest label still describes the artifacts as registered.
    """
    mlmodel = model_dir / "mlflow_model" / "MLmodel"
    if not mlmodel.is_file():
        return
    text = mlmodel.read_text()
    if not _HOST_ARTIFACT_PATH.search(text):
        return
    source = "unknown"
    meta = re.search(r"^  source: *(\S+)$", (model_dir / "model.yaml").read_text(), re.MULTILINE) \
        if (model_dir / "model.yaml").is_file() else None
    if meta:
        source = meta.group(1)
    mlmodel.write_text(_HOST_ARTIFACT_PATH.sub(f"artifact_path: {source}", text))


def _ignore_models(bento_dir: Path) -> Callable[[str, list[str]], list[str]]:
    def ignore(directory: str, names: list[str]) -> list[str]:
        return ["models"] if Path(directory) == bento_dir else []

    return ignore


# --- engine: build, inspect, push, pull -----------------------------------------------------------

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def build(client: Any, context: Path, echo: Echo) -> str:
    """Build the context with the Docker SDK, without network; return the image id.

    The image gets no tag here: it is tagged only after the smoke test passes, so a tag never
    points at an image that failed.
    """
    import docker.errors

    image_id = ""
    log: list[str] = []
    progress = reporter(echo)
    try:
        with progress.task("Building the image (no network)", None, "steps") as task:
            stream = client.api.build(
                path=str(context),
                network_mode="none",
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise ImageBuildError(_build_message(chunk["error"], log))
                text = chunk.get("stream", "").rstrip()
                if text:
                    log.append(text)
                    step = _STEP.match(text)
                    if step:
                        task.update(int(step[1]) - 1, total=int(step[2]),
                                    note=text.split("\n")[0][:110])
                aux = chunk.get("aux") or {}
                if "ID" in aux:
                    image_id = aux["ID"]
    except docker.errors.APIError as exc:
        raise ImageBuildError(_build_message(str(exc.explanation or exc), log)) from exc
    if not image_id:
        raise ImageBuildError(
            "docker build finished without reporting an image id:\n" + "\n".join(log[-15:])
        )
    return image_id


def _build_message(error: str, log: list[str]) -> str:
    tail = "\n".join(log[-15:])
    hint = ""
    if "no space left on device" in error:
        hint = ("\nThe Docker engine's disk is full: see `docker system df`, then free space "
                "with `docker image prune` / `docker builder prune`.")
    return f"docker build failed: {error.strip()}{hint}\nNo image was tagged.\n{tail}"


@dataclass(frozen=True)
class Layer:
    group: str  # one of LAYER_GROUPS
    diff_id: str  # "sha256:...", the layer's content digest (RootFS.Layers)
    size: int
    created_by: str


def layers(client: Any, image: str) -> list[Layer]:
    """The image's layers, oldest first, each with its group (base, extras, models or code).

    From `docker history`: an instruction makes a layer when it runs a command or copies files;
    the destination of a copy tells the group (`/opt/extras`, `<bento>/models/`, `<bento>/`),
    everything else is the base's.
    """
    history = list(reversed(client.api.history(image)))
    diff_ids = client.api.inspect_image(image)["RootFS"]["Layers"]
    made = [h for h in history if _makes_layer(str(h.get("CreatedBy", "")))]
    if len(made) != len(diff_ids):  # an unexpected history: report sizes without digests
        diff_ids = [""] * len(made)
    return [
        Layer(_group(str(h.get("CreatedBy", ""))), diff_id, int(h.get("Size", 0)),
              str(h.get("CreatedBy", ""))[:200])
        for h, diff_id in zip(made, diff_ids)
    ]


def group_sizes(found: Sequence[Layer]) -> dict[str, int]:
    sizes = dict.fromkeys(LAYER_GROUPS, 0)
    for layer in found:
        sizes[layer.group] += layer.size
    return sizes


def _makes_layer(created_by: str) -> bool:
    if "#(nop)" not in created_by:
        return True
    return bool(re.search(r"#\(nop\)\s+(COPY|ADD) ", created_by))


def _group(created_by: str) -> str:
    if f" in {EXTRAS_DIR}" in created_by:
        return "extras"
    if f" in {BENTO_DIR}/models/" in created_by:
        return "models"
    if f" in {BENTO_DIR}/" in created_by:
        return "code"
    return "base"


def push(client: Any, repository: str, tag: str, echo: Echo) -> str:
    """Push `repository:tag`; return the registry's manifest digest (`sha256:...`)."""
    import docker.errors

    digest = ""
    progress = reporter(echo)
    sent: dict[str, int] = {}
    sizes: dict[str, int] = {}
    try:
        with progress.task(f"Pushing {repository}:{tag}", None, "bytes") as task:
            for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise PushError(push_message(repository, chunk["error"]))
                aux = chunk.get("aux") or {}
                if "Digest" in aux:
                    digest = aux["Digest"]
                status, layer = chunk.get("status", ""), chunk.get("id", "")
                detail = chunk.get("progressDetail") or {}
                if status == "Pushing" and detail.get("total"):
                    sent[layer], sizes[layer] = int(detail.get("current", 0)), int(detail["total"])
                    task.update(sum(sent.values()), total=sum(sizes.values()))
                elif status in ("Pushed", "Layer already exists") or status.startswith("Mounted"):
                    if layer in sizes:
                        sent[layer] = sizes[layer]
                    task.update(sum(sent.values()), note=f"{layer}: {status}")
    except docker.errors.APIError as exc:
        raise PushError(push_message(repository, str(exc.explanation or exc))) from exc
    if not digest:
        raise PushError(f"pushing {repository}:{tag} reported no digest; nothing was recorded")
    return digest


def pull(client: Any, repository: str, digest: str, tag: str, echo: Echo) -> Any:
    """Pull `repository@digest`, tag it `repository:tag` locally and return the image."""
    import docker.errors

    progress = reporter(echo)
    got: dict[str, int] = {}
    sizes: dict[str, int] = {}
    try:
        with progress.task(f"Pulling {repository}@{digest[:19]}", None, "bytes") as task:
            for chunk in client.api.pull(f"{repository}@{digest}", stream=True, decode=True):
                if "error" in chunk:
                    raise PushError(f"pulling {repository}@{digest} failed: {chunk['error']}")
                detail = chunk.get("progressDetail") or {}
                if chunk.get("status") == "Downloading" and detail.get("total"):
                    layer = chunk.get("id", "")
                    got[layer], sizes[layer] = int(detail.get("current", 0)), int(detail["total"])
                    task.update(sum(got.values()), total=sum(sizes.values()))
        pulled = client.images.get(f"{repository}@{digest}")
        client.api.tag(pulled.id, repository, tag, force=True)
    except docker.errors.APIError as exc:
        raise PushError(f"pulling {repository}@{digest} failed: {exc.explanation or exc}") from exc
    return client.images.get(pulled.id)


def push_message(repository: str, error: str) -> str:
    """What a user reads when the registry refused a push or could not be reached."""
    registry = repository.split("/", 1)[0]
    hint = ""
    lowered = error.lower()
    if any(s in lowered for s in ("connection refused", "no such host", "dial tcp",
                                  "not reachable", "timed out")):
        hint = (
            f" The registry {registry} is not reachable: start the local one with "
            "`bash ci/setup.sh` or set BENTOSHIP_REGISTRY."
        )
    return f"pushing {repository} failed: {error.strip()}.{hint} Nothing was recorded as released."
