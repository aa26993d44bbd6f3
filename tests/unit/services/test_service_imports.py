"""Importing the service must not drag the pipeline, Docker or MLflow into the image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import servicekit

FORBIDDEN = ("pipeline", "docker", "mlflow", "prometheus_client")
# BentoML's supervisor imports the module too, before it spawns any worker, only to read the
# service's declaration: the models' stack is imported by the workers, when they load them.
WORKERS_ONLY = ("numpy", "xgboost", "sklearn", "pandas")

PROBE = f"""
import json, sys
import services.service as service
assert service.__file__.startswith(sys.argv[1]), service.__file__
print(json.dumps({{
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r}),
    "workers_only": sorted(m for m in sys.modules if m.split(".")[0] in {WORKERS_ONLY!r}),
    "service": service.Bentoship.name,
    "models": [str(m) for m in service.Bentoship.models],
}}))
"""


def test_importing_the_service_imports_no_pipeline_docker_or_mlflow(tmp_path: Path) -> None:
    config = servicekit.make_config(
        [
            {
                "name": "control",
                "model_tag": "demo-classifier:v1",
                "registered_name": "demo-classifier",
                "version": "1",
                "run_id": "r1",
                "flavor": "sklearn",
                "weight": 90,
            },
            {
                "name": "treatment",
                "model_tag": "demo-classifier:v2",
                "registered_name": "demo-classifier",
                "version": "2",
                "run_id": "r2",
                "flavor": "xgboost",
                "weight": 10,
            },
        ]
    )
    context = servicekit.write_build_context(tmp_path / "ctx", config)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(context)],
        cwd=context,
        env={
            "PATH": "/usr/bin:/bin",
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "PYTHONPATH": str(context),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # prometheus_client too: BentoML sets up multiprocess metrics after importing the service.
    assert report["loaded"] == []
    assert report["workers_only"] == []
    assert report["service"] == "demo-classifier"
    # models declared as class attributes, so `bentoml build` packs them into the Bento
    assert report["models"] == ["demo-classifier:v1", "demo-classifier:v2"]


def test_a_bare_checkout_explains_the_missing_config(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "services").mkdir(parents=True)
    for source in servicekit.SERVICES_SRC.glob("*.py"):
        (context / "services" / source.name).write_text(source.read_text())
    result = subprocess.run(
        [sys.executable, "-c", "import services.service"],
        cwd=context,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(context),
            "BENTOML_HOME": str(tmp_path / "bentoml"),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "services.errors.ConfigError" in result.stderr
    assert (
        "bentoship.json: not found. The pipeline writes bentoship.json next to services/service.py"
        in result.stderr
    )
