"""The models' extra dependencies: what they need beyond the base image, as host-prepared wheels.

When the models' requirements name packages the base image lacks, their closure is resolved on
the host against the base's pins (`prepare_extras`) and its wheels are prepared
(`wheels.prepare_wheels`); the image installs them without network in a builder stage and copies
them to `image.EXTRAS_DIR`, one layer reused while the closure is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.build.wheels import PIP_TARGET, prepare_wheels
from pipeline.errors import ConfigError
from pipeline.models.integrity import file_sha256
from pipeline.progress import Echo, reporter

if TYPE_CHECKING:
    from pipeline.settings import Settings


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

    constraints = "".join(f"{n}=={v}\n" for n, v in sorted(base_pins.items()))
    key = hashlib.sha256(
        json.dumps([sorted(wanted), constraints, PIP_TARGET]).encode()
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
               "--progress-bar", "off", *PIP_TARGET]
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
