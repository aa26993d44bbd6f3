"""The platform's base image: the serving runtime of `services/requirements.lock`, a non-root user.

Images are built hermetically. Wheels for the image's platform (CPython 3.11, glibc x86_64) are
downloaded on the host into the wheel cache (`prepare_wheels`), copied into a temporary build
context and installed in the image with `pip install --no-index`; the build itself runs without a
network. TLS fails inside containers on our machines, and an air-gapped CI needs the same anyway.

`ensure_base_image` tags the result `bentoship/base:<first 12 hex of the lock's sha256>`, reuses
it while the lock, `Dockerfile.base` and the root image are unchanged, and pushes it to the OCI
registry when that answers, so service Dockerfiles can say `FROM <registry>/bentoship/base@sha256:...`.

    python -m pipeline.base     # build (or reuse) the base image and print its reference
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound
from docker.models.images import Image
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from pipeline.build import oci
from pipeline.models.integrity import file_sha256
from pipeline.progress import Echo
from pipeline.errors import ImageBuildError, PipelineError, PushError
from pipeline.config import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = REPO_ROOT / "services" / "requirements.lock"
DOCKERFILE = REPO_ROOT / "Dockerfile.base"

ROOT_IMAGE = "bentoship/python-root:3.11-bookworm"
"""Debian bookworm with CPython 3.11; made (or pulled) by `ci/setup.sh`."""
BASE_REPOSITORY = "bentoship/base"
LOCK_LABEL = "io.bentoship.base.lock_sha256"
RECIPE_LABEL = "io.bentoship.base.recipe_sha256"
ROOT_LABEL = "io.bentoship.base.root_image_id"

# The image's platform. Bookworm has glibc 2.36, so every manylinux up to 2.36 runs on it.
_PY = (3, 11)
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
_TAGS: frozenset[Tag] = frozenset(
    [
        *cpython_tags(_PY, abis=["cp311"], platforms=_PLATFORMS),
        *compatible_tags(_PY, "cp311", _PLATFORMS),
    ]
)
_MARKER_ENV = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
}
_TARGET = "CPython 3.11 / manylinux x86_64"
_PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
_PIP_TARGET += ["--abi", "cp311", *(arg for p in _PLATFORMS for arg in ("--platform", p))]



def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BaseImage:
    """The base image service images are built `FROM`."""

    ref: str
    """`<registry>/bentoship/base@sha256:...` once pushed, else the local `bentoship/base:<lock12>`."""
    image_id: str
    """The local image id, `sha256:...`."""
    lock_sha256: str
    """sha256 of the `services/requirements.lock` installed in it."""


@dataclass(frozen=True)
class _Requirement:
    spec: str  # what pip is given: name[extras]specifier, without markers or options
    name: str  # canonical
    version: Version | None  # set when pinned with a plain `==`
    hashes: frozenset[str]  # allowed sha256 digests, empty when unhashed


# --- requirements --------------------------------------------------------------------------------


def _parse_requirements(lines: list[str], source: str) -> list[_Requirement]:
    """Requirement lines (pip's file syntax: continuations, comments, `--hash`) for the image."""
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    result: list[_Requirement] = []
    for raw in logical.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line or line.startswith("-"):
            continue
        words = line.split()
        options = [w for w in words if w.startswith("--")]
        text = " ".join(w for w in words if not w.startswith("--"))
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise PipelineError(f"{source}: cannot parse requirement {text!r}: {exc}") from exc
        if req.url:
            raise PipelineError(f"{source}: {text!r} is a URL requirement; pin a version instead")
        if req.marker is not None and not req.marker.evaluate(_MARKER_ENV):
            continue
        specs = list(req.specifier)
        version = None
        if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
            version = Version(specs[0].version)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        hashes = frozenset(o.split(":", 1)[1] for o in options if o.startswith("--hash=sha256:"))
        result.append(
            _Requirement(
                f"{req.name}{extras}{req.specifier}", canonicalize_name(req.name), version, hashes
            )
        )
    return result


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PipelineError(
            f"cannot read {path} (bentoship runs from its checkout): {exc}"
        ) from exc


def lock_pins() -> dict[str, str]:
    """Canonical package name -> pinned version, from `services/requirements.lock`."""
    reqs = _parse_requirements(_read(LOCK_FILE).decode().splitlines(), str(LOCK_FILE))
    return {r.name: str(r.version) for r in reqs if r.version is not None}


# --- wheels --------------------------------------------------------------------------------------


def _fits(path: Path) -> tuple[str, Version] | None:
    """(name, version) of a wheel that installs on the image's platform, else None."""
    try:
        name, version, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return (name, version) if tags & _TAGS else None


def _cached(req: _Requirement, cache: Path) -> Path | None:
    """A cached wheel that satisfies an exact pin (and its hashes), if there is one."""
    if req.version is None:
        return None
    for path in sorted(cache.glob("*.whl")):
        if _fits(path) == (req.name, req.version) and (
            not req.hashes or file_sha256(path) in req.hashes
        ):
            return path
    return None


def _pip(args: list[str], echo: Echo) -> tuple[int, str]:
    """Run the host's pip; echo the files it fetches; return its exit code and output."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        *args,
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith(("Saved ", "File was already downloaded ")):
            echo(f"  {Path(line.split()[-1]).name}")
    return proc.wait(), "".join(output)


def _build_pure_wheel(spec: str, into: Path, echo: Echo) -> Path:
    """Build a wheel on the host for a package without one; only pure Python is accepted."""
    with tempfile.TemporaryDirectory(dir=into) as tmp:
        echo(f"  {spec} has no wheel for {_TARGET}: building one on the host")
        code, output = _pip(["wheel", "--no-deps", "--wheel-dir", tmp, spec], echo)
        built = sorted(Path(tmp).glob("*.whl"))
        if code != 0 or not built:
            raise PipelineError(
                f"{spec} has no wheel for {_TARGET} and building one failed:\n{output[-2000:]}"
            )
        wheel = built[0]
        tags = parse_wheel_filename(wheel.name)[3]
        if not all(t.abi == "none" and t.platform == "any" for t in tags):
            raise PipelineError(
                f"{spec} has no wheel for {_TARGET} and is not pure Python ({wheel.name}): it "
                "cannot be built for the image here; pick a version that publishes manylinux wheels"
            )
        target = into / wheel.name
        shutil.move(wheel, target)
        return target


def _download(reqs: list[_Requirement], cache: Path, no_deps: bool, echo: Echo) -> list[Path]:
    """Fetch wheels for `reqs` (and their dependencies unless `no_deps`) into `cache`."""
    hashed = all(r.hashes for r in reqs)
    lines = [
        r.spec + "".join(f" --hash=sha256:{h}" for h in sorted(r.hashes) if hashed) for r in reqs
    ]
    built: set[str] = set()
    while True:
        with tempfile.TemporaryDirectory(prefix="download-", dir=cache) as tmp:
            req_file = Path(tmp) / "requirements.txt"
            req_file.write_text("\n".join(lines) + "\n")
            got = Path(tmp) / "got"
            # --find-links: wheels built below for pure-Python packages without one are found there.
            args = ["download", "--dest", str(got), "--find-links", str(cache), "-r", str(req_file)]
            code, output = _pip(args + _PIP_TARGET + (["--no-deps"] if no_deps else []), echo)
            if code == 0:
                fetched = []
                for wheel in sorted(got.glob("*.whl")):
                    if not (cache / wheel.name).exists():
                        os.replace(wheel, cache / wheel.name)
                    fetched.append(cache / wheel.name)
                return fetched
        missing = re.search(r"No matching distribution found for (\S+)", output)
        if not missing:
            raise PipelineError(f"pip could not download wheels for {_TARGET}:\n{output[-3000:]}")
        spec = missing.group(1)
        name = canonicalize_name(re.split(r"[\[<>=!~;]", spec, maxsplit=1)[0])
        req = next((r for r in reqs if r.name == name), None)
        if req is not None and req.hashes:
            raise PipelineError(
                f"{req.spec} has no wheel for {_TARGET}: its locked hashes are for the sdist, so a "
                "wheel built here would not match them; lock a version that publishes such a wheel"
            )
        if name in built:
            raise PipelineError(f"pip could not use the wheel built for {spec}:\n{output[-3000:]}")
        _build_pure_wheel(req.spec if req else spec, cache, echo)
        built.add(name)


def prepare_wheels(
    requirements: Path | list[str],
    dest: Path,
    *,
    no_deps: bool = True,
    settings: Settings | None = None,
    echo: Echo = _stderr,
) -> list[Path]:
    """Put wheels for `requirements` that install on the image's platform into `dest`.

    `requirements` is a requirements file (hashes are checked when it has them) or a list of
    requirement strings. Wheels are downloaded on the host (`pip download --only-binary=:all:`
    for CPython 3.11 / manylinux x86_64) into `settings.wheel_cache`, where exact pins are found
    again without any network, and hard-linked (or copied) into `dest`. A package without such
    a wheel is built on the host if it is pure Python; otherwise `PipelineError` names it.
    With `no_deps=False` pip also resolves and fetches their dependencies.
    """
    settings = settings or load_settings()
    if isinstance(requirements, Path):
        try:
            lines = requirements.read_text().splitlines()
        except OSError as exc:
            raise PipelineError(f"cannot read requirements {requirements}: {exc}") from exc
        reqs = _parse_requirements(lines, str(requirements))
    else:
        reqs = _parse_requirements(list(requirements), "requirements")
    cache = settings.wheel_cache
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)

    wheels: list[Path] = []
    missing: list[_Requirement] = []
    for req in reqs:
        hit = _cached(req, cache) if no_deps else None
        if hit is None:
            missing.append(req)
        else:
            wheels.append(hit)
    if missing:
        echo(f"downloading {len(missing)} wheel(s) for {_TARGET} into {cache}")
        started = time.monotonic()
        wheels += _download(missing, cache, no_deps, echo)
        echo(f"downloaded {len(missing)} wheel(s) in {time.monotonic() - started:.0f} s")
    else:
        echo(f"all {len(wheels)} wheel(s) found in {cache}")

    placed = []
    for wheel in dict.fromkeys(wheels):
        target = dest / wheel.name
        if not target.exists():
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
        placed.append(target)
    return sorted(placed)


# --- the image -----------------------------------------------------------------------------------


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


def _pushed(image: Image, registry: str, tag: str) -> str | None:
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
        remote = oci.find(repository, tag.rsplit(":", 1)[1])
    except PipelineError:
        return None
    if remote is None or remote.digest not in known:
        return None
    return f"{repository}@{remote.digest}"


def _push(client: docker.DockerClient, image: Image, registry: str, tag: str, echo: Echo) -> str:
    repository = f"{registry}/{BASE_REPOSITORY}"
    version = tag.rsplit(":", 1)[1]
    echo(f"pushing {repository}:{version}")
    image.tag(repository, tag=version)
    digest = None
    try:
        for chunk in client.images.push(repository, tag=version, stream=True, decode=True):
            if "error" in chunk:
                raise PushError(f"pushing {repository}:{version} failed: {chunk['error']}")
            digest = chunk.get("aux", {}).get("Digest", digest)
    except DockerException as exc:
        raise PushError(f"pushing {repository}:{version} failed: {exc}") from exc
    if digest is None:
        raise PushError(f"pushing {repository}:{version}: the registry returned no digest")
    return f"{repository}@{digest}"


def ensure_base_image(
    client: docker.DockerClient,
    settings: Settings,
    *,
    push: bool = True,
    echo: Echo = _stderr,
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
    try:
        root = _get(client, ROOT_IMAGE)
        image = _get(client, tag)
    except DockerException as exc:
        raise ImageBuildError(f"cannot look up images in the Docker engine: {exc}") from exc

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
            ref = _pushed(image, settings.oci_registry, tag) or _push(
                client, image, settings.oci_registry, tag, echo
            )
        else:
            echo(
                f"registry {settings.oci_registry} does not answer: using the local tag {tag} "
                "(`bash ci/setup.sh` starts the registry)"
            )
    return BaseImage(ref=ref, image_id=image.id, lock_sha256=lock_sha)


def main() -> int:
    """Ensure the base image and print its reference on stdout (progress goes to stderr)."""
    from pipeline.build.engine import connect

    try:
        base = ensure_base_image(connect(), load_settings())
    except PipelineError as exc:
        _stderr(f"Error: {exc}")
        return 1
    print(base.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
