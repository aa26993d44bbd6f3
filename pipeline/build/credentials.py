"""Registry credentials from the Docker config, for pushes and for registry lookups.

Resolved as the docker CLI resolves them, by the Docker SDK's `docker.auth`: the `auths`
entries of `config.json`, a `credsStore` for every registry, or a `credHelpers` entry for this
one (each runs `docker-credential-<name> get`, which must be on PATH). The config is
`<DOCKER_CONFIG>/config.json` (`Settings.docker_config`), else `~/.docker/config.json`.

A secret never leaves this module except in a request to its registry: `Credentials` keeps the
password and the identity token out of its repr, and messages name only the registry, the
config file and the username.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PushError

__all__ = ["Credentials", "for_registry"]


@dataclass(frozen=True)
class Credentials:
    registry: str
    username: str
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # OAuth refresh token (`docker login`)
    source: str = ""  # where they came from, for messages: "config.json", "credential helper"

    def auth_config(self) -> dict[str, str]:
        """What the engine's push and pull take as `auth_config`."""
        if self.identity_token:
            return {"identitytoken": self.identity_token, "serveraddress": self.registry}
        return {"username": self.username, "password": self.password,
                "serveraddress": self.registry}

    def basic(self) -> str:
        """The value of an `Authorization: Basic` header."""
        pair = f"{self.username}:{self.password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"

    def describe(self) -> str:
        """Who we are to the registry, for messages: never the secret."""
        return f"user {self.username or '(token)'} from {self.source}"


def for_registry(registry: str, docker_config: Path | None = None) -> Credentials | None:
    """The credentials the Docker config holds for `registry` (HOST[:PORT]), or None.

    Raises PushError when the config cannot be read or its credential helper fails.
    """
    import docker.auth
    import docker.errors

    config_file = docker_config / "config.json" if docker_config is not None else None
    if config_file is not None and not config_file.is_file():
        return None
    config = docker.auth.load_config(config_path=str(config_file) if config_file else None)
    helper = config.get_credential_store(registry)
    try:
        found: dict[str, Any] | None = config.resolve_authconfig(registry)
    except docker.errors.DockerException as exc:
        where = config_file or "the Docker config (~/.docker/config.json or DOCKER_CONFIG)"
        raise PushError(
            f"cannot get the credentials for {registry} from {where}: {exc}. Check its "
            f"credential helper (docker-credential-{helper or '?'}) or run "
            f"`docker login {registry}`."
        ) from exc
    if not found:
        return None
    return Credentials(
        registry=registry,
        username=str(found.get("Username") or found.get("username") or ""),
        password=str(found.get("Password") or found.get("password") or ""),
        identity_token=str(found.get("IdentityToken") or found.get("identitytoken") or ""),
        source=f"credential helper docker-credential-{helper}" if helper else
        str(config_file or "the Docker config"),
    )

