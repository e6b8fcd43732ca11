"""A local run is reachable from this machine only, and Ray's token stays private.

The sockets are read from the run's own process tree (psutil), so other Ray instances on a
shared machine do not count: every listening socket must be on a loopback address.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.connect import LOCAL_ONLY_ENV, auth_token_path, connect, loopback_only, private_auth_token

ROOT = Path(__file__).resolve().parents[1]


def listening_sockets(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of
    ``root`` and its descendants."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline()[:1]) or process.name()
            for c in process.net_connections(kind="inet"):
                if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM):
                    found.append((name, c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a worker that exited while we looked
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def exposed(sockets) -> list:
    return [s for s in sockets if not is_loopback(s[1])]


def test_loopback_check_tells_wildcards_and_public_addresses_from_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
    assert exposed([("gcs", "::", 1), ("raylet", "::ffff:127.0.0.1", 2)]) == [("gcs", "::", 1)]


def test_local_ray_listens_on_loopback_only_with_a_private_token(ray_local):
    """The session's Ray is started by :func:`cluster.connect.connect`, as every job's is; with
    an actor and tasks running, no process of this test's tree listens beyond loopback."""
    ray = ray_local

    @ray.remote
    class Probe:
        def pid(self):
            return os.getpid()

    @ray.remote
    def pid():
        return os.getpid()

    actor = Probe.remote()
    assert ray.get(actor.pid.remote()) != os.getpid()
    ray.get([pid.remote() for _ in range(4)])
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    deadline = time.time() + 20  # the agents start a few seconds after ray.init
    sockets = listening_sockets(psutil.Process())
    while time.time() < deadline and not any("agent" in s[0].lower() for s in sockets):
        time.sleep(0.5)
        sockets = listening_sockets(psutil.Process())
    assert len(sockets) >= 4, sockets  # GCS, raylet, the driver, the workers: something was looked at
    assert exposed(sockets) == [], exposed(sockets)
    ray.kill(actor)

    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    path = auth_token_path()
    assert path is not None and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_private_auth_token_creates_and_tightens_the_token_file(tmp_path, monkeypatch):
    token = tmp_path / "ray" / "auth_token"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert private_auth_token() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    os.chmod(token, 0o644)  # as Ray itself writes it
    assert private_auth_token() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == first  # kept, made private
    monkeypatch.setenv("RAY_AUTH_TOKEN", "in-the-environment")
    assert private_auth_token() is None


def test_local_only_mode_lasts_as_long_as_the_local_ray(ray_local, monkeypatch):
    from ray._private import ray_constants

    assert connect() is False  # the session's Ray runs: nothing started
    assert os.environ.get(LOCAL_ONLY_ENV) == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    monkeypatch.setenv(LOCAL_ONLY_ENV, "1")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with loopback_only():
        assert os.environ[LOCAL_ONLY_ENV] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ[LOCAL_ONLY_ENV] == "1" and ray_constants.ENABLE_RAY_CLUSTER is True  # a cluster job after


@pytest.mark.slow  # a real `tubeflow label` in its own process with its own Ray
def test_a_label_run_listens_on_loopback_only(tmp_path):
    from test_label_pipeline import IMAGE_ID, make_corpus

    corpus = make_corpus(tmp_path / "corpus", videos=3, frames=12)
    argv = [sys.executable, "-m", "jobs.cli", "label", "--input", f"{corpus}/videos", "--output",
            str(tmp_path / "out"), "--segmenter", "precomputed", "--model", f"{corpus}/perframe",
            "--image-id-format", IMAGE_ID, "--chunk-frames", "4", "--no-progress", "--executor", "ray"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = set()
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        seen.update(listening_sockets(root))
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    names = {s[0] for s in seen}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), seen
    assert exposed(seen) == [], sorted(exposed(seen))


@pytest.mark.slow  # a real `tubeflow label` in its own process, input on the moto S3 server
@pytest.mark.parametrize("executor", ["ray", "local"])
def test_credentials_reach_no_log_manifest_or_error(s3_bucket, tmp_path, monkeypatch, executor):
    """A labelling job run with distinctive AWS credentials and Ray token, one of its videos
    broken: none of the secrets appears in its console output, its manifest and failure rows,
    any file it wrote, or the logs of its Ray session (on Ray)."""
    import pyarrow.parquet as pq

    from operators import fs
    from test_label_pipeline import IMAGE_ID, make_corpus

    secrets_ = {"AWS_ACCESS_KEY_ID": "AKIATUBEFLOWTESTKEY7", "AWS_SECRET_ACCESS_KEY": "tubeflow-secret-Zq8Xw3",
                "AWS_SESSION_TOKEN": "tubeflow-session-Rk2Lp9"}
    for name, value in secrets_.items():
        monkeypatch.setenv(name, value)  # moto accepts any key
    token = tmp_path / "ray_token"
    token.write_text("f0" * 32)
    os.chmod(token, 0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    corpus = make_corpus(tmp_path / "corpus", videos=1, frames=6)
    fs.write_bytes(f"{s3_bucket}/in/0000.mp4", open(f"{corpus}/videos/0000.mp4", "rb").read())
    fs.write_bytes(f"{s3_bucket}/in/broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "jobs.cli", "label", "--input", f"{s3_bucket}/in", "--output", str(out),
            "--segmenter", "precomputed", "--model", f"{corpus}/perframe", "--image-id-format", IMAGE_ID,
            "--chunk-frames", "3", "--no-progress", "--executor", executor]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "broken.mp4" in stderr, stderr[-2000:]  # one failure row
    texts = {"stdout": stdout, "stderr": stderr}
    for path in out.rglob("*"):
        if path.is_file():  # Parquet compresses its strings: read it as rows
            texts[str(path)] = str(pq.read_table(path).to_pylist()) if path.suffix == ".parquet" else \
                path.read_bytes().decode("latin-1")
    sessions = list(Path("/tmp/ray").glob(f"session_*_{proc.pid}"))  # the run's own Ray: its logs
    assert len(sessions) == (executor == "ray"), sessions
    for path in (sessions[0] / "logs").rglob("*") if sessions else []:
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert any("run_manifest.json" in name for name in texts) and any("failures.parquet" in n for n in texts)
    secrets_["ray token"] = "f0" * 32
    leaks = [(name, where) for name, value in secrets_.items() for where, text in texts.items() if value in text]
    assert leaks == []
