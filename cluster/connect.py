"""Connecting a tubeflow job to Ray: an in-process local Ray, or a running cluster.

* no address: ``ray.init()`` starts Ray inside this process on this machine; its dashboard
  (when asked for) listens on 127.0.0.1 only, never on a public interface;
* ``address="auto"`` (inside ``ray job submit`` or on a cluster node) or ``ray://host:10001``
  (Ray Client): join that cluster. ``working_dir`` ships the code with the job
  (``runtime_env``), which ``ray job submit --working-dir .`` does by itself.

Run ``python -m cluster.connect --address auto`` to print what the cluster offers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from typing import Iterator

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


def runtime_env(working_dir: str | None) -> dict | None:
    """The runtime_env that ships ``working_dir`` (minus venv, git and outputs) to the workers."""
    if not working_dir:
        return None
    return {"working_dir": working_dir, "excludes": list(EXCLUDES)}


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            working_dir: str | None = None, dashboard: bool = False, log_to_driver: bool = False) -> bool:
    """Initialise Ray unless it already is; returns True when this call started it (the caller
    shuts it down). Local: in-process, dashboard on 127.0.0.1 if ``dashboard``; workers' output
    reaches this process's console when ``log_to_driver`` (always on a cluster)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env(working_dir), log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 runtime_env=runtime_env(working_dir), log_to_driver=log_to_driver, _system_config=LOCAL_SYSTEM_CONFIG)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, **kwargs) -> Iterator[None]:
    """``connect`` for the length of a block; shuts Ray down after only if it started it here."""
    import ray

    started = connect(address, **kwargs)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


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
