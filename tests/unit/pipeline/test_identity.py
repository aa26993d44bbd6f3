from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.identity import (
    LABEL_PREFIX,
    ImageIdentity,
    ModelLayer,
    code_version,
    differences,
    image_labels,
    image_tag,
    source_url,
)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "service.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_clean_tree_is_the_short_sha(repo: Path) -> None:
    version = code_version(repo)
    assert not version.dirty
    assert version.label == version.sha[:7]
    assert version.revision == version.sha


def test_dirty_trees_are_marked_and_told_apart(repo: Path) -> None:
    (repo / "service.py").write_text("x = 2\n")
    first = code_version(repo)
    (repo / "service.py").write_text("x = 3\n")
    second = code_version(repo)
    assert first.dirty and first.label.startswith(f"{first.sha[:7]}-dirty-")
    assert first.revision.endswith("-dirty")
    assert first.label != second.label


def test_untracked_files_make_the_tree_dirty(repo: Path) -> None:
    (repo / "hooks.py").write_text("y = 1\n")
    assert code_version(repo).dirty


def test_not_a_git_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a git checkout"):
        code_version(tmp_path)


def test_source_url_drops_credentials_and_local_paths(repo: Path) -> None:
    assert source_url(repo) == "urn:bentoship:local"
    git(repo, "remote", "add", "origin", "https://bot:s3cret@git.example.com/ml/bentoship.git")
    assert source_url(repo) == "https://git.example.com/ml/bentoship.git"


def test_tag_carries_both_model_versions_and_the_code_version() -> None:
    assert image_tag("1", "2", "1a2b3c4") == "ctl-v1.trt-v2.code-1a2b3c4"
    assert image_tag("12", None, "1a2b3c4-dirty-abcdef") == "ctl-v12.code-1a2b3c4-dirty-abcdef"


# --- `differences`: whether an existing image is this same build ---------------------------------


def build_labels(trusted_types: tuple[str, ...] = (), **changes: str) -> dict[str, str]:
    """The labels `image_labels` writes for one A/B build; `changes` override some of them."""
    labels = image_labels(
        tag="ctl-v1.trt-v2.code-1a2b3c4",
        name="demo-classifier",
        revision="1a2b3c4" * 5 + "1a2b3",
        code_label="1a2b3c4",
        source="urn:bentoship:local",
        models=[
            ModelLayer("control", "demo-classifier", "1", "run1", "m" * 64),
            ModelLayer("treatment", "demo-classifier", "2", "run2", "n" * 64),
        ],
        weights={"control": 90, "treatment": 10},
        allow_pickle=False,
        requirements_sha256="r" * 64,
        base_ref="127.0.0.1:5000/bentoship/base@sha256:" + "b" * 64,
        config_sha256="c" * 64,
        trusted_types=trusted_types,
    )
    for key, value in changes.items():
        labels[f"{LABEL_PREFIX}.{key}"] = value
    return labels


def test_identical_identity_labels_are_the_same_build() -> None:
    assert differences(build_labels(), build_labels()) == []


@pytest.mark.parametrize(
    "key",
    [
        "base",
        "requirements_sha256",
        "config_sha256",
        "code.version",
        "model.control.manifest_sha256",
        "model.treatment.manifest_sha256",
    ],
)
def test_each_identity_label_that_differs_is_named(key: str) -> None:
    found = build_labels(**{key: "something-else"})
    assert differences(found, build_labels()) == [f"{LABEL_PREFIX}.{key}"]


def test_every_differing_identity_label_is_named_in_a_stable_order() -> None:
    found = build_labels(**{"base": "x", "config_sha256": "x", "model.treatment.manifest_sha256": "x"})
    assert differences(found, build_labels()) == [
        f"{LABEL_PREFIX}.config_sha256",
        f"{LABEL_PREFIX}.base",
        f"{LABEL_PREFIX}.model.treatment.manifest_sha256",
    ]


def test_a_model_manifest_missing_on_either_side_is_a_difference() -> None:
    wanted = build_labels()
    found = dict(wanted)
    del found[f"{LABEL_PREFIX}.model.treatment.manifest_sha256"]
    key = f"{LABEL_PREFIX}.model.treatment.manifest_sha256"
    assert differences(found, wanted) == [key]
    assert differences(wanted, found) == [key]


def test_an_image_without_labels_differs_in_every_identity_label() -> None:
    assert len(differences({}, build_labels())) == 6


def test_created_and_other_non_identity_labels_do_not_count() -> None:
    found = build_labels()
    found["org.opencontainers.image.created"] = "2001-01-01T00:00:00+00:00"
    found["org.opencontainers.image.source"] = "https://git.example.com/ml/bentoship.git"
    found["maintainer"] = "someone else"  # added by a base image or a CI system
    assert differences(found, build_labels()) == []


def test_trusted_types_are_labelled_and_read_back_sorted() -> None:
    assert ImageIdentity.from_labels(build_labels()).trusted_types == ()
    labels = build_labels(("xgboost.sklearn.XGBClassifier", "xgboost.core.Booster"))
    assert ImageIdentity.from_labels(labels).trusted_types == (
        "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier")
