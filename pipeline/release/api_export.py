"""The OpenAPI spec of a service, validated: of a built image, or of the one a build would make.

What `bentoship openapi export` writes. The image's spec is the one its build stored (see
`service_spec`); the planned one comes from the build's plan: models resolved and
verified, configuration derived, nothing built.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import identity
from pipeline.build.smoke import read_file
from pipeline.errors import ReleaseError
from pipeline.release.api_spec import validate_spec

if TYPE_CHECKING:
    from pipeline.build.plan import BuildRequest
    from pipeline.progress import Echo
    from pipeline.settings import Settings


def service_spec_of_image(image_ref: str) -> dict[str, Any]:
    """The spec the image `image_ref` (a tag or REPOSITORY@sha256:...) serves; pulled if needed."""
    from pipeline.build.engine import connect

    spec = service_spec(connect(), image_ref)
    validate_spec(spec, source=f"the spec of {image_ref}")
    return spec


def service_spec_for_models(
    request: BuildRequest, settings: Settings, echo: Echo
) -> dict[str, Any]:
    """The spec of the service `build(request)` would make from this checkout, without Docker."""
    from pipeline.build.plan import plan, resolve_request

    resolved = resolve_request(request, settings, echo)
    with tempfile.TemporaryDirectory(prefix="bentoship-export-") as tmp:
        spec = plan(resolved, settings, Path(tmp), echo).openapi
    refs = " + ".join(r for r in (request.control, request.treatment) if r)
    validate_spec(spec, source=f"the spec of the planned build of {refs}")
    return spec


def service_spec(client: Any, image_ref: str) -> dict[str, Any]:
    """The OpenAPI spec of the service inside `image_ref` (a tag or a digest reference).

    That is the `openapi.json` its build stored next to `bento.yaml`, checked against the
    image's `io.bentoship.openapi_sha256` label; for an image built before the file existed,
    the spec is built from the configuration the image carries. An image that is not here is
    pulled.
    """
    import docker.errors

    from services.config import ServiceConfig
    from services.openapi import build_spec

    found = _local_image(client, image_ref)
    try:
        container = client.containers.create(found.id, entrypoint=["true"])
    except docker.errors.APIError as exc:
        raise ReleaseError(f"cannot open {image_ref}: {exc.explanation or exc}") from exc
    try:
        stored = read_file(container, identity.OPENAPI_IN_IMAGE)
        config = read_file(container, identity.CONFIG_IN_IMAGE) if stored is None else None
    finally:
        container.remove(force=True)
    if stored is not None:
        try:
            spec = json.loads(stored)
        except ValueError as exc:
            raise ReleaseError(f"{identity.OPENAPI_IN_IMAGE} in {image_ref} is not JSON: {exc}") from exc
        label = (found.labels or {}).get(identity.OPENAPI_LABEL)
        if label and identity.openapi_sha256(spec) != label:
            raise ReleaseError(
                f"{identity.OPENAPI_IN_IMAGE} in {image_ref} has SHA-256 {identity.openapi_sha256(spec)}, "
                f"but the image's {identity.OPENAPI_LABEL} label says {label}: the file was changed "
                "after the build"
            )
        return dict(spec)
    if config is None:
        raise ReleaseError(
            f"{image_ref} is not a bentoship image: it has neither {identity.OPENAPI_IN_IMAGE} nor "
            f"{identity.CONFIG_IN_IMAGE}"
        )
    return dict(build_spec(ServiceConfig.model_validate(json.loads(config))))


def _local_image(client: Any, image_ref: str) -> Any:
    import docker.errors

    try:
        return client.images.get(image_ref)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise ReleaseError(f"cannot inspect {image_ref}: {exc.explanation or exc}") from exc
    try:
        return client.images.pull(image_ref)
    except docker.errors.APIError as exc:
        raise ReleaseError(
            f"{image_ref} is not in the local Docker engine and pulling it failed: "
            f"{exc.explanation or exc}"
        ) from exc
