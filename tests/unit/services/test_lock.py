"""The serving lock agrees with the host, so models trained here load in the image."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from packaging.utils import canonicalize_name

from pipeline.build.base import LOCK_FILE, lock_pins

# The libraries a pickled, skops'd or saved model is tied to, and BentoML's store format.
MODEL_FACING = [
    "bentoml", "scikit-learn", "xgboost-cpu", "skops", "lightgbm", "onnxruntime", "onnx", "pandas",
    "numpy", "cloudpickle",
]


@pytest.mark.parametrize("name", MODEL_FACING)
def test_model_facing_pins_equal_the_host(name: str) -> None:
    pins = lock_pins()
    assert pins.get(name) == version(name), (
        f"{LOCK_FILE} pins {name}=={pins.get(name)} but the host has {version(name)}: a model "
        "trained on the host may not load in the image. Align pyproject.toml and "
        "services/requirements.in, then regenerate the lock (command in requirements.in)."
    )


def test_lock_has_no_cuda_packages() -> None:
    pins = lock_pins()
    # `xgboost` drags in nvidia-nccl-cu12 (~350 MB); `xgboost-cpu` is the same library.
    assert "xgboost" not in pins
    # nvidia-ml-py is BentoML's own dependency: pure-Python NVML bindings (~300 kB), no CUDA.
    cuda = sorted(n for n in pins if n.startswith("nvidia-") and n != "nvidia-ml-py")
    assert cuda == []


def test_every_lock_entry_is_pinned_with_hashes() -> None:
    # `pip install --require-hashes` in Dockerfile.base refuses an entry without a hash.
    entries = re.findall(
        r"^([A-Za-z0-9._-]+)==(\S+)(?: \\\n\s+--hash=sha256:[0-9a-f]{64})+$",
        LOCK_FILE.read_text(),
        flags=re.MULTILINE,
    )
    assert len(entries) >= 50
    assert {canonicalize_name(name): pin for name, pin in entries} == lock_pins()
