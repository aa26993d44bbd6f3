"""What the benchmarks measured, as data, and its machine-readable form (`--json`).

Imported from the benchmarks' folder by `benchmarks/build` and `benchmarks/serving` (and by
`tests/unit/test_benchmarks_json.py`, which puts that folder on `sys.path`); pure functions
and plain data, no servers, no Docker, no MLflow.

- `Outcome`, `build_json`: one `bentoship build` scenario, and the four of them as
  `{"cold": {...}, "new_treatment": {...}, "code_only": {...}, "unchanged": {...}}`;
- `Cell`, `serving_json`: one server in one serving scenario, and the run as
  `{"cells": [...], "batching": ..., "cold_start_s": {...}, "notes": {...}}`;
- `json_stdout`, `dump`: while a benchmark runs with `--json`, everything written to stdout
  (by this process and its children) goes to stderr; then `dump` writes the one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from _serving import load

# --- build -----------------------------------------------------------------------------------

# The build benchmark's scenarios, in the order they run: table label -> JSON key.
BUILD_SCENARIOS = {
    "cold build": "cold",
    "new treatment version": "new_treatment",
    "code-only rebuild": "code_only",
    "nothing changed": "unchanged",
}
PHASE_ORDER = ["resolve", "verify", "loadcheck", "base", "lookup", "wheels", "bento", "image",
               "smoke", "push"]


@dataclass
class Outcome:
    """One `bentoship build` run of the build benchmark."""

    scenario: str  # a key of BUILD_SCENARIOS
    seconds: float
    new_bytes: int  # bytes of the image's layers that did not exist before the build
    image_bytes: int
    reused: bool
    layer_sizes: dict[str, int]
    phases: dict[str, float]


def ordered_phases(phases: Mapping[str, float]) -> list[tuple[str, float]]:
    """The build's phases in the order the build runs them (unknown ones last)."""
    def rank(item: tuple[str, float]) -> int:
        return PHASE_ORDER.index(item[0]) if item[0] in PHASE_ORDER else len(PHASE_ORDER)

    return sorted(phases.items(), key=rank)


def where_time_went(phases: Mapping[str, float]) -> str:
    """The table's last column: phases of at least 0.3 s, e.g. `resolve 2.2, bento 6.3`."""
    shown = [(k, v) for k, v in ordered_phases(phases) if v >= 0.3]
    return ", ".join(f"{k} {v:.1f}" for k, v in shown) or "-"


def build_json(runs: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """The four scenarios keyed as in BUILD_SCENARIOS; ratios are against the cold build."""
    by_label = {run.scenario: run for run in runs}
    missing = [label for label in BUILD_SCENARIOS if label not in by_label]
    if missing:
        raise ValueError(f"no outcome for {', '.join(missing)}")
    cold = by_label["cold build"].seconds
    return {
        key: {
            "seconds": round(run.seconds, 2),
            "ratio_to_cold": round(run.seconds / cold, 3) if cold else None,
            "reused": run.reused,
            "phases": {k: round(v, 2) for k, v in ordered_phases(run.phases)},
            "new_layer_bytes": run.new_bytes,
            "image_bytes": run.image_bytes,
            "layer_sizes": dict(run.layer_sizes),
        }
        for label, key in BUILD_SCENARIOS.items()
        for run in [by_label[label]]
    }


# --- serving ---------------------------------------------------------------------------------

# (rows per request, clients); the 32-client cell is the tail (p99 against p50) under a backlog
SERVING_SCENARIOS = ((1, 1), (1, 8), (100, 1), (100, 8), (1, 32))
TAIL_SCENARIO = (1, 32)
SERVERS = ("bentoship", "mlflow", "naive", "floor")


@dataclass
class Cell:
    """One server in one scenario: every slice's requests pooled, plus per-slice figures."""

    sample: load.Sample = field(default_factory=load.Sample)
    server_cpu: float = 0.0  # CPU seconds of the server's process tree during the slices
    rates: list[float] = field(default_factory=list)  # req/s of each slice
    p50s: list[float] = field(default_factory=list)  # ms, each slice with an answer

    def add(self, sample: load.Sample, server_cpu: float) -> None:
        ok = len(sample.latencies)
        self.rates.append(ok / sample.elapsed if sample.elapsed else 0.0)
        if ok:
            self.p50s.append(float(np.percentile(sample.latencies, 50)) * 1000)
        self.sample.extend(sample)
        self.server_cpu += server_cpu

    @property
    def ok(self) -> int:
        return len(self.sample.latencies)

    def rate(self) -> float:
        """Median of the slices' req/s: a burst of other work on the machine during one
        slice moves it less than a pooled mean."""
        return float(np.median(self.rates)) if self.rates else 0.0

    def p50(self) -> float:
        return float(np.median(self.p50s)) if self.p50s else float("nan")

    def p99(self) -> float:
        """Over all slices' requests pooled (one slice has too few for a 99th percentile)."""
        if not self.sample.latencies:
            return float("nan")
        return float(np.percentile(self.sample.latencies, 99)) * 1000

    def cpu_per_request(self) -> float:
        """Server CPU milliseconds per answered request: what other load on the machine
        changes least."""
        return self.server_cpu / self.ok * 1000 if self.ok else float("nan")

    def cores(self) -> float:
        return self.server_cpu / self.sample.elapsed if self.sample.elapsed else 0.0


def _number(value: float, digits: int) -> float | None:
    """A finite float rounded, or None: JSON has no NaN (a cell with no answer has no p50)."""
    return round(value, digits) if math.isfinite(value) else None


def serving_json(
    cells: Mapping[tuple[str, int, int], Cell],
    cold_start_s: Mapping[str, float | None],
    notes: Mapping[str, str],
    batching: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The serving run: one entry per (rows, clients, server) in the table's order.

    `cold_start_s` has a number or None for `bentoship` and `mlflow`; `notes` says why a
    figure is None (`batching`, `cold_start_s.<server>`). `batching` is the batching section's
    figures per mode (`on`, `off`, ...), None when it did not run; `cells` is empty when only
    that section ran (`--only batching`).
    """
    out_cells = []
    for rows, clients in SERVING_SCENARIOS:
        if ("bentoship", rows, clients) not in cells:
            continue
        ours = cells[("bentoship", rows, clients)].rate()
        for server in SERVERS:
            cell = cells[(server, rows, clients)]
            rate = cell.rate()
            out_cells.append({
                "rows": rows,
                "clients": clients,
                "server": server,
                "req_s": round(rate, 1),
                "p50_ms": _number(cell.p50(), 3),
                "p99_ms": _number(cell.p99(), 3),
                "errors": cell.sample.errors,
                "requests": cell.ok + cell.sample.errors,
                "server_cpu_ms_per_req": _number(cell.cpu_per_request(), 3),
                "ratio_to_bentoship": round(rate / ours, 3) if ours else None,
            })
    return {
        "cells": out_cells,
        "batching": (None if batching is None else
                     {mode: {k: _number(v, 3) for k, v in figures.items()}
                      for mode, figures in batching.items()}),
        "cold_start_s": {server: None if (seconds := cold_start_s.get(server)) is None
                         else _number(seconds, 2) for server in ("bentoship", "mlflow")},
        "notes": dict(notes),
    }


# --- output ----------------------------------------------------------------------------------


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the duration (children inherit it, so nothing
    that prints can break the JSON); `dump` the document on stdout after it."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def dump(document: Mapping[str, Any], out: TextIO) -> None:
    """One JSON object and a newline; refuses NaN rather than printing invalid JSON."""
    out.write(json.dumps(document, allow_nan=False) + "\n")
    out.flush()
