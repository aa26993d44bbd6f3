"""Fixtures of the integration tier: the demo store, and the demo A/B image built from it once."""

from __future__ import annotations

import pytest

from pipeline.build.builder import BuildResult, build
from pipeline.build.plan import BuildRequest
from pipeline.settings import Settings
from tests.stores import demo_store, fresh_demo_store  # noqa: F401 - fixtures

# @champion as control, @challenger as treatment, pushed: the image test_build.py checks and
# other modules (test_serve_run.py) run.
AB = BuildRequest(control="demo-classifier@champion", treatment="demo-classifier@challenger",
                  push=True)


@pytest.fixture(scope="session")
def ab_build(
    demo_store: Settings,  # noqa: F811 - the fixture imported above
    docker_client: object,
    base_image: object,
) -> BuildResult:
    return build(AB, demo_store, echo=print)
