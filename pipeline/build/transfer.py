"""Moving images between the Docker engine and the OCI registry: push, pull, and what a failure says.

Both go through the engine with the credentials the Docker config holds for the registry
(`credentials.py`; never printed), and report progress in bytes. After a push,
everything refers to the image as `<registry>/<name>@sha256:<digest>`, never by tag; a pull is
by digest too, then tagged locally. Read-only lookups in the registry are `oci.py`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.build import credentials
from pipeline.errors import PushError, explanation, map_exceptions
from pipeline.progress import Echo, reporter


def push(
    client: Any, repository: str, tag: str, echo: Echo, *, docker_config: Path | None = None
) -> str:
    """Push `repository:tag`; return the registry's manifest digest (`sha256:...`).

    With the credentials the Docker config (`docker_config`, default ~/.docker) holds for the
    registry, when it holds any.
    """
    creds = credentials.for_registry(repository.split("/", 1)[0], docker_config)
    auth = {"auth_config": creds.auth_config()} if creds is not None else {}
    digest = ""
    progress = reporter(echo)
    sent: dict[str, int] = {}
    sizes: dict[str, int] = {}
    refused = (PushError, lambda exc: push_message(repository, explanation(exc), creds))
    with (
        map_exceptions({"docker-api": refused}),
        progress.task(f"Pushing {repository}:{tag}", None, "bytes") as task,
    ):
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True, **auth):
            if "error" in chunk:
                raise PushError(push_message(repository, chunk["error"], creds))
            aux = chunk.get("aux") or {}
            if "Digest" in aux:
                digest = aux["Digest"]
            status, layer = chunk.get("status", ""), chunk.get("id", "")
            detail = chunk.get("progressDetail") or {}
            if status == "Pushing" and detail.get("total"):
                sent[layer], sizes[layer] = int(detail.get("current", 0)), int(detail["total"])
                task.update(sum(sent.values()), total=sum(sizes.values()))
            elif status in ("Pushed", "Layer already exists") or status.startswith("Mounted"):
                if layer in sizes:
                    sent[layer] = sizes[layer]
                task.update(sum(sent.values()), note=f"{layer}: {status}")
    if not digest:
        raise PushError(f"pushing {repository}:{tag} reported no digest; nothing was recorded")
    return digest


def pull(
    client: Any, repository: str, digest: str, tag: str, echo: Echo, *,
    docker_config: Path | None = None,
) -> Any:
    """Pull `repository@digest`, tag it `repository:tag` locally and return the image."""
    creds = credentials.for_registry(repository.split("/", 1)[0], docker_config)
    auth = {"auth_config": creds.auth_config()} if creds is not None else {}
    progress = reporter(echo)
    got: dict[str, int] = {}
    sizes: dict[str, int] = {}
    failed = f"pulling {repository}@{digest} failed"
    with map_exceptions({"docker-api": (PushError, lambda exc: f"{failed}: {explanation(exc)}")}):
        with progress.task(f"Pulling {repository}@{digest[:19]}", None, "bytes") as task:
            for chunk in client.api.pull(f"{repository}@{digest}", stream=True, decode=True,
                                         **auth):
                if "error" in chunk:
                    raise PushError(f"{failed}: {chunk['error']}")
                detail = chunk.get("progressDetail") or {}
                if chunk.get("status") == "Downloading" and detail.get("total"):
                    layer = chunk.get("id", "")
                    got[layer], sizes[layer] = int(detail.get("current", 0)), int(detail["total"])
                    task.update(sum(got.values()), total=sum(sizes.values()))
        pulled = client.images.get(f"{repository}@{digest}")
        client.api.tag(pulled.id, repository, tag, force=True)
    return client.images.get(pulled.id)


def push_message(
    repository: str, error: str, creds: credentials.Credentials | None = None
) -> str:
    """What a user reads when the registry refused a push or could not be reached."""
    registry = repository.split("/", 1)[0]
    hint = ""
    lowered = error.lower()
    if any(s in lowered for s in ("unauthorized", "authentication required", "denied",
                                  "credentials")):
        hint = (f" The registry refused the credentials of {creds.describe()}." if creds else
                f" The Docker config holds no credentials for {registry}: run `docker login "
                f"{registry}` (or point DOCKER_CONFIG at a config that has them).")
    if any(s in lowered for s in ("connection refused", "no such host", "dial tcp",
                                  "not reachable", "timed out")):
        hint = (
            f" The registry {registry} is not reachable: start the local one with "
            "`bash ci/setup.sh` or set BENTOSHIP_REGISTRY."
        )
    if lowered.strip() in ("eof", "unexpected eof") or any(
            s in lowered for s in ("connection reset", "broken pipe", "connection aborted")):
        hint = (
            f" The registry {registry} stopped answering during the push (it went down or "
            "dropped the connection). It tags an image only once it holds all of it, so no tag "
            "there points at a part of this one; run the same command again once it answers "
            "(the image is kept locally, only the push is redone)."
        )
    return f"pushing {repository} failed: {error.strip()}.{hint} Nothing was recorded as released."
