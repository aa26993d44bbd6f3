"""Releasing: one pushed image (by digest) to the files Spinnaker and Kayenta run, recorded.

    spec        `ReleaseSpec`: the image and production's, by digest, and what is in them
    kubernetes  Deployments (production, baseline, canary), Service, HPA, PDB
    kayenta     the canary config over the service's Prometheus metrics
    spinnaker   the pipeline's stages: deploy, analyse, promote or undo, clean up
    files       every document rendered and validated, then written (`render_release`)
    api_spec    load and validate an OpenAPI document
    api_diff    classify the changes between two specs (breaking or compatible)
    api_export  the spec of an image, or of the service a build would make
    handoff     the API guard, build or reuse, render, record (`release`)
    submit      `spin canary canary-config save`, then `spin pipeline save`, when asked
    outcome     the pipeline's outcome report: signed per outcome at render, checked on receipt
    ledger      releases as MLflow runs: statuses and their changes, production (the newest
                promoted release), the previous release, what each holds
"""
