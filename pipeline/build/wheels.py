"""Wheels for the image's platform (CPython 3.11, glibc x86_64), prepared on the host.

Images are built hermetically: wheels are downloaded on the host into the wheel cache
(`prepare_wheels`), copied into a temporary build context and installed in the image with
`pip install --no-index`; the build itself runs without a network. TLS fails inside containers
on our machines, and an air-gapped CI needs the same anyway. The base image (`base.py`) and the
models' extra dependencies (`extras.py`) both get their wheels here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from pipeline.errors import PipelineError
from pipeline.models.integrity import file_sha256
from pipeline.progress import Echo, to_stderr
from pipeline.settings import Settings, load_settings

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
# pip's options for that platform (`pip download`, `pip install --dry-run`).
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
PIP_TARGET += ["--abi", "cp311", *(arg for p in _PLATFORMS for arg in ("--platform", p))]


@dataclass(frozen=True)
class RequirementLine:
    """One requirement for the image's platform, as pip is given it."""

    spec: str  # what pip is given: name[extras]specifier, without markers or options
    name: str  # canonical
    version: Version | None  # set when pinned with a plain `==`
    hashes: frozenset[str]  # allowed sha256 digests, empty when unhashed


# --- requirements --------------------------------------------------------------------------------


def parse_requirements(lines: list[str], source: str) -> list[RequirementLine]:
    """Requirement lines (pip's file syntax: continuations, comments, `--hash`) for the image."""
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    result: list[RequirementLine] = []
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
            RequirementLine(
                f"{req.name}{extras}{req.specifier}", canonicalize_name(req.name), version, hashes
            )
        )
    return result


# --- wheels --------------------------------------------------------------------------------------


def _fits(path: Path) -> tuple[str, Version] | None:
    """(name, version) of a wheel that installs on the image's platform, else None."""
    try:
        name, version, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return (name, version) if tags & _TAGS else None


def _cached(req: RequirementLine, cache: Path) -> Path | None:
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


def _download(reqs: list[RequirementLine], cache: Path, no_deps: bool, echo: Echo) -> list[Path]:
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
            code, output = _pip(args + PIP_TARGET + (["--no-deps"] if no_deps else []), echo)
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
    echo: Echo = to_stderr,
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
        reqs = parse_requirements(lines, str(requirements))
    else:
        reqs = parse_requirements(list(requirements), "requirements")
    cache = settings.wheel_cache
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)

    wheels: list[Path] = []
    missing: list[RequirementLine] = []
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
