"""The OpenAPI spec of a service, validated: of a built image, or of the one a build would make.

What `bentoship openapi export` writes. The image's spec is the one its build stored (see
`handoff.service_spec`); the planned one comes from the build's plan: models resolved and
verified, configuration derived, nothing built.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.release.api_spec import validate_spec

if TYPE_CHECKING:
    from pipeline.build.plan import BuildRequest
    from pipeline.config import Settings
    from pipeline.progress import Echo


def service_spec_of_image(image_ref: str) -> dict[str, Any]:
    """The spec the image `image_ref` (a tag or REPOSITORY@sha256:...) serves; pulled if needed."""
    from pipeline.build.engine import connect
    from pipeline.release.handoff import service_spec

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
