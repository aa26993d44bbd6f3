"""A private Prometheus that scrapes the rehearsal's pods as Kubernetes service discovery would.

The rendered `prometheus-scrape.yaml` discovers pods (`kubernetes_sd_configs`) and relabels
their `__meta_kubernetes_*` labels into `app`, `track`, `namespace` and `pod`. Here each pod
is a static target that carries the same meta labels, so the rendered `relabel_configs` run
unchanged: what the queries see is what they would see in the cluster.

The queries are Kayenta's: the metric's `PromQL:` inline template with `${scope}` and
`${location}` replaced (kayenta-core `QueryConfigUtils.expandCustomFilter`, a
`StringSubstitutor`), sent to `/api/v1/query_range` with the scope's step
(kayenta-prometheus `PrometheusMetricsService.queryMetrics`). Values are taken as Prometheus
answers them: "NaN" (0/0, a window without requests) stays NaN for the judge's NaN strategy.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ReleaseError

PROMQL_PREFIX = "PromQL:"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    address: str  # host:port the pod answers on
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def _label_name(key: str) -> str:
    """Kubernetes SD's sanitising of label and annotation keys (`prometheus.io/port` ->
    `prometheus_io_port`)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def target_group(pod: Pod) -> dict[str, Any]:
    """One static target with the meta labels `role: pod` discovery gives a pod."""
    labels = {"__meta_kubernetes_namespace": pod.namespace,
              "__meta_kubernetes_pod_name": pod.name}
    for key, value in pod.labels.items():
        labels[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = str(value)
    for key, value in pod.annotations.items():
        labels[f"__meta_kubernetes_pod_annotation_{_label_name(key)}"] = str(value)
    return {"targets": [pod.address], "labels": labels}


def config(pods: Sequence[Pod], relabel_configs: Sequence[Mapping[str, Any]],
           scrape_interval_s: float, job: str = "kubernetes-pods") -> dict[str, Any]:
    interval = f"{max(1, int(scrape_interval_s))}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": job,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [target_group(p) for p in pods],
            "relabel_configs": [dict(r) for r in relabel_configs],
        }],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise ReleaseError(
            "`prometheus` is not on PATH: the rehearsal scrapes the pods with a real Prometheus. "
            "Install Debian's package (`apt-get install prometheus`; `bash ci/setup.sh` does)"
        )
    return found


class Prometheus:
    """A running private Prometheus: `query_range` and where its files are."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise ReleaseError(f"Prometheus refused {path} ({exc.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ReleaseError(f"Prometheus at {self.url} did not answer: {exc}") from None
        if body.get("status") != "success":
            raise ReleaseError(f"Prometheus answered {path} with {body}")
        return body["data"]

    def targets_up(self) -> dict[str, str]:
        data = self._get("/api/v1/targets", {"state": "active"})
        return {t["labels"].get("pod", t["scrapeUrl"]): t["health"]
                for t in data["activeTargets"]}

    def query_range(self, promql: str, start: float, end: float, step_s: int
                    ) -> list[float]:
        """One series' values (Kayenta's queries aggregate to one); [] when there is none."""
        data = self._get("/api/v1/query_range",
                         {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}",
                          "step": f"{step_s}s"})
        result = data["result"]
        if not result:
            return []
        if len(result) > 1:
            raise ReleaseError(f"the query returned {len(result)} series, Kayenta reads one "
                               f"per scope: {promql}")
        return [float(v) for _, v in result[0]["values"]]


def expand(template: str, scope: str, location: str) -> str:
    """The metric's PromQL with the scope's label fragment and location filled in."""
    text = template.removeprefix(PROMQL_PREFIX)
    return text.replace("${scope}", scope).replace("${location}", location)


@contextmanager
def running(pods: Sequence[Pod], relabel_configs: Sequence[Mapping[str, Any]],
            scrape_interval_s: float, *, keep: Path | None = None,
            ready_s: float = 30.0) -> Iterator[Prometheus]:
    """Start Prometheus on a free loopback port with its own store; stop it afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="bentoship-prometheus-"))
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(pods, relabel_configs, scrape_interval_s),
                                          sort_keys=False))
    check = shutil.which("promtool")
    if check is not None:
        proc = subprocess.run([check, "check", "config", str(config_file)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ReleaseError(f"promtool refused the rehearsal's scrape config: "
                               f"{proc.stdout.strip()} {proc.stderr.strip()}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary(), f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        server = Prometheus(url, directory)
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                raise ReleaseError(f"Prometheus exited ({process.returncode}): "
                                   f"{(directory / 'prometheus.log').read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ReleaseError(f"Prometheus was not ready after {ready_s:.0f}s")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(config_file, keep / "prometheus.yml")
        shutil.rmtree(directory, ignore_errors=True)

