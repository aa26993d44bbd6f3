"""The CI flows, as a typed API: a new model version, a code-only hotfix, a rollback.

    from pipeline import flows
    flows.on_model_registered(model, version, ...)  a registered version -> canary release
    flows.on_commit(message, sha, ...)              `[deploy: code-only]` -> hotfix -> canary
    flows.rollback(to=..., ...)                     an earlier image, by digest -> deploy, no build

`bentoship ci ...` and `bentoship rollback` (pipeline/cli/ci.py) only parse and print; the
webhook receiver (pipeline/flows/receiver.py) calls `on_model_registered` for each accepted
delivery.

Production is what the ledger says: the newest promoted release of the service. A new version
is released as the treatment against production's control (or, with `[ci] new_version_as =
"control"`, replaces the control); a hotfix rebuilds production's model versions with the
code of the checked-out commit; a rollback goes back to the release before production, skipping
images an earlier rollback left behind (`choose_previous`, pipeline/release/ledger.py).
Releases run one at a time per state folder (`<BENTOSHIP_HOME>/release.lock`), so a webhook and
a CI job on one machine never race.

The room, one concept per module:

    training.py     after training: `on_model_registered`, `plan_model_release`
    hotfix.py       a code-only hotfix: `on_commit`, `check_commit`, `check_manifests`
    rollback.py     `rollback`, `parse_target` and `RollbackTarget` (what `--to` names)
    results.py      what a flow did: `FlowResult`, `RollbackResult`
    preflight.py    `ledger_problem` (is MLflow up?) and `one_at_a_time` (the release lock)
    images.py       the models an image or release carries: compared, described, read
    flags.py        deploy flags in commit messages
    webhook.py      MLflow webhook deliveries: signature check, event reader
    receiver.py     `bentoship ci webhook`: the receiver, its bounded queue and release worker
    webhook_server.py  its HTTP side: a Starlette app on uvicorn

Configuration: the `[ci]` table of bentoship.toml (`CiConfig`), next to `[release]`.
"""

from __future__ import annotations

from pipeline.config import CiConfig
from pipeline.errors import LedgerUnavailable
from pipeline.flows.hotfix import check_commit, check_manifests, on_commit
from pipeline.flows.preflight import ledger_problem, one_at_a_time
from pipeline.flows.results import FlowResult, RollbackResult
from pipeline.flows.rollback import RollbackTarget, parse_target, rollback
from pipeline.flows.training import on_model_registered, plan_model_release
from pipeline.release.ledger import choose_previous

__all__ = [
    "CiConfig",
    "FlowResult",
    "LedgerUnavailable",
    "RollbackResult",
    "RollbackTarget",
    "check_commit",
    "check_manifests",
    "choose_previous",
    "ledger_problem",
    "on_commit",
    "on_model_registered",
    "one_at_a_time",
    "parse_target",
    "plan_model_release",
    "rollback",
]
