"""The platform's base image: the serving runtime of `services/requirements.lock`, a non-root user.

The lock's wheels are prepared on the host (`wheels.prepare_wheels`) and installed with
`pip install --no-index` in a build that runs without a network. `ensure_base_image` tags the
result `bentoship/base:<first 12 hex of the lock's sha256>`, reuses it while the lock,
`Dockerfile.base` and the root image are unchanged, and pushes it to the OCI registry when that
answers, so service Dockerfiles can say `FROM <registry>/bentoship/base@sha256:...`.

    bentoship base     # build (or reuse) the base image and print its reference
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound
from docker.models.images import Image

from pipeline.build import credentials, oci
from pipeline.build.wheels import parse_requirements, prepare_wheels
from pipeline.errors import ImageBuildError, PipelineError, PushError, map_exceptions
from pipeline.identity import LABEL_PREFIX
from pipeline.progress import Echo, to_stderr
from pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = REPO_ROOT / "services" / "requirements.lock"
DOCKERFILE = REPO_ROOT / "Dockerfile.base"

ROOT_IMAGE = "bentoship/python-root:3.11-bookworm"
"""Debian bookworm with CPython 3.11; made (or pulled) by `ci/setup.sh`."""
BASE_REPOSITORY = "bentoship/base"
LOCK_LABEL = f"{LABEL_PREFIX}.base.lock_sha256"
RECIPE_LABEL = f"{LABEL_PREFIX}.base.recipe_sha256"
ROOT_LABEL = f"{LABEL_PREFIX}.base.root_image_id"


@dataclass(frozen=True)
class BaseImage:
    """The base image service images are built `FROM`."""

    ref: str
    """`<registry>/bentoship/base@sha256:...` once pushed, else the local `bentoship/base:<lock12>`."""
    image_id: str
    """The local image id, `sha256:...`."""
    lock_sha256: str
    """sha256 of the `services/requirements.lock` installed in it."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PipelineError(
            f"cannot read {path} (bentoship runs from its checkout): {exc}"
        ) from exc


def lock_pins() -> dict[str, str]:
    """Canonical package name -> pinned version, from `services/requirements.lock`."""
    reqs = parse_requirements(_read(LOCK_FILE).decode().splitlines(), str(LOCK_FILE))
    return {r.name: str(r.version) for r in reqs if r.version is not None}


def _get(client: docker.DockerClient, ref: str) -> Image | None:
    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


def _build(
    client: docker.DockerClient, settings: Settings, tag: str, buildargs: dict[str, str], echo: Echo
) -> Image:
    settings.home.mkdir(parents=True, exist_ok=True)
    # Inside the state folder so wheels are hard-linked from the cache rather than copied.
    with tempfile.TemporaryDirectory(prefix="base-context-", dir=settings.home) as tmp:
        context = Path(tmp)
        shutil.copy2(DOCKERFILE, context / "Dockerfile.base")
        shutil.copy2(LOCK_FILE, context / "requirements.lock")
        wheels = prepare_wheels(LOCK_FILE, context / "wheels", settings=settings, echo=echo)
        echo(f"building {tag} from {buildargs['ROOT_IMAGE']} with {len(wheels)} wheels, no network")
        started = time.monotonic()
        image_id, errors = None, []
        try:
            for chunk in client.api.build(
                path=str(context),
                dockerfile="Dockerfile.base",
                tag=tag,
                buildargs=buildargs,
                network_mode="none",
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            ):
                for line in chunk.get("stream", "").splitlines():
                    if line.strip():
                        echo(f"  {line.rstrip()}")
                if "error" in chunk:
                    errors.append(str(chunk["error"]).strip())
                image_id = chunk.get("aux", {}).get("ID", image_id)
        except DockerException as exc:
            errors.append(str(exc))
    if errors or image_id is None:
        detail = "\n".join(errors) or "the engine reported no image"
        raise ImageBuildError(f"building the base image {tag} failed:\n{detail}")
    echo(f"built {tag} ({image_id[7:19]}) in {time.monotonic() - started:.0f} s")
    return client.images.get(image_id)


