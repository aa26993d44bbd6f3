"""The CI flows without Docker: decisions, `--to`, the webhook receiver over HTTP, CI files.

Deliveries are signed with MLflow's own `_generate_hmac_signature`; the receiver runs a real
HTTP server on loopback. What needs images, a registry and an `mlflow server` is in
tests/integration/test_ci_flows.py and tests/e2e/test_story.py.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from mlflow.webhooks.delivery import _generate_hmac_signature

from pipeline.cli import cli
from pipeline.config import (
    CiConfig,
    ReleaseConfig,
    load_ci_config,
    load_settings,
    rollback_release_config,
)
from pipeline.errors import ConfigError
from pipeline.flows import flows
from pipeline.flows.receiver import DeliveryJournal, Outcome, Receiver, event_filter
from pipeline.flows.webhook import RegistryEvent
from pipeline.identity import ImageIdentity
from pipeline.release.ledger import ReleaseRecord

ROOT = Path(__file__).resolve().parents[2]
REPO = "127.0.0.1:5000/demo-classifier"
SECRET = "unit-test-webhook-secret"


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def record(n: int, *, kind: str = "model", control: str = "1", treatment: str | None = None,
           image: int | None = None, baseline: int | None = None, age_s: int = 0) -> ReleaseRecord:
    models = {"control": {"name": "demo-classifier", "version": control, "run_id": "r"}}
    if treatment:
        models["treatment"] = {"name": "demo-classifier", "version": treatment, "run_id": "r"}
    return ReleaseRecord(
        release_id=f"{n:032x}",
        created=datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=age_s),
        name="demo-classifier",
        kind=kind,
        status="succeeded",
        mode="direct",
        image=f"{REPO}@{digest(image if image is not None else n)}",
        image_tag=f"ctl-v{control}.code-1a2b3c4",
        baseline=f"{REPO}@{digest(baseline)}" if baseline is not None else None,
        code_version="1a2b3c4",
        model_versions=models,
        artifact_uri="",
    )


# --- configuration --------------------------------------------------------------------------------


def test_ci_config_defaults_without_a_file() -> None:
    config = load_ci_config(None)
    assert config.new_version_as == "treatment"
    assert config.treatment_weight == 10
    assert config.rollback_canary is False


def test_ci_config_reads_the_ci_table(tmp_path: Path) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text('[release]\nnamespace = "ml"\n\n[ci]\nnew_version_as = "control"\n'
                    'alias_events = ["challenger"]\nrollback_canary = true\n')
    config = load_ci_config(path)
    assert config.new_version_as == "control"
    assert config.alias_events == ("challenger",)
    assert config.rollback_canary


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('new_version_as = "canary"', "ci.new_version_as: Input should be 'treatment' or 'control'"),
        ("treatment_weight = 150", "ci.treatment_weight: Input should be less than or equal to 100"),
        ("rollback = true", "ci.rollback: unknown key; allowed keys here: alias_events, models"),
    ],
)
def test_ci_config_errors_name_the_file_and_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "bentoship.toml"
    path.write_text(f"[ci]\n{table}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_ci_config(path)
    assert str(excinfo.value).startswith(f"{path}: invalid ci configuration")
    assert message in str(excinfo.value)


def test_short_rollback_canary_shortens_lifetime_and_interval() -> None:
    config = rollback_release_config(
        ReleaseConfig(), CiConfig(rollback_canary=True, rollback_canary_minutes=5)
    )
    assert config.canary.lifetime_duration == "PT5M"
    assert config.canary.interval_minutes == 5


# --- a new model version --------------------------------------------------------------------------


def test_first_release_makes_the_new_version_the_control() -> None:
    request, why = flows.plan_model_release("demo-classifier", "1", None, CiConfig(),
                                            "demo-classifier")
    assert request is not None
    assert (request.control, request.treatment) == ("demo-classifier/1", None)
    assert "first release" in why


def test_new_version_is_the_treatment_beside_productions_control() -> None:
    production = record(1, control="1", treatment="2")
    request, why = flows.plan_model_release("demo-classifier", "3", production,
                                            CiConfig(treatment_weight=20), "demo-classifier")
    assert request is not None
    assert (request.control, request.treatment) == ("demo-classifier/1", "demo-classifier/3")
    assert request.treatment_weight == 20
    assert why.startswith("demo-classifier/3 is the treatment (20%) beside production's control")


def test_new_version_replaces_the_control_by_configuration() -> None:
    request, _ = flows.plan_model_release("demo-classifier", "3", record(1),
                                          CiConfig(new_version_as="control"),
                                          "demo-classifier")
    assert request is not None
    assert (request.control, request.treatment) == ("demo-classifier/3", None)


def test_productions_own_control_is_nothing_to_release() -> None:
    production = record(7)
    request, why = flows.plan_model_release("demo-classifier", "1", production, CiConfig(),
                                            "demo-classifier")
    assert request is None
    assert why == f"demo-classifier/1 is already production's control (release {production.short_id})"


def test_unfollowed_model_is_skipped_before_mlflow_is_asked(tmp_path: Path) -> None:
    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path / "home")})
    result = flows.on_model_registered("other-model", "1", settings, ReleaseConfig(),
                                       CiConfig(models=("demo-classifier",)),
                                       tmp_path / "out", print)
    assert result.action == "skipped"
    assert result.reason == "other-model is not among the models [ci] follows (demo-classifier)"
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


# --- the commit flow ------------------------------------------------------------------------------


def _invoke(args: list[str], tmp_path: Path, **env: str) -> Any:
    home = tmp_path / "home"
    environ = {"BENTOSHIP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
               **env}
    return CliRunner().invoke(cli, args, env=environ, catch_exceptions=False)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Fix the docs\n\nNo flags here.", ("no deploy flags in the commit message: nothing to "
         "deploy. A code-only deploy needs `[deploy: code-only]`")),
        ("Tidy up [deploy: skip]", "skip requested by [deploy: skip]: not deploying this commit"),
        ("Tidy up [skip deploy]", "skip requested by [skip deploy]"),
        ("Explain `[deploy: code-only]` in the docs", "no deploy flags"),
    ],
)
def test_on_commit_without_the_flag_does_nothing_and_says_why(
    tmp_path: Path, message: str, reason: str
) -> None:
    result = _invoke(["ci", "on-commit", "--message", message, "--sha", "0" * 40,
                      "--out", str(tmp_path / "out"), "--output", "json"], tmp_path)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["action"] == "skipped" and answer["release"] is None
    assert answer["reason"].startswith(reason)
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_on_commit_with_conflicting_flags_fails_naming_both(tmp_path: Path) -> None:
    result = _invoke(["ci", "on-commit", "--message", "x [deploy: code-only] [deploy: skip]",
                      "--sha", "0" * 40], tmp_path)
    assert result.exit_code == 1
    assert "asks for both a code-only deploy and no deploy" in result.output


def test_on_commit_refuses_a_sha_that_is_not_head(tmp_path: Path) -> None:
    result = _invoke(["ci", "on-commit", "--message", "Fix [deploy: code-only]",
                      "--sha", "0000000"], tmp_path)
    assert result.exit_code == 1
    assert "--sha 0000000 is not the checked-out commit: HEAD of" in result.output
    assert not (tmp_path / "home").exists()


@pytest.fixture
def git_checkout(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "checkout"
    (root / "services").mkdir(parents=True)
    (root / "services" / "service.py").write_text("VERSION = 1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    return root, git("rev-parse", "HEAD")


def test_check_commit_accepts_head_by_full_or_short_sha(git_checkout: tuple[Path, str]) -> None:
    root, sha = git_checkout
    assert flows.check_commit(root, sha) == sha[:7]
    assert flows.check_commit(root, sha[:7].upper()) == sha[:7]


def test_check_commit_refuses_a_dirty_checkout(git_checkout: tuple[Path, str]) -> None:
    root, sha = git_checkout
    (root / "services" / "service.py").write_text("VERSION = 2\n")
    with pytest.raises(ConfigError, match=r"has uncommitted changes \(code version "
                       rf"{sha[:7]}-dirty-[0-9a-f]{{6}}\): a hotfix ships exactly commit"):
        flows.check_commit(root, sha)


def test_check_commit_refuses_what_is_not_a_sha(git_checkout: tuple[Path, str]) -> None:
    root, _ = git_checkout
    with pytest.raises(ConfigError, match="is not a git commit sha"):
        flows.check_commit(root, "main")


# --- rollback -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, flows.RollbackTarget("previous")),
        ("", flows.RollbackTarget("previous")),
        ("3A15CDCB", flows.RollbackTarget("release", "3a15cdcb")),
        (f"{REPO}@{digest(5)}",
         flows.RollbackTarget("digest", f"{REPO}@{digest(5)}", repository=REPO, digest=digest(5))),
        (digest(5), flows.RollbackTarget("digest", digest(5), digest=digest(5))),
        (f"{REPO}:ctl-v1.code-1a2b3c4",
         flows.RollbackTarget("tag", f"{REPO}:ctl-v1.code-1a2b3c4", repository=REPO,
                              tag="ctl-v1.code-1a2b3c4")),
        ("ctl-v1.trt-v2.code-1a2b3c4",
         flows.RollbackTarget("tag", "ctl-v1.trt-v2.code-1a2b3c4", tag="ctl-v1.trt-v2.code-1a2b3c4")),
    ],
)
def test_rollback_to_accepts_ids_tags_and_digests(
    text: str | None, expected: flows.RollbackTarget
) -> None:
    assert flows.parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latest", "give a release id"),
        ("abc", "give a release id"),
        (f"{REPO}@sha256:abc", "is not a digest"),
        ("sha256:xyz", "is not a digest"),
    ],
)
def test_rollback_to_refuses_anything_else(text: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        flows.parse_target(text)


def test_previous_release_is_the_one_before_production() -> None:
    releases = [record(3, age_s=0), record(2, age_s=10), record(1, age_s=20)]
    assert flows.choose_previous(releases) == releases[1]


def test_previous_release_skips_releases_of_the_same_image() -> None:
    # A hotfix that rebuilt to the very same digest is not somewhere to go back to.
    releases = [record(3, image=9), record(2, image=9), record(1)]
    assert flows.choose_previous(releases) == releases[2]


def test_rolling_back_twice_goes_further_back_not_to_the_bad_image() -> None:
    releases = [
        record(4, kind="rollback", image=2, baseline=3),  # rolled back from 3 to 2
        record(3),
        record(2),
        record(1),
    ]
    assert flows.choose_previous(releases) == releases[3]


def test_nothing_before_the_first_release() -> None:
    assert flows.choose_previous([record(1)]) is None
    assert flows.choose_previous([]) is None


def test_models_and_weights_are_read_from_labels() -> None:
    labels = {
        "io.bentoship.model.control.name": "demo-classifier",
        "io.bentoship.model.control.version": "1",
        "io.bentoship.model.control.run_id": "r1",
        "io.bentoship.model.control.manifest_sha256": "abc",
        "io.bentoship.model.treatment.name": "demo-classifier",
        "io.bentoship.model.treatment.version": "2",
        "io.bentoship.weights": "control=75,treatment=25",
    }
    identity = ImageIdentity.from_labels(labels)
    assert identity.models == {
        "control": {"name": "demo-classifier", "version": "1", "run_id": "r1"},
        "treatment": {"name": "demo-classifier", "version": "2"},
    }
    assert identity.treatment_weight == 25


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rollback_without_mlflow_and_without_a_digest_says_what_to_do(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = _invoke(["rollback", "--out", str(tmp_path / "out")], tmp_path,
                     MLFLOW_TRACKING_URI=down)
    assert result.exit_code == 1
    assert f"the MLflow tracking server {down} does not answer" in result.output
    assert "Without the ledger bentoship cannot tell which release came before production" in (
        result.output
    )
    assert "`bentoship rollback --to REPOSITORY@sha256:...`" in result.output
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 15  # no minutes of MLflow client retries


def test_ledger_problem_is_none_for_the_embedded_store(tmp_path: Path) -> None:
    settings = load_settings({"BENTOSHIP_HOME": str(tmp_path)})
    assert flows.ledger_problem(settings) is None


# --- the webhook receiver -------------------------------------------------------------------------


def body(event: str = "model_version.created", **data: Any) -> bytes:
    entity, action = event.rsplit(".", 1)
    payload = {"entity": entity, "action": action,
               "timestamp": datetime.now(UTC).isoformat(),
               "data": {"name": "demo-classifier", "version": "3", **data}}
    return json.dumps(payload).encode()


def post(url: str, payload: bytes, *, secret: str = SECRET, delivery_id: str | None = None,
         timestamp: int | None = None) -> tuple[int, dict[str, Any]]:
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, stamp,
                                                       payload.decode()),
    }
    request = urllib.request.Request(f"{url}/webhook", data=payload, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Recorder:
    """The release worker's handler, standing in for `flows.on_model_registered`."""

    def __init__(self) -> None:
        self.events: list[RegistryEvent] = []
        self.called = threading.Event()

    def __call__(self, event: RegistryEvent) -> Outcome:
        self.events.append(event)
        self.called.set()
        return Outcome("released", f"released {event.model_name}/{event.version}", "run-1")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, Recorder]]:
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(tmp_path / "deliveries.jsonl"), recorder,
                       ignore=event_filter((), ("challenger",)))
    running.start()
    try:
        yield running, recorder
    finally:
        running.stop(timeout_s=10)


