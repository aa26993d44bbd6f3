"""Read-only lookups in an OCI registry over its HTTP API (distribution v2).

The build asks the registry whether `repository:tag` already exists, and with which labels, so
that building the same model versions and code again finds the image even when it is not on this
machine. Pushing and pulling go through the Docker engine. A lookup starts anonymous; when the
registry answers 401 it is repeated with the credentials the Docker config holds for that registry
(`credentials.py`): `Basic` as the challenge asks, or, for a `Bearer` challenge, a token fetched
from its realm with them (the distribution token flow). Loopback registries are spoken to over
plain HTTP, like the engine does by default, every other one over HTTPS.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.build import credentials
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


@dataclass
class _Auth:
    """The credentials of one lookup and the Authorization header that worked, once one did."""

    registry: str
    docker_config: Path | None
    header: str = field(default="", repr=False)
    tried: bool = False

    def answer(self, challenge: str, timeout_s: float) -> str | None:
        """The Authorization header for a 401's challenge, or None when we have nothing."""
        if self.tried:
            return None
        self.tried = True
        creds = credentials.for_registry(self.registry, self.docker_config)
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            return creds.basic() if creds is not None else None
        if scheme.lower() != "bearer":
            return None
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if "realm" not in fields:
            return None
        query = urllib.parse.urlencode({k: v for k, v in fields.items() if k != "realm"})
        headers = {"Authorization": creds.basic()} if creds is not None else {}
        _, body = _request(f"{fields['realm']}?{query}", timeout_s=timeout_s, headers=headers)
        token = json.loads(body)
        value = token.get("token") or token.get("access_token")
        return f"Bearer {value}" if value else None


def find(
    repository: str, tag: str, timeout_s: float = 5.0, *, docker_config: Path | None = None
) -> RemoteImage | None:
    """The digest and labels of `repository:tag`, or None when the registry has no such tag.

    Raises `RegistryUnreachable` when the registry does not answer and `PushError` when it
    answers with anything but the image or a 404 (e.g. 401: the Docker config, at
    `docker_config` or the default place, holds no credentials it accepts).
    """
    registry, name = split(repository)
    root = f"{base_url(registry)}/v2/{name}"
    auth = _Auth(registry, docker_config)
    try:
        headers, body = _get(f"{root}/manifests/{tag}", auth, timeout_s)
        digest = headers.get("docker-content-digest", "")
        manifest = json.loads(body)
        if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
            entry = _linux_amd64(manifest)
            if entry is None:
                return None
            _, body = _get(f"{root}/manifests/{entry['digest']}", auth, timeout_s)
            manifest = json.loads(body)
        _, config = _get(f"{root}/blobs/{manifest['config']['digest']}", auth, timeout_s)
        labels = (json.loads(config).get("config") or {}).get("Labels") or {}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise PushError(
            f"the registry {registry} answered {exc.code} {exc.reason} when asked for "
            f"{name}:{tag}" + (_refused(auth) if exc.code in (401, 403) else "")
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


class _SameHostAuthorization(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry our Authorization to another host (blob storage)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != \
                urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _refused(auth: _Auth) -> str:
    creds = credentials.for_registry(auth.registry, auth.docker_config)
    if creds is None:
        return (f": the Docker config holds no credentials for {auth.registry}; run "
                f"`docker login {auth.registry}` (or point DOCKER_CONFIG at a config that has them)")
    return f": it refused the credentials of {creds.describe()}"


def _get(url: str, auth: _Auth, timeout_s: float) -> tuple[dict[str, str], bytes]:
    """GET `url`; on a 401, once, again with what the challenge asks for."""
    try:
        return _request(url, timeout_s=timeout_s,
                        headers={"Authorization": auth.header} if auth.header else {})
    except urllib.error.HTTPError as exc:
        if exc.code != 401 or auth.header:
            raise
        challenge = exc.headers.get("WWW-Authenticate", "") if exc.headers else ""
        header = auth.answer(challenge, timeout_s)
        if header is None:
            raise
        auth.header = header
        return _request(url, timeout_s=timeout_s, headers={"Authorization": header})


def _request(
    url: str, *, timeout_s: float, headers: dict[str, str] | None = None
) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(
        url, headers={"Accept": ", ".join(MANIFEST_TYPES), **(headers or {})})
    loopback = url.startswith("http://")
    # A proxy from the environment must not see loopback traffic (it cannot reach it anyway).
    handlers: list[urllib.request.BaseHandler] = [_SameHostAuthorization()]
    if loopback:
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
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
