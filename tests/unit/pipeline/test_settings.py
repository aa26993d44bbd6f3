"""The environment bentoship reads (`load_settings`): the lease, the CI job, the Docker config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import load_settings


def test_defaults_without_ci_or_docker_config() -> None:
    settings = load_settings({})
    assert settings.lease_ttl_s == 120.0
    assert settings.ci_job == "" and settings.docker_config is None


@pytest.mark.parametrize(
    ("env", "job"),
    [
        ({"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/models",
          "GITHUB_RUN_ID": "77", "GITHUB_JOB": "model"},
         "https://github.com/acme/models/actions/runs/77 (model)"),
        ({"BUILD_URL": "https://jenkins.example/job/deploy/12/"},
         "https://jenkins.example/job/deploy/12/"),
        ({"CI_JOB_URL": "https://gitlab.example/acme/-/jobs/5"},
         "https://gitlab.example/acme/-/jobs/5"),
        ({"BENTOSHIP_CI_JOB": "nightly-7", "BUILD_URL": "https://jenkins.example/x"},
         "nightly-7"),
    ],
)
def test_the_ci_job_a_lease_names(env: dict[str, str], job: str) -> None:
    assert load_settings(env).ci_job == job


def test_lease_ttl_and_docker_config(tmp_path: Path) -> None:
    settings = load_settings({"BENTOSHIP_LEASE_TTL": "30", "DOCKER_CONFIG": str(tmp_path)})
    assert settings.lease_ttl_s == 30.0 and settings.docker_config == tmp_path
    for bad in ("soon", "1", "-5"):
        with pytest.raises(ConfigError, match="BENTOSHIP_LEASE_TTL=.*at least 3"):
            load_settings({"BENTOSHIP_LEASE_TTL": bad})
