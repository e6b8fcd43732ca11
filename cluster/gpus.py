"""What the model stages ask Ray for: ``tubeflow label --gpus auto|cpu|gpu``.

Ray's autoscaler adds nodes for *pending demand*: a GPU node is launched only when an actor or
a task asks for a GPU that no node has. Deciding from the GPUs the cluster has at the start
(what ``label`` once did) therefore never uses an autoscaled GPU group: a nightly at 02:00
finds the GPU workers scaled to zero, plans CPU actors, and the autoscaler is never asked.

* ``gpu``: every model actor asks for one GPU, whatever the cluster has now, so the
  autoscaler launches GPU nodes for them (on a node with a fake GPU the actor still runs torch
  on the CPU: ``--device`` decides the torch device inside the actor, this decides the request).
* ``cpu``: no model actor asks for a GPU.
* ``auto``: GPUs when the cluster has some now, or when its autoscaler can launch a node type
  that has GPUs; else the CPU. The choice and its reason are printed at the start of the run
  and written to the run manifest.

The autoscaler's node types are read from Ray's record of the cluster configuration in the GCS
(filled where the autoscaler reports it), else from the autoscaling config file of the monitor
process running beside this driver (the cluster launcher's and ``ray start --head
--autoscaling-config``'s: ``ray job submit`` runs the driver on the head). KubeRay's autoscaler
runs in a sidecar container that a driver cannot see: there, the manifests pass ``--gpus gpu``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

GPU_MODES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler can launch: its resources and how many of it at most."""

    name: str
    resources: dict
    max_workers: int

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))


@dataclass(frozen=True)
class GpuChoice:
    """What the model actors ask for, and why (``reason`` is one line for the log and manifest)."""

    mode: str
    use_gpus: bool
    gpus_now: int
    gpus_max: int | None
    """GPUs the cluster can have: now plus what the autoscaler can launch; None: unknown."""
    can_grow: bool
    """Whether the cluster can add nodes (an autoscaler is known, or GPUs are asked for regardless)."""
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def choose_gpus(mode: str, gpus_now: int, node_types: list[NodeType] | None, source: str = "") -> GpuChoice:
    """The decision, from the GPUs the cluster has now and the autoscaler's node types (None:
    no autoscaler could be seen; ``source`` says where the node types were read)."""
    if mode not in GPU_MODES:
        raise ValueError(f"unknown --gpus {mode!r}; choose one of {GPU_MODES}")
    launchable = [t for t in node_types or [] if t.gpus > 0 and t.max_workers > 0]
    if node_types is not None:
        gpus_max = gpus_now + sum(t.gpus * t.max_workers for t in launchable)
    else:  # no autoscaler seen: what is there now, except that ``gpu`` asks whatever is there
        gpus_max = None if mode == "gpu" else gpus_now
    can_grow = any(t.max_workers > 0 for t in node_types or [])
    seen = f"the autoscaler ({source})" if source else "the autoscaler"
    if mode == "cpu":
        return GpuChoice(mode, False, gpus_now, gpus_max, can_grow, "--gpus cpu: model actors ask for no GPU")
    if mode == "gpu":
        why = (f"--gpus gpu: one GPU per model actor; the cluster has {gpus_now} GPU(s) now"
               + ("" if gpus_now else ", so the autoscaler must add GPU nodes (the actors wait for them)"))
        return GpuChoice(mode, True, gpus_now, gpus_max, True, why)
    if gpus_now:
        return GpuChoice(mode, True, gpus_now, gpus_max, can_grow,
                         f"--gpus auto: the cluster has {gpus_now} GPU(s): one GPU per model actor")
    if launchable:
        names = ", ".join(f"{t.name} ({t.gpus} GPU x up to {t.max_workers})" for t in launchable)
        return GpuChoice(mode, True, gpus_now, gpus_max, True,
                         f"--gpus auto: no GPU in the cluster now, but {seen} can launch {names}: "
                         "one GPU per model actor, the autoscaler adds the nodes")
    if node_types is not None:
        why = f"--gpus auto: no GPU in the cluster and no node type with GPUs in {seen}: CPU model actors"
    else:
        why = ("--gpus auto: no GPU in the cluster and no autoscaler configuration visible from this node: "
               "CPU model actors (--gpus gpu asks an autoscaler for GPU nodes)")
    return GpuChoice(mode, False, gpus_now, gpus_max, can_grow, why)


def node_types_from_config(config: dict) -> list[NodeType]:
    """Worker node types of a Ray autoscaling config (the cluster launcher's YAML schema)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cluster_max = int(config.get("max_workers", 1 << 30))
    return [NodeType(name, dict(spec.get("resources") or {}), min(int(spec.get("max_workers", 0)), cluster_max))
            for name, spec in types.items() if name != head]


def _gcs_node_types() -> list[NodeType] | None:
    """Node groups of Ray's cluster configuration record in the GCS, where an autoscaler reported it."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the record
        return None
    if not config or not config.node_group_configs:
        return None
    return [NodeType(group.name or f"group-{i}", dict(group.resources),
                     (1 << 30) if group.max_count == -1 else int(group.max_count))
            for i, group in enumerate(config.node_group_configs)]


def monitor_config_path(session_dir: str, proc: str = "/proc") -> Path | None:
    """The ``--autoscaling-config`` of the autoscaler monitor of this Ray session on this node."""
    logs_arg = f"--logs-dir={os.path.join(session_dir, 'logs')}".encode()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            argv = Path(proc, entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(a.endswith(b"monitor.py") for a in argv) or logs_arg not in argv:
            continue
        for arg in argv:
            if arg.startswith(b"--autoscaling-config="):
                return Path(os.path.expanduser(arg.split(b"=", 1)[1].decode()))
    return None


def autoscaler_node_types() -> tuple[list[NodeType] | None, str]:
    """The node types the connected cluster's autoscaler can launch, and where they were read."""
    import ray
    import yaml

    types = _gcs_node_types()
    if types is not None:
        return types, "Ray's cluster configuration record"
    node = ray._private.worker._global_node
    path = monitor_config_path(node.get_session_dir_path()) if node is not None else None
    if path is not None:
        try:
            return node_types_from_config(yaml.safe_load(path.read_text()) or {}), str(path)
        except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
            return None, ""
    return None, ""


def gpu_choice(mode: str) -> GpuChoice:
    """:func:`choose_gpus` for the Ray this process is connected to. ``gpu`` on a local Ray
    without GPUs is an input error: nothing could ever add one, the actors would wait forever."""
    import ray

    from cluster.connect import started_locally
    from operators.errors import InputError

    gpus_now = int(ray.cluster_resources().get("GPU", 0))
    if mode == "gpu" and not gpus_now and started_locally():
        raise InputError("--gpus gpu", "this machine has no GPU and a local Ray has no autoscaler to add one "
                                       "(use --address to join a cluster, or --gpus auto)")
    if mode == "cpu":
        return choose_gpus(mode, gpus_now, None)
    types, source = autoscaler_node_types()
    return choose_gpus(mode, gpus_now, types, source)
