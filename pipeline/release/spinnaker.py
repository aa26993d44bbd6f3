"""The Spinnaker pipeline of a release: its stages and the document `spin pipeline save` takes.

A canary release runs baseline (production digest) and canary (new digest) side by side behind
the production Service, lets Kayenta compare them, promotes on a pass and cleans up either way.
A first release (no production digest yet) and a rollback (`skip_canary`) deploy straight to
production. spinnaker/README.md explains the stages and the failure path.

Every deploy, promotion and undo stage has a timeout (`[release] stage_timeout_minutes`); each
deploy and promotion continues on failure, so the undo, the clean-up, the outcome report and
the verdict still run. With an `OutcomeHook` (pipeline/release/outcome.py) the stage before the
verdict, `Report outcome`, posts promoted, rolled-back or failed to the webhook receiver.

Cancellation (read in Orca's source, spinnaker/orca 2025-04, orca-queue `CancelStageHandler`,
`CompleteStageHandler`, `StartStageHandler`): cancelling an execution cancels the running stage
and starts no further stage, and only stages that implement `CancellableStage` (run job,
pipeline, script, Kayenta's canary pipeline) get a `cancel()` call; `deployManifest` and
`deleteManifest` do not. So no stage of this pipeline can clean up after a cancel: a cancelled
canary leaves the canary and baseline Deployments running and reports no outcome;
spinnaker/README.md says what to run then.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import ReleaseConfig
from pipeline.release.kayenta import canary_config_id, stage_scopes
from pipeline.release.kubernetes import deployment, production_manifests
from pipeline.release.outcome import SIGNATURE_HEADER, OutcomeHook
from pipeline.release.spec import ReleaseSpec

STAGE_BASELINE = "Deploy baseline"
STAGE_CANARY = "Deploy canary"
STAGE_ANALYSIS = "Canary analysis"
STAGE_PROMOTE = "Promote to production"
STAGE_UNDO = "Undo production rollout"
STAGE_DELETE_CANARY = "Delete canary"
STAGE_DELETE_BASELINE = "Delete baseline"
STAGE_VERDICT = "Verdict"
STAGE_DEPLOY = "Deploy production"
STAGE_OUTCOME = "Report outcome"
# Compared as text: a parameter may arrive as a string or, from some triggers, a boolean.
PROMOTE = "parameters['promote'].toString() == 'true'"


def _status_is(stage_name: str, status: str) -> str:
    return f"#stage('{stage_name}').status.toString() == '{status}'"


def _deploy_stage(
    ref: str, after: list[str], name: str, config: ReleaseConfig, manifests: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": "deployManifest",
        "name": name,
        "account": config.account,
        "cloudProvider": "kubernetes",
        "moniker": {"app": config.application},
        "namespaceOverride": config.namespace,
        "source": "text",
        "manifests": manifests,
        # Digests are pinned in the manifests; nothing in them is a pipeline expression.
        "skipExpressionEvaluation": True,
        "trafficManagement": {
            "enabled": False,
            "options": {"enableTraffic": False, "services": []},
        },
        **_timeout(config),
    }


def _timeout(config: ReleaseConfig) -> dict[str, Any]:
    return {"overrideTimeout": True, "stageTimeoutMs": config.stage_timeout_minutes * 60_000}


def _manifest_stage(
    ref: str, after: list[str], kind: str, name: str, config: ReleaseConfig, target: str
) -> dict[str, Any]:
    stage: dict[str, Any] = {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": kind,
        "name": name,
        "account": config.account,
        "cloudProvider": "kubernetes",
        "location": config.namespace,
        "manifestName": f"deployment {target}",
        "mode": "static",
    }
    if kind == "deleteManifest":
        stage["options"] = {"cascading": True}
    else:
        stage["numRevisionsBack"] = 1
    return stage


_CONTINUE_ON_FAILURE = {
    "failPipeline": False,
    "continuePipeline": True,
    "completeOtherBranchesThenFail": False,
}


def _undo_stage(
    ref: str, after: list[str], spec: ReleaseSpec, config: ReleaseConfig, rollout: str
) -> dict[str, Any]:
    """Undo production's rollout, only when the stage `rollout` deployed it and failed."""
    return {
        **_manifest_stage(ref, after, "undoRolloutManifest", STAGE_UNDO, config, spec.name),
        "stageEnabled": {
            "type": "expression",
            "expression": _status_is(rollout, "FAILED_CONTINUE"),
        },
        **_timeout(config),
        **_CONTINUE_ON_FAILURE,
    }


