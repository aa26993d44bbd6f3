"""Building: from resolved model versions to a smoke-tested image, pushed by digest.

    plan        the request, resolved and checked before any side effect (`BuildRequest`, `Plan`)
    service     the service's configuration, OpenAPI document and code version of a copy
    bento       MLflow models -> BentoML store -> Bento (and the service template's build context)
    builder     `build` and `serve`: the side effects, in order (`BuildResult`)
    base        the platform's base image (`ensure_base_image`, `lock_pins`)
    wheels      wheels for the image's platform, prepared on the host
    extras      the models' extra dependencies beyond the base image
    image       the layered Dockerfile, its context, `docker build`, the layers
    smoke       start an image, wait for readiness, ask for predictions
    transfer    push to and pull from the OCI registry through the engine
    oci         read-only lookups in the OCI registry (HTTP API)
    engine      the Docker engine connection
"""
