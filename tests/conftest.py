"""Fixtures shared by every test tier: the Docker engine and the platform's base image."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import docker
import pytest

from pipeline.build.base import BaseImage, ensure_base_image
from pipeline.build.engine import connect
from pipeline.errors import EngineUnavailableError
from pipeline.settings import load_settings


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for a running Docker engine; skipped without one, except under CI=true."""
    try:
        client = connect()
    except EngineUnavailableError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs a Docker engine: {exc}", pytrace=False)
        pytest.skip(str(exc))
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> BaseImage:
    """The base image for the current lock: reused when present, else built (minutes)."""
    return ensure_base_image(
        docker_client, load_settings(), echo=lambda message: print(message, file=sys.stderr)
    )