def _pushed(
    image: Image, registry: str, tag: str, docker_config: Path | None = None
) -> str | None:
    """`repository@digest` when the registry already serves this very image under `tag`.

    The image's RepoDigests record what an earlier push got; the registry still having that
    digest under the tag means there is nothing to push (a wiped registry gets a new push).
    """
    repository = f"{registry}/{BASE_REPOSITORY}"
    known = {d.partition("@")[2] for d in image.attrs.get("RepoDigests") or []
             if d.partition("@")[0] == repository}
    if not known:
        return None
    try:
        remote = oci.find(repository, tag.rsplit(":", 1)[1], docker_config=docker_config)
    except PipelineError:
        return None
    if remote is None or remote.digest not in known:
        return None
    return f"{repository}@{remote.digest}"


def _push(
    client: docker.DockerClient, image: Image, registry: str, tag: str, echo: Echo,
    docker_config: Path | None = None,
) -> str:
    repository = f"{registry}/{BASE_REPOSITORY}"
    version = tag.rsplit(":", 1)[1]
    echo(f"pushing {repository}:{version}")
    image.tag(repository, tag=version)
    digest = None
    failed = f"pushing {repository}:{version} failed"
    with map_exceptions({"docker": (PushError, lambda exc: f"{failed}: {exc}")}):
        creds = credentials.for_registry(registry, docker_config)
        auth = {"auth_config": creds.auth_config()} if creds is not None else {}
        for chunk in client.images.push(repository, tag=version, stream=True, decode=True,
                                        **auth):
            if "error" in chunk:
                raise PushError(f"{failed}: {chunk['error']}")
            digest = chunk.get("aux", {}).get("Digest", digest)
    if digest is None:
        raise PushError(f"pushing {repository}:{version}: the registry returned no digest")
    return f"{repository}@{digest}"


def ensure_base_image(
    client: docker.DockerClient,
    settings: Settings,
    *,
    push: bool = True,
    echo: Echo = to_stderr,
) -> BaseImage:
    """Build the base image unless a current one exists, push it if the registry answers.

    A local `bentoship/base:<lock12>` is reused while its labels match the lock, `Dockerfile.base`
    and the root image. Otherwise the lock's wheels are prepared on the host and the image is
    built from `bentoship/python-root:3.11-bookworm` without network. With `push`, and when
    `settings.oci_registry` answers, it is pushed and referred to by digest; when the registry is
    down the local tag is returned instead of failing.
    """
    lock_sha = hashlib.sha256(_read(LOCK_FILE)).hexdigest()
    recipe_sha = hashlib.sha256(_read(DOCKERFILE)).hexdigest()
    tag = f"{BASE_REPOSITORY}:{lock_sha[:12]}"
    lookup = "cannot look up images in the Docker engine"
    with map_exceptions({"docker": (ImageBuildError, lambda exc: f"{lookup}: {exc}")}):
        root = _get(client, ROOT_IMAGE)
        image = _get(client, tag)

    labels = (image.labels or {}) if image is not None else {}
    stale = [
        what
        for what, ok in [
            ("services/requirements.lock", labels.get(LOCK_LABEL) == lock_sha),
            ("Dockerfile.base", labels.get(RECIPE_LABEL) == recipe_sha),
            (ROOT_IMAGE, root is None or labels.get(ROOT_LABEL) == root.id),
        ]
        if not ok
    ]
    if image is not None and not stale:
        echo(f"base image {tag} ({image.short_id[7:]}) is present locally: reusing it")
    else:
        if root is None:
            raise ImageBuildError(
                f"the root image {ROOT_IMAGE} is missing, so the base image {tag} cannot be "
                "built: run `bash ci/setup.sh` (it pulls or debootstraps the root image)"
            )
        if image is not None:
            echo(f"base image {tag} is out of date ({', '.join(stale)} changed): rebuilding it")
        buildargs = {
            "ROOT_IMAGE": ROOT_IMAGE,
            "LOCK_SHA256": lock_sha,
            "RECIPE_SHA256": recipe_sha,
            "ROOT_IMAGE_ID": root.id,
        }
        image = _build(client, settings, tag, buildargs, echo)

    ref = tag
    if push:
        if oci.answers(settings.oci_registry):
            ref = _pushed(image, settings.oci_registry, tag, settings.docker_config) or _push(
                client, image, settings.oci_registry, tag, echo, settings.docker_config
            )
        else:
            echo(
                f"registry {settings.oci_registry} does not answer: using the local tag {tag} "
                "(`bash ci/setup.sh` starts the registry)"
            )
    return BaseImage(ref=ref, image_id=image.id, lock_sha256=lock_sha)