def _outcome_expression(rollout: str, undo: str | None) -> str:
    """SpEL for what became of the release: `rollout` is the stage that changes production."""
    if undo is None:
        return f"{_status_is(rollout, 'SUCCEEDED')} ? 'promoted' : 'failed'"
    return (
        f"{_status_is(rollout, 'SUCCEEDED')} ? 'promoted' : "
        f"(({_status_is(rollout, 'FAILED_CONTINUE')} and {_status_is(undo, 'SUCCEEDED')}) ? "
        "'rolled-back' : 'failed')"
    )


def _outcome_stage(
    ref: str, after: list[str], hook: OutcomeHook, outcome: str, enabled: str | None = None
) -> dict[str, Any]:
    """Post the outcome, signed at render time; its own failure does not change the verdict."""
    signature = "''"  # one signature per outcome, chosen by the outcome's own expression
    for name, value in reversed(list(hook.signatures.items())):
        signature = f"({outcome}) == '{name}' ? '{value}' : ({signature})"
    stage: dict[str, Any] = {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": "webhook",
        "name": STAGE_OUTCOME,
        "method": "POST",
        "url": hook.url,
        "customHeaders": {"Content-Type": "application/json",
                          SIGNATURE_HEADER: "${" + signature + "}"},
        "payload": {
            "release_id": hook.release_id,
            "outcome": "${" + outcome + "}",
            "execution_id": "${execution.id}",
        },
        "waitForCompletion": False,
        **_CONTINUE_ON_FAILURE,
    }
    if enabled is not None:
        stage["stageEnabled"] = {"type": "expression", "expression": enabled}
    return stage


def _verdict(ref: str, after: list[str], checks: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "refId": ref,
        "requisiteStageRefIds": after,
        "type": "checkPreconditions",
        "name": STAGE_VERDICT,
        "preconditions": [
            {
                "type": "expression",
                "context": {"expression": "${" + expression + "}", "failureMessage": message},
                "failPipeline": True,
            }
            for expression, message in checks
        ],
    }


def _canary_stages(
    spec: ReleaseSpec, config: ReleaseConfig, hook: OutcomeHook | None
) -> list[dict[str, Any]]:
    c = config.canary
    promote_if = f"{PROMOTE} and {_status_is(STAGE_ANALYSIS, 'SUCCEEDED')}"
    analysis = {
        "refId": "3",
        "requisiteStageRefIds": ["1", "2"],
        "type": "kayentaCanary",
        "name": STAGE_ANALYSIS,
        "analysisType": "realTime",
        "canaryConfig": {
            "canaryConfigId": canary_config_id(spec, config),
            "lifetimeDuration": c.lifetime_duration,
            "beginCanaryAnalysisAfterMins": c.begin_after_minutes,
            "canaryAnalysisIntervalMins": c.interval_minutes,
            "lookbackMins": 0,
            "scoreThresholds": {"marginal": c.thresholds.marginal, "pass": c.thresholds.pass_},
            "scopes": stage_scopes(spec, config),
            "metricsAccountName": c.metrics_account,
            "storageAccountName": c.storage_account,
        },
        "stageEnabled": {
            "type": "expression",
            "expression": f"{_status_is(STAGE_BASELINE, 'SUCCEEDED')} and "
            f"{_status_is(STAGE_CANARY, 'SUCCEEDED')}",
        },
        **_CONTINUE_ON_FAILURE,
    }
    return [
        {
            **_deploy_stage(
                "1", [], STAGE_BASELINE, config, [deployment(spec, config, "baseline")]
            ),
            **_CONTINUE_ON_FAILURE,
        },
        {
            **_deploy_stage("2", [], STAGE_CANARY, config, [deployment(spec, config, "canary")]),
            **_CONTINUE_ON_FAILURE,
        },
        analysis,
        {
            **_deploy_stage("4", ["3"], STAGE_PROMOTE, config, production_manifests(spec, config)),
            "stageEnabled": {"type": "expression", "expression": promote_if},
            **_CONTINUE_ON_FAILURE,
        },
        _undo_stage("5", ["4"], spec, config, STAGE_PROMOTE),
        {
            **_manifest_stage(
                "6", ["5"], "deleteManifest", STAGE_DELETE_CANARY, config, f"{spec.name}-canary"
            ),
            **_CONTINUE_ON_FAILURE,
        },
        {
            **_manifest_stage(
                "7", ["5"], "deleteManifest", STAGE_DELETE_BASELINE, config, f"{spec.name}-baseline"
            ),
            **_CONTINUE_ON_FAILURE,
        },
        # promote=false is a dry run: nothing to report, the release stays handed-off.
        *([_outcome_stage("9", ["6", "7"], hook,
                          _outcome_expression(STAGE_PROMOTE, STAGE_UNDO), enabled=PROMOTE)]
          if hook else []),
        _verdict(
            "8",
            ["9"] if hook else ["6", "7"],
            [
                (
                    _status_is(STAGE_ANALYSIS, "SUCCEEDED"),
                    (
                        f"the canary of {spec.image} did not pass (or never ran); production "
                        f"keeps {spec.baseline_image}"
                    ),
                ),
                (
                    f"!({PROMOTE}) or {_status_is(STAGE_PROMOTE, 'SUCCEEDED')}",
                    f"promoting {spec.image} to production failed; its rollout was undone",
                ),
            ],
        ),
    ]


