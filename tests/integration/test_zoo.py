"""Every model of the zoo (tests/zoo.py) built into an image that answers what the model answers.

The zoo is trained and registered once for the module, into a fresh SQLite store. Each case is
built once through the Python API (`builder.build`) with the options it needs; a case refused
without them is first built without them, and must be refused quickly, naming what it needs,
with no image tagged. The image is started and asked about the case's rows: every answer row
must be what the model itself predicts (labels equal, numbers within 1e-6) and conform to the
spec the container serves at /docs.json. Schemathesis fuzzes POST /predict of one classifier and
one regressor; an artifact changed in place after the first build refuses the next one.

At the end the module prints, per case, the build seconds and the largest difference between
the container's answers and the model's own, and writes them to /tmp/zoo-results.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.build import bento, smoke
from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import BuildRequest
from pipeline.errors import ArtifactError, PipelineError
from pipeline.models import integrity, registry
from pipeline.settings import Settings
from tests.stores import store_settings
from tests.unit.pipeline.release.test_api_spec import conforms
from tests.zoo import CASES, ZooCase, nested_artifact, register_zoo

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOLERANCE = 1e-6  # absolute, on every probability, score and predicted value
REFUSED_WITHIN_S = 30.0  # a refusal comes from planning and the load check, never a build
RESULTS_FILE = Path("/tmp/zoo-results.json")
VENV_BIN = Path(sys.executable).parent
FUZZ_CASES = ("sklearn-columns", "sklearn-multioutput")  # string + long columns; named targets
FUZZ_EXAMPLES = 100
FUZZ_SEED = 42


# --- the store, the images and the results -------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return store_settings(tmp_path_factory.mktemp("zoo-store"))


@pytest.fixture(scope="module")
def zoo(store: Settings) -> dict[str, ZooCase]:
    started = time.monotonic()
    cases = register_zoo(store.tracking_uri, artifact_root=store.artifact_root)
    print(f"\nzoo: {len(cases)} cases trained and registered in {time.monotonic() - started:.1f}s")
    return cases


def request_for(case: ZooCase, *, with_needs: bool = True) -> BuildRequest:
    needs = case.needs if with_needs else {}
    return BuildRequest(
        control=f"{case.registered_name}/{case.version}",
        trusted_types=tuple(needs.get("trusted_types", ())),
        allow_pickle=bool(needs.get("allow_pickle", False)),
    )


def repository(store: Settings, case: ZooCase) -> str:
    return f"{store.oci_registry}/{bento.service_name(case.registered_name)}"


def tagged(docker_client: Any, repo: str) -> dict[str, str]:
    """`repo:tag` -> image id, for every tag of `repo` in the engine."""
    return {t: image.id for image in docker_client.images.list(name=repo)
            for t in image.tags if t.startswith(f"{repo}:")}  # fmt: skip


@dataclass
class Record:
    """What the closing table reports for one case."""

    build_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    refused_s: float | None = None
    max_abs_diff: float | None = None
    rows: int = 0
    fuzz_cases: int | None = None  # Schemathesis cases against POST /predict
    fuzz_failures: int | None = None
    failure: str | None = None


@dataclass
class Images:
    """One image per case, built on first use with the case's needs."""

    store: Settings
    zoo: dict[str, ZooCase]
    records: dict[str, Record]
    built: dict[str, BuildResult] = field(default_factory=dict)

    def get(self, key: str) -> BuildResult:
        if key not in self.built:
            record = self.records.setdefault(key, Record())
            started = time.monotonic()
            result = build(request_for(self.zoo[key]), self.store, echo=print)
            record.build_s = time.monotonic() - started
            record.phases = {k: round(v, 1) for k, v in result.phases.items()}
            print(f"{key}: built {result.reference} in {record.build_s:.1f}s "
                  f"(reused: {result.reused}; phases {record.phases})")  # fmt: skip
            assert not result.reused, f"{key}: a fresh store's version must build a new image"
            self.built[key] = result
        return self.built[key]


@pytest.fixture(scope="module")
def records(request: pytest.FixtureRequest) -> Iterator[dict[str, Record]]:
    found: dict[str, Record] = {}
    yield found
    lines = [f"{'case':<27} {'build s':>8} {'refused s':>10} {'max |diff|':>11} {'fuzz':>9}  note",
             "-" * 82]  # fmt: skip
    for key in CASES:
        r = found.get(key)
        if r is None:
            continue
        build_s = f"{r.build_s:.1f}" if r.build_s is not None else "-"
        refused_s = f"{r.refused_s:.1f}" if r.refused_s is not None else "-"
        diff = f"{r.max_abs_diff:.2e}" if r.max_abs_diff is not None else "-"
        fuzz = f"{r.fuzz_failures}/{r.fuzz_cases}" if r.fuzz_cases is not None else "-"
        lines.append(f"{key:<27} {build_s:>8} {refused_s:>10} {diff:>11} {fuzz:>9}  "
                     f"{r.failure or ''}")
    RESULTS_FILE.write_text(json.dumps({k: vars(v) for k, v in found.items()}, indent=2) + "\n")
    lines.append(f"(written to {RESULTS_FILE})")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else print
    write("")
    for line in lines:
        write(line)


