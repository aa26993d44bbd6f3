"""bentoship's typed Python API: the front door the `bentoship` CLI itself goes through.

    from pipeline import BuildRequest, build_service, load_settings
    result = build_service(BuildRequest(control="demo-classifier@champion"), load_settings(), echo=print)

The rooms, in the order a release walks through them (docs/architecture.md):

    settings, config,          what everything shares: the environment, bentoship.toml, the
    identity, errors           image identity contract, the error tree
    models/                    MLflow registry resolution, artifact integrity, requirements
    build/                     base image, Bento, Docker image, smoke test, push, OCI lookups
    release/                   release spec, Kubernetes manifests, Kayenta config, Spinnaker
                               pipeline, the API guard, the handoff and the ledger
    flows/                     CI flows: after training, code-only hotfix, rollback, webhooks
    cli/                       click commands only

Names are imported lazily (PEP 562), so `import pipeline` costs nothing and pulls in neither
Docker's SDK nor MLflow until a function that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (the module that defines it, its name there). `build` and `release` are the
# rooms (subpackages), so their main functions are exported as `build_service` and
# `release_service`.
_EXPORTS = {
    # configuration and errors
    "Settings": ("pipeline.settings", "Settings"),
    "load_settings": ("pipeline.settings", "load_settings"),
    "ReleaseConfig": ("pipeline.config", "ReleaseConfig"),
    "CiConfig": ("pipeline.config", "CiConfig"),
    "BuildConfig": ("pipeline.config", "BuildConfig"),
    "load_release_config": ("pipeline.config", "load_release_config"),
    "load_ci_config": ("pipeline.config", "load_ci_config"),
    "load_build_config": ("pipeline.config", "load_build_config"),
    "PipelineError": ("pipeline.errors", "PipelineError"),
    # the image identity contract
    "ImageIdentity": ("pipeline.identity", "ImageIdentity"),
    "image_tag": ("pipeline.identity", "image_tag"),
    "parse_tag": ("pipeline.identity", "parse_tag"),
    "code_version": ("pipeline.identity", "code_version"),
    # build
    "BuildRequest": ("pipeline.build.plan", "BuildRequest"),
    "BuildResult": ("pipeline.build.builder", "BuildResult"),
    "build_service": ("pipeline.build.builder", "build"),
    "serve": ("pipeline.build.builder", "serve"),
    "ensure_base_image": ("pipeline.build.base", "ensure_base_image"),
    # release
    "ReleaseSpec": ("pipeline.release.spec", "ReleaseSpec"),
    "render_release": ("pipeline.release.files", "render_release"),
    "release_service": ("pipeline.release.handoff", "release"),
    "Handoff": ("pipeline.release.handoff", "Handoff"),
    # CI flows
    "on_model_registered": ("pipeline.flows.training", "on_model_registered"),
    "on_commit": ("pipeline.flows.hotfix", "on_commit"),
    "rollback": ("pipeline.flows.rollback", "rollback"),
}

__all__ = [
    "BuildConfig",
    "BuildRequest",
    "BuildResult",
    "CiConfig",
    "Handoff",
    "ImageIdentity",
    "PipelineError",
    "ReleaseConfig",
    "ReleaseSpec",
    "Settings",
    "build_service",
    "code_version",
    "ensure_base_image",
    "image_tag",
    "load_build_config",
    "load_ci_config",
    "load_release_config",
    "load_settings",
    "on_commit",
    "on_model_registered",
    "parse_tag",
    "release_service",
    "render_release",
    "rollback",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
