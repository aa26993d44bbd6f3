"""Read-only lookups in an OCI registry over its HTTP API (distribution v2).

The build asks the registry whether `repository:tag` already exists, and with which labels, so
that building the same model versions and code again finds the image even when it is not on this
machine. Pushing and pulling go through the Docker engine (and its credentials); these lookups
are anonymous. Loopback registries are spoken to over plain HTTP, like the engine does by default,
every other one over HTTPS.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PushError, RegistryUnreachable

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
_INDEX_TYPES = MANIFEST_TYPES[2:]


@dataclass(frozen=True)
class RemoteImage:
    reference: str  # repository:tag as asked
    digest: str  # the manifest digest, "sha256:..."
    labels: dict[str, str]


def split(repository: str) -> tuple[str, str]:
    """`127.0.0.1:5000/team/name` -> (`127.0.0.1:5000`, `team/name`)."""
    registry, _, name = repository.partition("/")
    if not name or not ("." in registry or ":" in registry or registry == "localhost"):
        raise PushError(f"{repository!r} does not start with a registry host (HOST[:PORT]/NAME)")
    return registry, name


def base_url(registry: str) -> str:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    loopback = host == "localhost" or host.startswith("127.") or host == "[::1]"
    return f"{'http' if loopback else 'https'}://{registry}"


def answers(registry: str, timeout_s: float = 3.0) -> bool:
    """Whether the registry's API answers at all (401 counts: it wants credentials)."""
    try:
        _request(f"{base_url(registry)}/v2/", timeout_s=timeout_s)
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except RegistryUnreachable:
        return False
    return True


def find(repository: str, tag: str, timeout_s: float = 5.0) -> RemoteImage | None:
    """The digest and labels of `repository:tag`, or None when the registry has no such tag.

    Raises `RegistryUnreachable` when the registry does not answer and `PushError` when it
    answers with anything but the image or a 404 (e.g. 401: lookups need credentials).
    """
    registry, name = split(repository)
    root = f"{base_url(registry)}/v2/{name}"
    try:
        headers, body = _request(f"{root}/manifests/{tag}", timeout_s=timeout_s)
        digest = headers.get("docker-content-digest", "")
        manifest = json.loads(body)
        if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
            entry = _linux_amd64(manifest)
            if entry is None:
                return None
            _, body = _request(f"{root}/manifests/{entry['digest']}", timeout_s=timeout_s)
            manifest = json.loads(body)
        _, config = _request(f"{root}/blobs/{manifest['config']['digest']}", timeout_s=timeout_s)
        labels = (json.loads(config).get("config") or {}).get("Labels") or {}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise PushError(
            f"the registry {registry} answered {exc.code} {exc.reason} when asked for "
            f"{name}:{tag}" + (" (anonymous lookups need credentials)" if exc.code == 401 else "")
        ) from exc
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise PushError(
            f"the registry {registry} sent an unreadable manifest for {name}:{tag}"
        ) from exc
    if not digest.startswith("sha256:"):
        raise PushError(f"the registry {registry} sent no Docker-Content-Digest for {name}:{tag}")
    return RemoteImage(f"{repository}:{tag}", digest, {str(k): str(v) for k, v in labels.items()})


def _linux_amd64(index: dict[str, Any]) -> dict[str, Any] | None:
    for entry in index.get("manifests", []):
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return dict(entry)
    return None


def _request(url: str, *, timeout_s: float) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": ", ".join(MANIFEST_TYPES)})
    loopback = url.startswith("http://")
    # A proxy from the environment must not see loopback traffic (it cannot reach it anyway).
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryUnreachable(
            f"the registry at {url.split('/v2/')[0]} is not reachable: {reason}"
        ) from exc