def test_a_signed_new_version_is_accepted_at_once_and_released_by_the_worker(
    receiver: tuple[Receiver, Recorder]
) -> None:
    running, recorder = receiver
    code, answer = post(running.url, body(), delivery_id="d-1")
    assert code == 202
    assert answer == {"status": "accepted", "delivery_id": "d-1", "model": "demo-classifier",
                      "version": "3", "status_url": "/deliveries/d-1"}
    assert recorder.called.wait(10)
    assert [(e.model_name, e.version, e.delivery_id) for e in recorder.events] == [
        ("demo-classifier", "3", "d-1")
    ]
    deadline = time.monotonic() + 10
    while (running.journal.get("d-1") or {}).get("status") != "released":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with urllib.request.urlopen(f"{running.url}/deliveries/d-1", timeout=5) as response:
        assert json.loads(response.read())["release_id"] == "run-1"


def test_a_bad_signature_is_401_with_a_json_error_and_nothing_runs(
    receiver: tuple[Receiver, Recorder]
) -> None:
    running, recorder = receiver
    code, answer = post(running.url, body(), secret="not-our-secret")
    assert code == 401
    assert answer["error"] == "bad_signature"
    assert answer["detail"].startswith("bad signature")
    stale = post(running.url, body(), timestamp=int(time.time()) - 3600)
    assert stale[0] == 401 and stale[1]["error"] == "stale_timestamp"
    assert running.counts["rejected"] == 2
    time.sleep(0.2)
    assert recorder.events == []
    assert not running.journal.path.exists()


