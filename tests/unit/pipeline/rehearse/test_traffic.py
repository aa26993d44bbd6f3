"""Traffic for rehearsals: the file format, and open-loop replay spread over every pod."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.errors import ReleaseError
from pipeline.rehearse.traffic import read_traffic, replay


def test_a_line_is_a_row_or_a_request_body(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"rows": [{"a": 2}, {"a": 3}]}\n')
    assert [json.loads(b) for b in read_traffic(path)] == [
        {"rows": [{"a": 1}]}, {"rows": [{"a": 2}, {"a": 3}]}]
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ReleaseError, match=r"rows.jsonl:2: a request is a JSON object"):
        read_traffic(path)
    path.write_text("{oops\n")
    with pytest.raises(ReleaseError, match=r"rows.jsonl:1: not JSON"):
        read_traffic(path)


class _Pod(BaseHTTPRequestHandler):
    """Answers 200, or 422 for rows with "bad"; keeps connections alive like uvicorn."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 422 if any("bad" in r for r in body["rows"]) else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pods() -> Iterator[dict[str, str]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Pod) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {f"pod-{i}": f"127.0.0.1:{s.server_address[1]}" for i, s in enumerate(servers)}
    for server in servers:
        server.shutdown()
        server.server_close()


def test_replay_sends_every_request_to_some_pod_and_counts_each_answer(
        pods: dict[str, str]) -> None:
    bodies = [b'{"rows": [{"a": 1}]}', b'{"rows": [{"bad": 1}]}']
    done = replay(bodies, pods, rate=200, duration_s=1.0, workers=4)
    sent = sum(done.sent.values())
    assert sent == 200  # open-loop: the schedule (rate x duration), not the answers, sets it
    assert set(done.sent) == set(pods)  # both pods get traffic
    answered = sum(done.statuses.values())
    assert answered == sent and not done.failures
    assert {status for _, status in done.statuses} == {200, 422}
