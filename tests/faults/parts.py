"""Real parts the fault tests break on purpose: an MLflow server, a registry, a throttling proxy,
a second Docker engine, and a `bentoship release` process killed at one of its progress lines.

Each is a real process of its own (never the suite's shared engine on the default socket or
the registry on 127.0.0.1:5000), started on a fixed port or socket so that it can be killed
with SIGKILL and started again where its clients expect it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def _wait_for(what: str, check: Callable[[], bool], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer in {timeout:.0f}s:\n{_tail(log)}")
        time.sleep(0.3)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _kill_group(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@dataclass
class MlflowServer:
    """`mlflow server` on a fixed port over a SQLite file: kill -9 it, start it again."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = self.root / "mlflow-server.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "mlflow"), "server",
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--default-artifact-root", (self.root / "artifacts").as_uri(),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait_for("mlflow server", lambda: _answers(f"{self.url}/health"), log)

    def kill(self) -> None:
        """SIGKILL to the server and every process it forked (its own session)."""
        _kill_group(self.process)
        self.process = None


@dataclass
class Registry:
    """Debian's docker-registry on a fixed port with its own storage: kill -9, start again."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n"
        )
        log = self.root / "registry.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                ["/usr/bin/docker-registry", "serve", str(config)], stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_for("docker-registry", lambda: _answers(f"http://{self.address}/v2/"), log)

    def kill(self) -> None:
        _kill_group(self.process)
        self.process = None

    def tags(self, name: str) -> list[str]:
        """The tags of repository `name` the registry serves (none when it has no such name)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/{name}/tags/list",
                                        timeout=10) as response:
                return list(json.load(response).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def whole(self, name: str, tag: str) -> bool:
        """The manifest `name:tag` and every blob it names are in the registry."""
        accept = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json")
        request = urllib.request.Request(f"http://{self.address}/v2/{name}/manifests/{tag}",
                                         headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            manifest = json.load(response)
        blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
        for blob in blobs:
            head = urllib.request.Request(f"http://{self.address}/v2/{name}/blobs/{blob}",
                                          method="HEAD")
            try:
                with urllib.request.urlopen(head, timeout=10):
                    pass
            except urllib.error.HTTPError:
                return False
        return True


@dataclass
class Throttle:
    """A TCP proxy in front of a registry: clients use its port; `rate` bytes/s slows uploads.

    With `rate` None it forwards at full speed. Connections it cannot forward (the registry is
    down) are closed at once, as a dead registry behind a load balancer would look.
    """

    upstream: int
    port: int
    rate: float | None = None
    _server: socket.socket | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, daemon=True, name="throttle").start()

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upload: bool) -> None:
        try:
            while True:
                chunk = source.recv(2048 if upload and self.rate else 65536)
                if not chunk:
                    break
                target.sendall(chunk)
                if upload and self.rate:
                    time.sleep(len(chunk) / self.rate)
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@dataclass
class Killed:
    """What a `bentoship` process left: its exit code, stdout, and stderr lines."""

    pid: int
    code: int
    out: str
    err: str
    acted: bool  # whether the marker line came and `action` ran

    @property
    def error(self) -> str:
        """The first line of the message the CLI printed for the error ("Error: ...")."""
        return next((line for line in self.err.splitlines() if line.startswith("Error: ")), "")


def run_bentoship(
    args: list[str], env: dict[str, str], cwd: Path, *,
    marker: Callable[[str], bool] | None = None,
    action: Callable[[subprocess.Popen[str]], None] | None = None, timeout: float = 900,
) -> Killed:
    """Run `python -m pipeline ARGS`; at the first stderr line `marker` accepts, call `action`.

    The process runs in its own session (its children too), so `action` may SIGKILL the group.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(process.stdout.read() if process.stdout
                                                        else ""), daemon=True)
    reader.start()
    lines: list[str] = []
    acted = False
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if marker is not None and not acted and marker(line):
            acted = True
            assert action is not None
            action(process)
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"bentoship {' '.join(args)} ran longer than {timeout:.0f}s:\n"
                        + "\n".join(lines[-30:]))
    code = process.wait(timeout=60)
    reader.join(timeout=60)
    return Killed(process.pid, code, "".join(out), "\n".join(lines), acted)


def kill_group(process: subprocess.Popen[str]) -> None:
    """kill -9 the process and everything it started (its session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Engine:
    """A second dockerd, its data root on a small loop-mounted ext4 file system of its own.

    Its own socket, pid file, exec root, data root and bridge (its own subnet), and no iptables
    rules, so it leaves the suite's engine alone. `kill` then `start` restarts it on the same
    data root.
    """

    root: Path
    size_mb: int
    process: subprocess.Popen[bytes] | None = None
    loop: str = ""
    socket: str = "unix:///tmp/faults-docker.sock"
    # Its own bridge and subnet: smoke tests publish a port (docker-proxy, no iptables needed).
    bridge: str = "faultsbr0"
    bridge_ip: str = "172.31.250.1/24"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def mount(self) -> None:
        image = self.root / "disk.img"
        subprocess.run(["truncate", "-s", f"{self.size_mb}M", str(image)], check=True)
        # -m 0: no blocks reserved for root (dockerd is root: it would write into them).
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", self.loop, str(self.data_root)], check=True)

    def start(self) -> None:
        if subprocess.run(["ip", "link", "show", self.bridge], check=False,
                          capture_output=True).returncode != 0:
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", self.bridge_ip, "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        log = self.root / "dockerd.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                ["dockerd", "--data-root", str(self.data_root),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"),
                 "-H", self.socket, f"--bridge={self.bridge}", "--iptables=false",
                 "--ip-masq=false", "--ip6tables=false", "--storage-driver=overlay2"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait_for("the second dockerd", self._answers, log, timeout=60)

    def _answers(self) -> bool:
        return subprocess.run(["docker", "-H", self.socket, "info"], check=False,
                              capture_output=True, timeout=30).returncode == 0

    def kill(self) -> None:
        """SIGKILL to dockerd and its containerd (its session). Builds run no containers here
        (the Dockerfile only copies), so no shim is left behind."""
        _kill_group(self.process)
        self.process = None
        # The killed containerd may linger as a zombie (no init reaps it here); its pid file
        # would make the next dockerd wait for it instead of starting a new one.
        (self.root / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.socket, *args], check=False,
                              capture_output=True, text=True)

    def free_mb(self) -> int:
        return shutil.disk_usage(self.data_root).free // 2**20

    def fill(self, leave_kb: int = 64) -> Path:
        """Fill the data root's file system up to `leave_kb` KiB with one file; return it."""
        filler = self.data_root / "filler"
        stat = os.statvfs(self.data_root)
        # Most of it at once, then the rest in small writes until the file system refuses one.
        bulk = stat.f_bavail * stat.f_frsize - 32 * 2**20
        subprocess.run(["fallocate", "-l", str(max(bulk, 0)), str(filler)], check=True)
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
                os.fsync(fd)
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)
        os.truncate(filler, max(filler.stat().st_size - leave_kb * 1024, 0))
        return filler

    def unmount(self) -> None:
        if self.process is not None:
            running = self.docker("ps", "-aq").stdout.split()
            if running:
                self.docker("rm", "-f", *running)
        self.kill()
        subprocess.run(["umount", "-l", str(self.data_root)], check=False)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], check=False)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