def test_unsigned_and_malformed_requests_are_refused(receiver: tuple[Receiver, Recorder]) -> None:
    running, recorder = receiver
    request = urllib.request.Request(f"{running.url}/webhook", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=5)
    assert excinfo.value.code == 401
    assert json.loads(excinfo.value.read())["error"] == "missing_header"
    code, answer = post(running.url, b"[1, 2]")
    assert (code, answer["error"]) == (400, "malformed_body")
    code, answer = post(running.url.replace("/webhook", "") + "/other", body())
    assert code == 404
    assert recorder.events == []


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (body("model_version_tag.set", key="k", value="v"),
         "model_version_tag.set events do not start a release"),
        (body("registered_model.created"),
         "registered_model.created events do not start a release"),
        (body("model_version_alias.deleted", alias="champion"),
         "a deleted alias does not start a release"),
        (body("model_version_alias.created", alias="champion"),
         "alias @champion is not in [ci] alias_events (challenger)"),
    ],
)
def test_other_events_are_acknowledged_and_ignored(
    receiver: tuple[Receiver, Recorder], payload: bytes, detail: str
) -> None:
    running, recorder = receiver
    code, answer = post(running.url, payload)
    assert (code, answer) == (200, {"status": "ignored", "detail": detail})
    time.sleep(0.2)
    assert recorder.events == []


