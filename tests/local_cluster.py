"""A real multi-node Ray cluster on this machine, for the slow cluster tests.

Every node is a ``ray start … --block`` process of its own (a head with its dashboard and job
server, workers that join it), bound to 127.0.0.1, with free ports and a private temp dir, so
that it never meets another Ray running on the same machine. :meth:`LocalCluster.stop` ends
only what this cluster started: each ``ray start --block`` (which takes its node's processes
down with it), then any process whose command line still names this cluster's temp dir. It
never runs ``ray stop``, which would stop every Ray of the machine.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cluster.connect import LOCAL_ONLY_ENV
from pipelines.lease import RUN_ENV

BIN = Path(sys.executable).parent


_GIVEN_PORTS: set[int] = set()
_WORKER_RANGES: list[int] = []


def free_port() -> int:
    """A free loopback port that this process has not handed out before: the OS may give the same
    ephemeral port to two binds in a row once the first socket is closed, and Ray refuses a node
    whose components were given one port twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def node_ports() -> list[str]:
    """``ray start`` options that give every server of one node its own free port; the worker
    port range lies below Linux's ephemeral range (32768-60999), where :func:`free_port`'s picks
    fall, and apart from the other nodes' ranges."""
    low = 10000 + free_port() % 20000
    while any(abs(low - other) <= 200 for other in _WORKER_RANGES):
        low = 10000 + (low + 401 - 10000) % 20000
    _WORKER_RANGES.append(low)
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 200}"]


class LocalCluster:
    """Head + worker nodes as separate Ray nodes; ``dashboard`` is the job server's URL."""

    def __init__(self, head_cpus: int = 2, autoscaling_config: dict | None = None, env: dict | None = None):
        # short: Ray's socket paths under it must stay below the 107-byte limit of AF_UNIX
        self.temp_dir = tempfile.mkdtemp(prefix="tfc-", dir="/tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    # the autoscaler's metrics port is fixed (44217) unless told; another Ray may hold it
                    "AUTOSCALER_METRIC_PORT": str(free_port()), "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    **(env or {})}
        # a session-wide in-process Ray of the test run (conftest's ray_local) keeps "local only"
        # mode in this process's environment; nodes of a real cluster must not inherit it (a
        # worker node refuses to join with it set), nor a run id that tags a lease holder's processes
        for name in (LOCAL_ONLY_ENV, RUN_ENV):
            if env is None or name not in env:
                self.env.pop(name, None)
        # token authentication as a real cluster has it, with this cluster's own token
        token = Path(self.temp_dir) / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
            self.env.pop(name, None)
        self.processes: list[subprocess.Popen] = []
        self.logs = Path(self.temp_dir) / "node-logs"
        self.logs.mkdir()
        head = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                "--include-dashboard=true", f"--ray-client-server-port={free_port()}", f"--num-cpus={head_cpus}",
                "--num-gpus=0", f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *node_ports()]
        if autoscaling_config is not None:
            if autoscaling_config["provider"]["type"] == "fake_multinode":  # its nodes join this head
                autoscaling_config["provider"].setdefault("gcs_address", self.address)
            config = Path(self.temp_dir) / "autoscaler.yaml"
            config.write_text(json.dumps(autoscaling_config))
            head.append(f"--autoscaling-config={config}")
            self.env["RAY_FAKE_CLUSTER"] = "1"
        self._start(head, "head")
        try:
            self.wait_for_dashboard()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, argv: list[str], name: str) -> None:
        out = open(self.logs / f"{name}.log", "w")
        self.processes.append(subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def add_node(self, name: str, *, cpus: int = 1, gpus: int = 0) -> None:
        self._start([str(BIN / "ray"), "start", "--block", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                     f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--temp-dir={self.temp_dir}", *node_ports()], name)

    def wait_for_dashboard(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a Ray node exited:\n{self.node_logs()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5):
                    return
            except urllib.error.HTTPError:  # it answers (401 without the cluster's auth token)
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"the job server did not answer in {timeout} s:\n{self.node_logs()}")

    def ray(self, *argv: str, timeout: float = 600, cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this cluster."""
        return subprocess.run([str(BIN / "ray"), *argv], env=self.env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)

    def python(self, code: str, timeout: float = 120) -> str:
        """Run ``code`` in a driver connected to this cluster; its stdout."""
        done = subprocess.run([sys.executable, "-c", code], env={**self.env, "RAY_ADDRESS": self.address},
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        return done.stdout

    def nodes(self) -> list[dict]:
        """Alive nodes: NodeID, resources."""
        code = ("import json, ray; ray.init(log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))")
        return json.loads(self.python(code).strip().splitlines()[-1])

    def wait_for_nodes(self, count: int, timeout: float = 180) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if len(nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} of {count} nodes came up:\n{self.node_logs()}")
            time.sleep(2)

    def node_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.logs.iterdir()))

    def own_pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir (raylets, GCS, workers, …)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if self.temp_dir.encode() in cmdline:
                pids.append(int(entry))
        return pids

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while self.own_pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.own_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not os.environ.get("TUBEFLOW_KEEP_CLUSTER_DIR"):  # kept to read the nodes' logs after a failure
            shutil.rmtree(self.temp_dir, ignore_errors=True)
