"""The service an image serves: its configuration, its OpenAPI document, the version of its code.

`service_config` derives `services/bentoship.json` (contract 2) from the request and the models'
signatures; `service_openapi` is the document the service will serve at `/docs.json`, built by
the template's own `openapi.py`. A copy of the template outside the checkout (tests, benchmarks)
has no git commit, so `content_version` names its code by a hash of its files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.build.bento import TEMPLATE_IGNORE, ModelInfo
from pipeline.errors import ConfigError
from pipeline.identity import CodeVersion

if TYPE_CHECKING:
    from pipeline.build.plan import BuildRequest


def service_config(
    req: BuildRequest, name: str, tag: str, code_label: str,
    infos: list[ModelInfo], weights: tuple[int, int],
) -> dict[str, Any]:
    """The service's configuration (`services.config.ServiceConfig`, contract 2), as a dict,
    without `output` and `hooks`: the load check finds those from the models and the hook
    module (`loadcheck.check_models`)."""
    first = infos[0].example_rows[0] if infos[0].example_rows else {}
    return {
        "name": name,
        "code_version": code_label,
        "image_tag": tag,
        "features": [{**f, "example": first.get(f["name"])} for f in infos[0].features],
        "variants": [
            {
                "name": info.variant,
                "model_tag": info.bento_tag,
                "registered_name": info.version.name,
                "version": info.version.version,
                "run_id": info.version.run_id,
                "flavor": info.flavor,
                "weight": weight,
            }
            for info, weight in zip(infos, weights)
        ],
        "routing": {
            "salt": req.salt or name,
            "key_field": req.build_config.service.key_field,
            "key_header": "x-bentoship-key",
            "override_header": "x-bentoship-variant",
        },
        "max_rows": req.max_rows,
        "allow_pickle": req.allow_pickle,
        "trusted_types": list(req.all_trusted_types),
        "threshold": req.threshold,
        "batching": req.build_config.service.batching.model_dump(),
    }


_SPEC_SCRIPT = """
import json, sys
from pathlib import Path
from services.config import ServiceConfig
from services.openapi import build_spec
config = ServiceConfig.model_validate_json(Path("config.json").read_text())
Path("spec.json").write_text(json.dumps(build_spec(config)))
"""


def service_openapi(config: dict[str, Any], services_dir: Path | None) -> dict[str, Any]:
    """`services.openapi.build_spec` of the service template the image is built from."""
    with tempfile.TemporaryDirectory(prefix="bentoship-spec-") as tmp:
        return start_service_openapi(config, services_dir, Path(tmp))()


def start_service_openapi(
    config: dict[str, Any], services_dir: Path | None, scratch: Path,
) -> Callable[[], dict[str, Any]]:
    """`service_openapi`, begun now and waited for when called. Another copy of the template
    than the checkout's is imported in a child (~0.3 s), which then runs beside the build, in
    `scratch` (a folder of the caller's, removed by it): its input and answer are files there,
    so a child nobody waits for never blocks on a pipe."""
    from services.config import ServiceConfig

    validated = ServiceConfig.model_validate(config)
    if services_dir is None:
        from services.openapi import build_spec

        spec = build_spec(validated)
        return lambda: spec
    # Another copy of the template: its own openapi.py decides, imported as `services`.
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "services").symlink_to(services_dir.resolve(), target_is_directory=True)
    (scratch / "config.json").write_text(validated.model_dump_json())
    with (scratch / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SPEC_SCRIPT], cwd=scratch, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(scratch)},
        )

    @functools.cache
    def result() -> dict[str, Any]:
        if proc.wait() != 0:
            lines = (scratch / "stderr.txt").read_text().strip().splitlines()
            raise ConfigError(f"{services_dir}/openapi.py cannot build the service's spec "
                              f"(exit {proc.returncode}):\n" + "\n".join(lines[-10:]))
        return dict(json.loads((scratch / "spec.json").read_text()))

    return result


def content_version(services_dir: Path, hooks_file: Path | None = None) -> CodeVersion:
    """The code version of a service template outside the checkout: a hash of its files (and
    of the hook file it is built with)."""
    if not (services_dir / "service.py").is_file():
        raise ConfigError(f"{services_dir} holds no service.py: it is not a copy of services/")
    digest = hashlib.sha256()
    for path in sorted(p for p in services_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(services_dir)
        if TEMPLATE_IGNORE(str(path.parent), [path.name]) or "__pycache__" in rel.parts:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    if hooks_file is not None:
        digest.update(b"hooks\0" + hooks_file.read_bytes() + b"\0")
    return CodeVersion(sha="", dirty=False, label=f"src-{digest.hexdigest()[:7]}")