def test_a_configured_alias_starts_a_release(receiver: tuple[Receiver, Recorder]) -> None:
    running, recorder = receiver
    code, _ = post(running.url, body("model_version_alias.created", alias="challenger"))
    assert code == 202
    assert recorder.called.wait(10)
    assert recorder.events[0].alias == "challenger"


def test_a_repeated_delivery_is_a_duplicate_even_after_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "deliveries.jsonl"
    first = Recorder()
    running = Receiver(SECRET, DeliveryJournal(journal), first)
    running.start()
    try:
        assert post(running.url, body(), delivery_id="d-7")[0] == 202
        assert first.called.wait(10)
        code, answer = post(running.url, body(), delivery_id="d-7")
        assert (code, answer["status"]) == (200, "duplicate")
    finally:
        running.stop(timeout_s=10)
    second = Recorder()
    again = Receiver(SECRET, DeliveryJournal(journal), second)
    again.start()
    try:
        code, answer = post(again.url, body(), delivery_id="d-7")
        assert (code, answer["status"]) == (200, "duplicate")
        time.sleep(0.2)
        assert second.events == [] and len(first.events) == 1
    finally:
        again.stop(timeout_s=10)


def test_deliveries_accepted_but_not_finished_resume_at_start(tmp_path: Path) -> None:
    journal = tmp_path / "deliveries.jsonl"
    event = RegistryEvent("model_version.created", "demo-classifier", "4", None, "d-9", None)
    journal.write_text(json.dumps({"delivery_id": "d-9", "status": "accepted",
                                   "event": event.__dict__}) + "\n")
    recorder = Recorder()
    running = Receiver(SECRET, DeliveryJournal(journal), recorder)
    running.start()
    try:
        assert recorder.called.wait(10)
        assert recorder.events == [event]
    finally:
        running.stop(timeout_s=10)