def _direct_stages(
    spec: ReleaseSpec, config: ReleaseConfig, hook: OutcomeHook | None
) -> list[dict[str, Any]]:
    deploy = _deploy_stage("1", [], STAGE_DEPLOY, config, production_manifests(spec, config))
    if spec.baseline_digest is None:  # a first release has no earlier revision to undo to
        if hook is None:
            return [deploy]
        return [
            {**deploy, **_CONTINUE_ON_FAILURE},
            _outcome_stage("2", ["1"], hook, _outcome_expression(STAGE_DEPLOY, None)),
            _verdict("3", ["2"], [(_status_is(STAGE_DEPLOY, "SUCCEEDED"),
                                   f"deploying {spec.image} failed")]),
        ]
    return [
        {**deploy, **_CONTINUE_ON_FAILURE},
        _undo_stage("2", ["1"], spec, config, STAGE_DEPLOY),
        *([_outcome_stage("4", ["2"], hook, _outcome_expression(STAGE_DEPLOY, STAGE_UNDO))]
          if hook else []),
        _verdict(
            "3",
            ["4"] if hook else ["2"],
            [
                (
                    _status_is(STAGE_DEPLOY, "SUCCEEDED"),
                    f"deploying {spec.image} failed; its rollout was undone",
                )
            ],
        ),
    ]


def _description(spec: ReleaseSpec, hook: OutcomeHook | None) -> str:
    report = (
        f" The outcome (promoted, rolled-back or failed) is reported to {hook.url} for release "
        f"{hook.release_id}." if hook else
        " It reports no outcome: mark it with `bentoship releases mark RELEASE_ID --status ...`."
    )
    return _plan(spec) + report


def _plan(spec: ReleaseSpec) -> str:
    models = ", ".join(
        f"{variant}={m['name']}/{m['version']}"
        for variant, m in sorted(spec.model_versions.items())
    )
    head = f"bentoship {spec.kind} release of {spec.name}: {spec.image_tag} ({models}; code {spec.code_version})."
    if spec.baseline_digest is None:
        return (
            f"{head} First release: there is no production image to compare against, so there is "
            f"no baseline/canary comparison; {spec.image} deploys directly to production."
        )
    if spec.skip_canary:
        return (
            f"{head} Rollback without canary analysis: {spec.image} replaces {spec.baseline_image} "
            "in production directly; a rollout that does not become stable is undone."
        )
    return (
        f"{head} Canary {spec.image} runs beside baseline {spec.baseline_image}; Kayenta compares "
        "them and the canary is promoted only if it passes. Canary and baseline are deleted "
        "either way; a failed promotion is undone."
    )


def pipeline(
    spec: ReleaseSpec, config: ReleaseConfig, hook: OutcomeHook | None = None
) -> dict[str, Any]:
    """The pipeline document `spin pipeline save --file` accepts; `hook`: report the outcome."""
    canary = spec.mode == "canary"
    parameters = []
    if canary:
        parameters.append(
            {
                "name": "promote",
                "label": "Promote on a passing canary",
                "description": "false runs the canary analysis and cleans up without promoting",
                "default": "true",
                "required": True,
                "hasOptions": True,
                "options": [{"value": "true"}, {"value": "false"}],
                "pinned": True,
            }
        )
    return {
        "application": config.application,
        "name": config.pipeline_name(spec.name),
        "description": _description(spec, hook),
        "keepWaitingPipelines": False,
        "limitConcurrent": True,
        "parameterConfig": parameters,
        # Declared so the image shows in Spinnaker, deliberately not bound to any stage or
        # trigger: clouddriver rewrites every container image of the same repository to a
        # bound artifact, whatever its digest, which would turn the baseline into the canary.
        "expectedArtifacts": [
            {
                "id": f"{spec.name}-image",
                "displayName": f"{spec.name} image",
                "matchArtifact": {
                    "type": "docker/image",
                    "name": spec.repository,
                    "reference": spec.image,
                },
                "defaultArtifact": {
                    "type": "docker/image",
                    "name": spec.repository,
                    "reference": spec.image,
                },
                "useDefaultArtifact": False,
                "usePriorArtifact": False,
            }
        ],
        "triggers": [],
        "stages": (_canary_stages(spec, config, hook) if canary
                   else _direct_stages(spec, config, hook)),
    }