@pytest.fixture(scope="module")
def images(
    zoo: dict[str, ZooCase], store: Settings, records: dict[str, Record],
    docker_client: Any, base_image: Any,
) -> Images:  # fmt: skip
    # Tags of these repositories left by an earlier run of this module would hide whether a
    # refused build tagged anything; only the zoo's own repositories are touched.
    for case in zoo.values():
        for reference in tagged(docker_client, repository(store, case)):
            docker_client.images.remove(reference)
    return Images(store, zoo, records)


# --- talking to a container ----------------------------------------------------------------


def post_rows(url: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/predict", data=json.dumps({"rows": rows}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        body = exc.read()[:2000].decode(errors="replace")
        raise AssertionError(f"POST /predict answered {exc.code}: {body}") from None


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def differences(got: dict[str, Any], want: dict[str, Any]) -> tuple[list[str], float]:
    """What differs between an answer row and the model's own (beyond TOLERANCE), and the
    largest absolute difference of the numbers they share."""
    problems: list[str] = []
    largest = 0.0

    def number(where: str, g: Any, w: float) -> None:
        nonlocal largest
        if not isinstance(g, int | float) or isinstance(g, bool):
            problems.append(f"{where}: expected a number near {w}, got {g!r}")
            return
        largest = max(largest, abs(float(g) - w))
        if abs(float(g) - w) > TOLERANCE:
            problems.append(f"{where}: {g!r} differs from the model's {w!r} by {abs(g - w):.3g}")

    def mapping(where: str, g: Any, w: dict[str, float]) -> None:
        if not isinstance(g, dict) or list(g) != list(w):
            problems.append(f"{where}: expected keys {list(w)}, got {g!r}")
            return
        for k, v in w.items():
            number(f"{where}[{k!r}]", g[k], v)

    for key, w in want.items():
        if key not in got:
            problems.append(f"{key}: missing")
        elif key == "probabilities":
            mapping(key, got[key], w)
        elif key == "score":
            number(key, got[key], w)
        elif isinstance(w, dict):
            mapping(key, got[key], w)
        elif isinstance(w, list):
            if not isinstance(got[key], list) or len(got[key]) != len(w):
                problems.append(f"{key}: expected {len(w)} values, got {got[key]!r}")
            else:
                for i, v in enumerate(w):
                    number(f"{key}[{i}]", got[key][i], v)
        elif isinstance(w, float):
            number(key, got[key], w)
        elif got[key] != w or type(got[key]) is not type(w):
            problems.append(f"{key}: {got[key]!r} is not the model's {w!r}")
    return problems, largest


# --- every case ----------------------------------------------------------------------------


def assert_refused_without_needs(
    case: ZooCase, store: Settings, docker_client: Any, record: Record
) -> None:
    repo = repository(store, case)
    started = time.monotonic()
    with pytest.raises(PipelineError) as refused:
        build(request_for(case, with_needs=False), store, echo=print)
    record.refused_s = time.monotonic() - started
    message = str(refused.value)
    print(f"{case.key}: refused without {case.needs} after {record.refused_s:.1f}s "
          f"({type(refused.value).__name__}): {message}")  # fmt: skip
    if "trusted_types" in case.needs:
        missing = [t for t in case.needs["trusted_types"] if t not in message]
        assert not missing, f"the refusal does not name {missing}: {message}"
        assert "--trust-type" in message, message
    if case.needs.get("allow_pickle"):
        assert "pickle" in message.lower() and "--allow-pickle" in message, message
    assert record.refused_s < REFUSED_WITHIN_S, (
        f"refused only after {record.refused_s:.1f}s: {message}"
    )
    assert tagged(docker_client, repo) == {}, "a refused build tagged an image"


@pytest.mark.parametrize("key", list(CASES))
def test_the_image_answers_what_the_model_answers(
    key: str, zoo: dict[str, ZooCase], store: Settings, images: Images, docker_client: Any
) -> None:
    record = images.records.setdefault(key, Record())
    try:
        check_case(zoo[key], store, images, docker_client, record)
    except BaseException as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        record.failure = record.failure or f"{type(exc).__name__}: {first_line[:160]}"
        raise


def check_case(case: ZooCase, store: Settings, images: Images, docker_client: Any,
               record: Record) -> None:  # fmt: skip
    if case.refused_without_needs:
        assert_refused_without_needs(case, store, docker_client, record)
    result = images.get(case.key)
    running = smoke.start(docker_client, result.reference)
    try:
        answer = post_rows(running.url, case.rows)
        spec = get_json(f"{running.url}/docs.json")
    finally:
        smoke.stop(running.container)

    rows = answer.get("rows")
    assert isinstance(rows, list) and len(rows) == len(case.rows), answer
    record.rows = len(rows)
    problems: list[str] = []
    largest = 0.0
    for i, (got, want) in enumerate(zip(rows, case.expected)):
        extra = set(got) - set(want) - {"variant", "model_version"}
        if extra:
            problems.append(f"row {i}: keys the model does not answer: {sorted(extra)}")
        found, diff = differences(got, want)
        problems += [f"row {i}: {p}" for p in found]
        largest = max(largest, diff)
        if (got.get("variant"), got.get("model_version")) != ("control", case.version):
            problems.append(f"row {i}: variant/model_version {got.get('variant')!r}/"
                            f"{got.get('model_version')!r}, not 'control'/{case.version!r}")
    record.max_abs_diff = largest
    assert not problems, "\n".join(problems[:20])

    schema = spec["components"]["schemas"]["PredictionRow"]
    for i, row in enumerate(rows):
        try:
            conforms(spec, schema, row)
        except Exception as exc:
            raise AssertionError(f"row {i} {row} does not conform to PredictionRow: {exc}") from exc
    ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    conforms(spec, ok["schema"], answer)
    prediction = schema["properties"]["prediction"]
    if case.task == "classification":
        assert prediction["enum"] == list(case.classes)
        assert schema["properties"]["probabilities"]["required"] == [str(c) for c in case.classes]
        assert ("score" in schema["required"]) == (len(case.classes) == 2)
    elif isinstance(case.expected[0]["prediction"], dict):
        assert prediction["required"] == list(case.expected[0]["prediction"])
    else:
        assert prediction["type"] == "number"


# --- a fuzzer driven by the served spec ----------------------------------------------------


@pytest.mark.parametrize("key", FUZZ_CASES)
def test_a_spec_driven_fuzzer_finds_no_5xx(
    key: str, zoo: dict[str, ZooCase], images: Images, docker_client: Any, tmp_path: Path
) -> None:
    result = images.get(key)
    reports = tmp_path / "reports"
    running = smoke.start(docker_client, result.reference)
    try:
        command = [
            str(VENV_BIN / "schemathesis"), "run", f"{running.url}/docs.json",
            "--url", running.url, "--include-path", "/predict", "--include-method", "POST",
            "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(FUZZ_EXAMPLES), "--seed", str(FUZZ_SEED), "--workers", "1",
            "--continue-on-failure", "--report", "json", "--report-dir", str(reports),
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(command, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"},
                              capture_output=True, text=True, check=False, timeout=240)  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        smoke.stop(running.container)
    (report_file,) = reports.glob("*.json")
    report = json.loads(report_file.read_text())
    cases = report["test_cases"]["generated"]
    record = images.records.setdefault(key, Record())
    record.fuzz_cases, record.fuzz_failures = cases, len(report["failures"])
    print(f"{key}: schemathesis {report['schemathesis_version']}: {cases} cases against POST "
          f"/predict in {seconds:.1f}s, {len(report['failures'])} failure(s)")  # fmt: skip
    assert report["operations"]["tested"] == 1, report["operations"]
    assert cases >= FUZZ_EXAMPLES // 2, report["test_cases"]
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert report["failures"] == [] and report["errors"] == [], proc.stdout[-6000:]


# --- the integrity guarantee ---------------------------------------------------------------


def test_an_artifact_changed_in_place_refuses_the_next_build(
    zoo: dict[str, ZooCase], store: Settings, images: Images, docker_client: Any
) -> None:
    key, relative = next((k, p) for k, c in zoo.items() if (p := nested_artifact(c)) is not None)
    case = zoo[key]
    first = images.get(key)  # its first build recorded the manifest on the version
    client = registry.settings_client(store)
    tags = client.get_model_version(case.registered_name, case.version).tags
    assert tags[integrity.DIGEST_TAG] == first.labels["io.bentoship.model.control.manifest_sha256"]

    location = client.get_model_version_download_uri(case.registered_name, case.version)
    parsed = urllib.parse.urlparse(location)
    assert parsed.scheme == "file", location
    model_dir = Path(urllib.request.url2pathname(parsed.path))
    assert model_dir.is_relative_to(store.artifact_root), (model_dir, store.artifact_root)
    target = model_dir / relative
    original = target.read_bytes()
    before = tagged(docker_client, repository(store, case))
    assert before == {first.reference: first.image_id}

    target.write_bytes(original + b"\n# changed in place after the first build\n")
    # The build cache trusts what it verified itself (docs/architecture.md, the build cache):
    # this runner's next build would reuse its image built from the original bytes. A runner
    # without that cache (every fresh CI runner) downloads and checks against the registry.
    shutil.rmtree(store.build_cache, ignore_errors=True)
    started = time.monotonic()
    try:
        with pytest.raises(ArtifactError) as refused:
            build(request_for(case), store, echo=print)
    finally:
        target.write_bytes(original)
    seconds = time.monotonic() - started
    message = str(refused.value)
    print(f"{key}: changed {relative} refused after {seconds:.1f}s: {message}")
    assert f"changed: {relative}" in message, message
    assert f"{case.registered_name}/{case.version}" in message, message
    assert tagged(docker_client, repository(store, case)) == before
