"""The `--json` documents of `benchmarks/build` and `benchmarks/serving`, from sample
measurements: the keys a CI job reads, valid JSON (no NaN), ratios against the right row."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmarks' folder is not a package

from _report import (
    BUILD_SCENARIOS,
    SERVERS,
    SERVING_SCENARIOS,
    Cell,
    Outcome,
    build_json,
    dump,
    serving_json,
)
from _serving import load


def _outcome(label: str, seconds: float, reused: bool = False) -> Outcome:
    phases = {"smoke": 4.0, "resolve": 2.0} if not reused else {"resolve": 2.0, "lookup": 0.4}
    return Outcome(label, seconds, 0 if reused else 131_309, 500_000_000, reused,
                   {"base": 499_000_000, "code": 130_000}, phases)


def test_build_json_has_the_four_scenarios_with_seconds_phases_reuse_and_ratio() -> None:
    runs = [_outcome("cold build", 20.0), _outcome("new treatment version", 18.0),
            _outcome("code-only rebuild", 15.0), _outcome("nothing changed", 5.0, reused=True)]

    document = json.loads(_dumped(build_json(runs)))

    assert list(document) == ["cold", "new_treatment", "code_only", "unchanged"]
    assert document["cold"]["ratio_to_cold"] == 1.0
    assert document["code_only"]["ratio_to_cold"] == 0.75
    assert document["unchanged"]["reused"] is True
    assert document["cold"]["reused"] is False
    assert list(document["cold"]["phases"]) == ["resolve", "smoke"]  # the build's order
    for scenario in document.values():
        assert {"seconds", "ratio_to_cold", "reused", "phases", "new_layer_bytes",
                "image_bytes", "layer_sizes"} <= set(scenario)


def test_build_json_refuses_a_missing_scenario() -> None:
    with pytest.raises(ValueError, match="nothing changed"):
        build_json([_outcome(label, 10.0) for label in list(BUILD_SCENARIOS)[:3]])


def _cell(rate: float, errors: int = 0, answered: bool = True) -> Cell:
    sample = load.Sample(latencies=[0.002, 0.003, 0.010] if answered else [], elapsed=1.0)
    for _ in range(errors):
        sample.add_error("status 500")
    cell = Cell()
    cell.add(sample, server_cpu=0.004)
    cell.rates = [rate]  # the slice's req/s, as if it had run a full second
    return cell


def test_serving_json_has_one_cell_per_scenario_and_server() -> None:
    cells = {(server, rows, clients): _cell(100.0 * (i + 1))
             for rows, clients in SERVING_SCENARIOS for i, server in enumerate(SERVERS)}
    cells[("naive", 100, 8)] = _cell(0.0, errors=3, answered=False)

    document = json.loads(_dumped(serving_json(
        cells, {"bentoship": 3.61, "mlflow": None},
        {"batching": "not yet", "cold_start_s.mlflow": "not measured"})))

    assert set(document) == {"cells", "batching", "cold_start_s", "notes"}
    assert document["batching"] is None
    assert document["cold_start_s"] == {"bentoship": 3.61, "mlflow": None}
    assert document["notes"]["cold_start_s.mlflow"] == "not measured"
    assert len(document["cells"]) == len(SERVING_SCENARIOS) * len(SERVERS)
    for cell in document["cells"]:
        assert {"rows", "clients", "server", "req_s", "p50_ms", "p99_ms", "errors"} <= set(cell)
        assert cell["server"] in {"bentoship", "mlflow", "naive", "floor"}
    first = document["cells"][0]
    assert (first["rows"], first["clients"], first["server"]) == (1, 1, "bentoship")
    assert first["req_s"] == 100.0 and first["p50_ms"] == 3.0 and first["errors"] == 0
    floor = next(c for c in document["cells"] if (c["rows"], c["clients"], c["server"])
                 == (1, 1, "floor"))
    assert floor["ratio_to_bentoship"] == 4.0
    failed = next(c for c in document["cells"] if (c["rows"], c["clients"], c["server"])
                  == (100, 8, "naive"))
    assert failed["errors"] == 3 and failed["p50_ms"] is None and failed["p99_ms"] is None


def test_serving_json_carries_batching_figures_once_there_are_some() -> None:
    cells = {(server, rows, clients): _cell(50.0)
             for rows, clients in SERVING_SCENARIOS for server in SERVERS}
    figures = {"on": {"req_s": 900.0, "p99_ms": 12.5}, "off": {"req_s": 300.0, "p99_ms": 30.0}}

    document = serving_json(cells, {}, {}, batching=figures)

    assert document["batching"] == figures
    assert document["cold_start_s"] == {"bentoship": None, "mlflow": None}
    # `--only batching`: no table, the batching figures alone.
    alone = json.loads(_dumped(serving_json({}, {}, {}, batching=figures)))
    assert alone["cells"] == [] and alone["batching"] == figures


def test_with_json_stdout_only_the_document_reaches_stdout() -> None:
    script = (
        "import subprocess, sys\n"
        "from _report import dump, json_stdout\n"
        "with json_stdout():\n"
        "    print('progress')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"a child prints\")'], check=True)\n"
        "dump({'cells': []}, sys.stdout)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=BENCHMARKS, capture_output=True,
                          text=True, check=True)

    assert json.loads(proc.stdout) == {"cells": []}
    assert "progress" in proc.stderr and "a child prints" in proc.stderr


def _dumped(document: Mapping[str, Any]) -> str:
    out = io.StringIO()
    dump(document, out)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one object, one line
    return text
