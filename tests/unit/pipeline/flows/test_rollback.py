"""Rollback without Docker: what `--to` names, which release is "the previous one", MLflow down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline import flows
from pipeline.identity import ImageIdentity
from pipeline.settings import load_settings
from tests.stores import free_port
from tests.unit.pipeline.flows.support import REPO, digest, invoke, record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, flows.RollbackTarget("previous")),
        ("", flows.RollbackTarget("previous")),
        ("3A15CDCB", flows.RollbackTarget("release", "3a15cdcb")),
        (f"{REPO}@{digest(5)}",
         flows.RollbackTarget("digest", f"{REPO}@{digest(5)}", repository=REPO, digest=digest(5))),
        (digest(5), flows.RollbackTarget("digest", digest(5), digest=digest(5))),
        (f"{REPO}:ctl-v1.code-1a2b3c4",
         flows.RollbackTarget("tag", f"{REPO}:ctl-v1.code-1a2b3c4", repository=REPO,
                              tag="ctl-v1.code-1a2b3c4")),
        ("ctl-v1.trt-v2.code-1a2b3c4",
         flows.RollbackTarget("tag", "ctl-v1.trt-v2.code-1a2b3c4", tag="ctl-v1.trt-v2.code-1a2b3c4")),
    ],
)
def test_rollback_to_accepts_ids_tags_and_digests(
    text: str | None, expected: flows.RollbackTarget
) -> None:
    assert flows.parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latest", "give a release id"),
        ("abc", "give a release id"),
        (f"{REPO}@sha256:abc", "is not a digest"),
        ("sha256:xyz", "is not a digest"),
    ],
)
def test_rollback_to_refuses_anything_else(text: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        flows.parse_target(text)


def test_previous_release_is_the_one_before_production() -> None:
    releases = [record(3, age_s=0), record(2, age_s=10), record(1, age_s=20)]
    assert flows.choose_previous(releases) == releases[1]


def test_previous_release_skips_releases_of_the_same_image() -> None:
    # A hotfix that rebuilt to the very same digest is not somewhere to go back to.
    releases = [record(3, image=9), record(2, image=9), record(1)]
    assert flows.choose_previous(releases) == releases[2]


def test_rolling_back_twice_goes_further_back_not_to_the_bad_image() -> None:
    releases = [
        record(4, kind="rollback", image=2, baseline=3),  # rolled back from 3 to 2
        record(3),
        record(2),
        record(1),
    ]
    assert flows.choose_previous(releases) == releases[3]


def test_nothing_before_the_first_release() -> None:
    assert flows.choose_previous([record(1)]) is None
    assert flows.choose_previous([]) is None


def test_models_and_weights_are_read_from_labels() -> None:
    labels = {
        "io.bentoship.model.control.name": "demo-classifier",
        "io.bentoship.model.control.version": "1",
        "io.bentoship.model.control.run_id": "r1",
        "io.bentoship.model.control.manifest_sha256": "abc",
        "io.bentoship.model.treatment.name": "demo-classifier",
        "io.bentoship.model.treatment.version": "2",
        "io.bentoship.weights": "control=75,treatment=25",
    }
    identity = ImageIdentity.from_labels(labels)
    assert identity.models == {
        "control": {"name": "demo-classifier", "version": "1", "run_id": "r1"},
        "treatment": {"name": "demo-classifier", "version": "2"},
    }
    assert identity.treatment_weight == 25


def test_rollback_without_mlflow_and_without_a_digest_says_what_to_do(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = invoke(["rollback", "--out", str(tmp_path / "out")], tmp_path,
                     MLFLOW_TRACKING_URI=down)
    assert result.exit_code == 1
    assert f"the MLflow tracking server {down} does not answer" in result.output
    assert "Without the ledger bentoship cannot tell which release came before production" in (
        result.output
    )
    assert "`bentoship rollback --to REPOSITORY@sha256:...`" in result.output
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 15  # no minutes of MLflow client retries


def test_ledger_problem_is_none_for_the_embedded_store(tmp_path: Path) -> None:
    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path)})
    assert flows.ledger_problem(settings) is None



def test_rollback_of_a_service_the_ledger_never_released_says_so(tmp_path: Path) -> None:
    result = invoke(["rollback", "--name", "nobody", "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 1
    assert "nothing to roll back" in result.output
    assert "no promoted release of nobody" in result.output
    assert not (tmp_path / "out").exists()
