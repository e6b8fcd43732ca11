"""Connecting a tubeflow job to Ray: an in-process local Ray, or a running cluster.

* no address: ``ray.init()`` starts Ray inside this process on this machine, reachable from
  this machine only: every Ray process (GCS, raylet, core workers, agents, the dashboard when
  asked for) listens on 127.0.0.1 (:func:`loopback_only`), and Ray's token authentication is
  on with a token file only this user can read (:func:`private_auth_token`);
* ``address="auto"`` (inside ``ray job submit`` or on a cluster node) or ``ray://host:10001``
  (Ray Client): join that cluster. ``working_dir`` ships the code with the job
  (``runtime_env``), which ``ray job submit --working-dir .`` does by itself.

Run ``python -m cluster.connect --address auto`` to print what the cluster offers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Iterator

from operators.errors import InputError

EXCLUDES = [".venv", ".git", "**/__pycache__", "*.mp4", "*.parquet", ".pytest_cache"]


# Ray keeps at most ~num_cpus idle worker processes and kills the others after 1 s idle. A
# labelling run holds ~8 actors plus short decode / sink / finalize tasks, so on a small machine
# every such task found its worker killed and started a new Python process (~0.7 s of CPU
# importing Ray, NumPy, Arrow, OpenCV): on 2 cores that churn cost 15-20 % of a run. Keep idle
# workers for reuse instead (measured: 128 frames at 512x1024 on 2 cores, 44.4 s -> 37.2 s).
# A cluster keeps its own settings (set RAY_num_workers_soft_limit and
# RAY_idle_worker_killing_time_threshold_ms in the nodes' environment to change them); the
# default limit, the node's CPU count, leaves room for the stages' workers on a big node.
LOCAL_SYSTEM_CONFIG = {"num_workers_soft_limit": 32, "idle_worker_killing_time_threshold_ms": 600_000}


# A local Ray exports no Prometheus metrics (nothing scrapes them; with ray[default] installed
# the dashboard agent would serve them over HTTP on a port of its own).
NO_METRICS = {"enable_metrics_collection": False}

LOOPBACK = "127.0.0.1"
# Ray (2.60) binds its gRPC servers (GCS, raylet, every core worker) to 0.0.0.0 unless the node's
# IP is a loopback address, and ``ray.init(_node_ip_address="127.0.0.1")`` alone does not make it
# one: ray.init resolves a loopback address to the machine's routable IP
# (services.resolve_ip_for_localhost) unless Ray runs in "local only" mode, the mode it uses on
# macOS and Windows, switched by this variable (ray_constants.ENABLE_RAY_CLUSTER). With it off, the
# node IP is 127.0.0.1 and every server Ray starts binds there (tests/test_network.py lists them).
# The variable is read when ray_constants is imported, so the constant is set too.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV, AUTH_MODE_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Ray in "local only" mode for the block: a local Ray started inside it listens on
    127.0.0.1 only. The environment variable is inherited by the processes Ray starts."""
    from ray._private import ray_constants

    saved = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
        if saved[0] is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved[0]


