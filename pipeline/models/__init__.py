"""Models: what the MLflow Model Registry holds, resolved and checked before anything is built.

    registry      `NAME@ALIAS` / `NAME/VERSION` resolved once to a READY version; downloads
    integrity     SHA-256 manifests of a version's artifacts, recorded once, verified after
    requirements  the models' own requirements against the base image's lock
    demo          the demo models (`bentoship demo train`)
"""