def test_the_receiver_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BENTOSHIP_WEBHOOK_SECRET is not set"):
        Receiver("", DeliveryJournal(tmp_path / "j.jsonl"), Recorder())


def test_a_failing_release_is_journaled_and_the_worker_goes_on(tmp_path: Path) -> None:
    seen: list[str] = []

    def handle(event: RegistryEvent) -> Outcome:
        seen.append(str(event.version))
        if event.version == "3":
            raise ConfigError("cannot release version 3")
        return Outcome("skipped", "fine")

    running = Receiver(SECRET, DeliveryJournal(tmp_path / "j.jsonl"), handle)
    running.start()
    try:
        post(running.url, body(), delivery_id="bad")
        post(running.url, body(version="4"), delivery_id="good")
        deadline = time.monotonic() + 10
        while (running.journal.get("good") or {}).get("status") != "skipped":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert running.journal.get("bad")["status"] == "failed"  # type: ignore[index]
        assert running.journal.get("bad")["detail"] == "cannot release version 3"  # type: ignore[index]
        assert seen == ["3", "4"]
    finally:
        running.stop(timeout_s=10)


# --- the CI definitions ---------------------------------------------------------------------------

PLACEHOLDERS = {
    "COMMIT_MESSAGE": "Fix the hook [deploy: code-only]",
    "COMMIT_SHA": "0" * 40,
    "MODEL_NAME": "demo-classifier",
    "MODEL_VERSION": "3",
    "ROLLBACK_TO": "",
    "RELEASE_DIR": "/tmp/bentoship",
}


def github_workflow() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "ci" / "github-actions.yml").read_text()))


def _commands(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.strip().startswith("bentoship ")]


def github_commands() -> list[str]:
    return [command for job in github_workflow()["jobs"].values() for step in job["steps"]
            for command in _commands(step.get("run", ""))]


def jenkins_commands() -> list[str]:
    return _commands((ROOT / "ci" / "Jenkinsfile").read_text())


def test_both_ci_definitions_run_the_same_bentoship_commands() -> None:
    assert len(github_commands()) == 3
    assert sorted(github_commands()) == sorted(jenkins_commands())


def test_ci_definitions_call_only_ci_and_rollback_commands_that_exist() -> None:
    for command in github_commands():
        line = command.split(" | ")[0]
        line = re.sub(r'"\$([A-Z_]+)([^"]*)"', lambda m: shlex.quote(PLACEHOLDERS[m[1]] + m[2]),
                      line)
        args = shlex.split(line)[1:]
        group: click.Command = cli
        path = []
        while isinstance(group, click.Group):
            path.append(args[0])
            group = group.commands[args.pop(0)]
        assert path in (["ci", "on-commit"], ["ci", "on-model-registered"], ["rollback"]), path
        ctx = group.make_context(" ".join(path), args)  # raises on unknown or missing options
        assert ctx.params["output"] == "json"
        assert str(ctx.params["outdir"]).startswith("/tmp/bentoship/")  # outside the checkout


ALLOWED = ("bash ci/setup.sh", 'echo "$PWD/.venv/bin" >> "$GITHUB_PATH"', 'mkdir -p "$RELEASE_DIR"')


def test_github_steps_hold_no_logic_and_no_expression_injection() -> None:
    for name, job in github_workflow()["jobs"].items():
        for step in job["steps"]:
            script = step.get("run", "")
            assert "${{" not in script, f"{name}: pass values through env:, not into the script"
            for line in script.splitlines():
                line = line.strip()
                assert (not line or line.startswith("bentoship ") or line in ALLOWED), (name, line)


def test_ci_webhook_without_a_secret_exits_1_and_says_what_to_set(tmp_path: Path) -> None:
    result = _invoke(["ci", "webhook", "--port", str(_free_port())], tmp_path,
                     BENTOSHIP_WEBHOOK_SECRET="")
    assert result.exit_code == 1
    assert "BENTOSHIP_WEBHOOK_SECRET is not set" in result.output