def auth_token_path() -> Path | None:
    """The file Ray reads its authentication token from (None when the token is in the
    environment): ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    if os.environ.get(AUTH_TOKEN_ENV):
        return None
    return Path(os.environ.get(AUTH_TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")


def private_auth_token() -> Path | None:
    """Make sure Ray's token file exists and only this user can read it (0600, its folder 0700).

    Ray 2.60 turns token authentication on for a local ``ray.init`` and writes a missing token
    with the default umask (world-readable: anyone on the machine could then talk to the
    cluster). A missing token is created here first, 256 random bits as Ray makes them; an
    existing one is made private. Returns the file (None when the token is in ``$RAY_AUTH_TOKEN``).
    """
    path = auth_token_path()
    if path is None:
        return None
    fresh = not path.parent.exists()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if fresh or path.parent == Path.home() / ".ray":
            os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    except PermissionError as exc:
        raise InputError(str(path), f"Ray's token file cannot be made private to this user: {exc.strerror}") from None
    return path


# -- whether a job uses Ray at all ------------------------------------------------------------
EXECUTORS = ("auto", "local", "ray")
"""What runs a job (``--executor``): ``ray``, ``local`` (processes of this machine, no Ray's
start-up) or ``auto`` (each job's own rule, on top of :func:`needs_ray`)."""


def check_executor(executor: str, address: str | None) -> None:
    if executor not in EXECUTORS:
        raise InputError("--executor", f"expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and address:
        raise InputError("--address", "a cluster address runs on Ray: leave out --executor local")


def ray_running() -> bool:
    """Whether Ray is initialised in this process (imported, not just importable)."""
    ray = sys.modules.get("ray")  # None also where an import of it is blocked
    return ray is not None and ray.is_initialized()


def needs_ray(address: str | None) -> bool:
    """What makes every ``--executor auto`` job run on Ray: a cluster address (given, or in
    ``RAY_ADDRESS``), or a Ray already running in this process."""
    return bool(address or os.environ.get("RAY_ADDRESS") or ray_running())


def local_cores() -> int:
    """The cores this process may run on (its affinity), for a local pool's size."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def runtime_env(working_dir: str | None) -> dict | None:
    """The runtime_env that ships ``working_dir`` (minus venv, git and outputs) to the workers."""
    if not working_dir:
        return None
    return {"working_dir": working_dir, "excludes": list(EXCLUDES)}


@contextlib.contextmanager
def _as_without_job_server() -> Iterator[None]:
    """Start a local Ray with only the processes a local run uses: the GCS, the raylet and
    its agents in Ray's ``--minimal`` mode (as without its job-server install), metrics
    collection off (:data:`NO_METRICS`), and neither the API server nor the autoscaler monitor.

    With ``ray[default]`` installed (the job server, dashboard and metrics: ``tubeflow[cluster]``)
    every ``ray.init()``, dashboard or not, also starts HTTP servers: the dashboard agent's
    Prometheus metrics export and the monitor's metrics page (port 44217, fixed, that every
    local run on the machine contends for). A local embedded Ray serves no dashboard and has no
    nodes to scale, so the API server (which ``ray.init`` waits for: 1–5 s of every run's
    start-up on this 2-core machine, plus ~1 s of shutdown) and the monitor are not started at
    all (tests/test_cluster.py asks every listening socket of a local run whether it answers
    HTTP; :func:`connect` with ``dashboard=True`` starts them as usual).
    """
    import ray._private.node as node
    import ray._private.services as services
    import ray._private.utils as utils

    saved = node.Node.start_monitor, services.start_api_server, utils.get_dashboard_dependency_error
    node.Node.start_monitor = lambda self: None
    services.start_api_server = lambda *args, **kwargs: (None, None)  # (dashboard URL, process)
    utils.get_dashboard_dependency_error = lambda: "a local tubeflow Ray runs its agents minimal"
    try:
        yield
    finally:
        node.Node.start_monitor, services.start_api_server, utils.get_dashboard_dependency_error = saved


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            working_dir: str | None = None, dashboard: bool = False, log_to_driver: bool = False) -> bool:
    """Initialise Ray unless it already is; returns True when this call started it (the caller
    shuts it down). Local: in-process, every server on 127.0.0.1 (the dashboard too, if
    ``dashboard``), token authentication on with a private token file; workers' output reaches
    this process's console when ``log_to_driver`` (always on a cluster). Use :func:`ray_session`
    (or :func:`disconnect`) to end it, which also leaves "local only" mode again."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env(working_dir), log_to_driver=True)
        return True
    private_auth_token()
    stack = contextlib.ExitStack()
    stack.enter_context(loopback_only())
    try:
        with _as_without_job_server() if not dashboard else contextlib.nullcontext():
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard, dashboard_host=LOOPBACK,
                     _node_ip_address=LOOPBACK, runtime_env=runtime_env(working_dir), log_to_driver=log_to_driver,
                     _system_config=LOCAL_SYSTEM_CONFIG if dashboard else {**LOCAL_SYSTEM_CONFIG, **NO_METRICS})
    except BaseException:
        stack.close()
        raise
    _local_modes.append(stack)
    return True


_local_modes: list[contextlib.ExitStack] = []  # the loopback mode of the local Ray this module started


def started_locally() -> bool:
    """Whether the Ray this process uses is a local one that :func:`connect` started (no cluster,
    no autoscaler)."""
    return bool(_local_modes)


def disconnect() -> None:
    """Shut Ray down and leave the local-only mode :func:`connect` entered."""
    import ray

    ray.shutdown()
    while _local_modes:
        _local_modes.pop().close()


@contextlib.contextmanager
def ray_session(address: str | None = None, **kwargs) -> Iterator[None]:
    """``connect`` for the length of a block; shuts Ray down after only if it started it here."""
    started = connect(address, **kwargs)
    try:
        yield
    finally:
        if started:
            disconnect()


def cluster_summary() -> dict:
    """CPUs, GPUs and nodes of the connected cluster."""
    import ray

    resources = ray.cluster_resources()
    return {"cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="connect to Ray and print the cluster's resources")
    parser.add_argument("--address", default=None, help="'auto', 'ray://host:10001'; default: local in-process Ray")
    args = parser.parse_args(argv)
    with ray_session(args.address):
        print(json.dumps(cluster_summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
