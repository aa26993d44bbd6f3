"""The Bento's builder: a child process that imports BentoML before it has anything to build.

BentoML's import takes ~0.8 s of a core. `bentoship build` starts this child first thing
(`Starter`, before its own imports), so the import runs on the other core while the command
imports, resolves and plans; `pipeline.build.bento.make_bento` then sends it the arguments on
stdin. Kept apart from `bento.py` (YAML, the service's flavors) so starting it costs the command
nothing but `subprocess`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Self

# Imports BentoML first, then waits for its arguments on stdin (see `make_bento` for them).
_BUILD_SCRIPT = """
import gc, json, os, shutil, sys
gc.disable()  # a child of seconds: collections only slowed its imports
import bentoml, bentoml.bentos, bentoml.models
bentoml.service, bentoml.asgi_app  # BentoML loads these lazily: now, while it waits
# What the build imports after its arguments come (the service module's web stack, BentoML's
# requirement parsing): ~0.15 s of a code-only rebuild's Bento phase otherwise.
for module in ("starlette.applications", "starlette.routing", "orjson",
               "pip_requirements_parser", "packaging.requirements", "jinja2"):
    try:
        __import__(module)
    except ImportError:  # another BentoML version's needs: then imported when needed, if at all
        pass
args = json.loads(sys.stdin.read())
os.chdir(args["cwd"])  # the build context: BentoML imports the service module from it
sys.path.insert(0, args["cwd"])
for model in args["models"]:
    try:
        existing = bentoml.models.get(model["tag"])
    except bentoml.exceptions.NotFound:
        existing = None
    if existing is not None and not model["replace"] \
            and dict(existing.info.metadata) == model["metadata"]:
        print("MODEL_REUSED=" + model["tag"])
        continue
    if existing is not None:  # same name and version from another store, or re-registered
        bentoml.models.delete(model["tag"])
    with bentoml.models.create(model["tag"], metadata=model["metadata"],
                               labels={"owner": "bentoship"}) as created:
        shutil.copytree(model["path"], created.path_of("mlflow_model"))
    print("MODEL_IMPORTED=" + model["tag"])
try:
    bentoml.bentos.delete(args["tag"])
except bentoml.exceptions.NotFound:
    pass
# The image installs nothing from the Bento's env/ (its Python comes from the platform base and
# the extras layer), so BentoML's lock of it (`uv pip compile` against PyPI, ~2 s and a network
# round trip in every build) is not made.
bento = bentoml.bentos.build(
    args["service"], name=args["name"], version=args["version"], labels=args["labels"],
    include=["services/**/*.py", "services/bentoship.json"], build_ctx=".",
    python={"lock_packages": False},
)
# The store's Bento only references its models; an exported folder carries them.
exported = bentoml.bentos.export_bento(bento.tag, args["export_to"] + "/", output_format="folder")
print("BENTO_PATH=" + exported)
# Everything is written and closed. Python's own shutdown after BentoML's import takes ~0.35 s
# (unloading thousands of modules), which the build would wait for.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


class Starter:
    """The Bento's builder process, started before it is needed (`with Starter(home) as s:`,
    then `make_bento(..., starter=s)`); killed on leaving if it was never used."""

    def __init__(self, bentoml_home: Path) -> None:
        self.bentoml_home = bentoml_home
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = _spawn(self.bentoml_home)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            kill(self._proc)

    def take(self) -> subprocess.Popen[str]:
        """The started process (once), or a new one (a second attempt)."""
        proc, self._proc = self._proc, None
        return proc if proc is not None else _spawn(self.bentoml_home)


def _spawn(bentoml_home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    # -P: no working directory on sys.path while BentoML imports (the build context comes later)
    return subprocess.Popen([sys.executable, "-P", "-c", _BUILD_SCRIPT], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()
