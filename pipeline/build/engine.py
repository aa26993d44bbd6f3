"""The Docker engine the pipeline builds, runs and pushes images with.

The Docker SDK itself reads `DOCKER_HOST` (and `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`); without
it the SDK talks to the default socket, `unix:///var/run/docker.sock`.
"""

from __future__ import annotations

import docker
import docker.utils
from docker.errors import DockerException
from requests.exceptions import RequestException

from pipeline.errors import EngineUnavailableError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def connect(timeout: int = 300) -> docker.DockerClient:
    """A client for the Docker engine that answered a ping.

    `timeout` bounds each request in seconds; a build step may stream nothing for minutes.

    Raises `EngineUnavailableError` naming what was tried and how to start an engine.
    """
    base_url = docker.utils.kwargs_from_env().get("base_url")
    tried = (
        f"{base_url} (from DOCKER_HOST)" if base_url else f"{DEFAULT_SOCKET} (the default socket)"
    )
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (DockerException, RequestException, OSError) as exc:
        raise EngineUnavailableError(
            f"No Docker engine answers at {tried}: {exc}\n"
            "Start one with `bash ci/setup.sh` (installs and starts dockerd and the local "
            "registry), or as root run `dockerd &`; or point DOCKER_HOST at a running engine."
        ) from exc
    return client
