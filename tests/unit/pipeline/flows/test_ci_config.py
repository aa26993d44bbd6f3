"""The `[ci]` table of bentoship.toml, which the flows read (`CiConfig`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import CiConfig, ReleaseConfig, load_ci_config, rollback_release_config
from pipeline.errors import ConfigError


def test_ci_config_defaults_without_a_file() -> None:
    config = load_ci_config(None)
    assert config.new_version_as == "treatment"
    assert config.treatment_weight == 10
    assert config.rollback_canary is False


def test_ci_config_reads_the_ci_table(tmp_path: Path) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text('[release]\nnamespace = "ml"\n\n[ci]\nnew_version_as = "control"\n'
                    'alias_events = ["challenger"]\nrollback_canary = true\n')
    config = load_ci_config(path)
    assert config.new_version_as == "control"
    assert config.alias_events == ("challenger",)
    assert config.rollback_canary


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('new_version_as = "canary"', "ci.new_version_as: Input should be 'treatment' or 'control'"),
        ("treatment_weight = 150", "ci.treatment_weight: Input should be less than or equal to 100"),
        ("rollback = true", "ci.rollback: unknown key; allowed keys here: alias_events, models"),
    ],
)
def test_ci_config_errors_name_the_file_and_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text(f"[ci]\n{table}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_ci_config(path)
    assert str(excinfo.value).startswith(f"{path}: invalid ci configuration")
    assert message in str(excinfo.value)


def test_short_rollback_canary_shortens_lifetime_and_interval() -> None:
    config = rollback_release_config(
        ReleaseConfig(), CiConfig(rollback_canary=True, rollback_canary_minutes=13)
    )
    assert config.canary.lifetime_duration == "PT13M"
    assert config.canary.interval_minutes == 13


def test_a_rollback_canary_too_short_for_50_points_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"(?s)rollback_canary_minutes.*judges 20 points.*"
                       r"lengthen interval_minutes to 13"):
        rollback_release_config(
            ReleaseConfig(), CiConfig(rollback_canary=True, rollback_canary_minutes=5)
        )

