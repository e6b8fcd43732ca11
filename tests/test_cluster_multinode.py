"""The first cluster run, on real multi-node Ray clusters started on this machine (slow).

* A head (dashboard and job server on 127.0.0.1) and a second node with one fake GPU: the
  submit command of cluster/README.md (its buckets replaced by local folders) goes through the
  job server with ``--working-dir .``; the outputs are committed and the segmentation actors ran
  on the GPU node. The nightly submitter, run twice against the same job server, submits once.
* A head whose autoscaler (Ray's fake multi-node provider) has a GPU node type at zero: the
  job's ``--gpus auto`` reads that node type, the model actors ask for GPUs, and the autoscaler
  launches the node they run on.

Each cluster is :class:`local_cluster.LocalCluster`: its own ports and temp dir, stopped by
ending only its own processes (never ``ray stop``); one runs at a time (the autoscaler test
stops its cluster before the two-node one starts).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local_cluster import LocalCluster
from pipelines.commit import OutputLayout, committed_markers
from test_cluster import readme_submit_commands
from test_label_pipeline import IMAGE_ID, make_corpus

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GPU_NODE_TYPE = "gpu_worker"


def submit_as_the_readme_says(cluster: LocalCluster, corpus: str, out: str) -> subprocess.CompletedProcess:
    """cluster/README.md's ``ray job submit … -- tubeflow label …`` from the repository root, with
    this cluster's job server, local folders for its buckets and the corpus's own predictions as
    the segmenter (the model actors are the same; no network weights to run on 2 cores)."""
    (argv,) = readme_submit_commands()
    argv = list(argv)
    argv[argv.index("--address") + 1] = cluster.dashboard
    job = argv.index("--") + 1
    tubeflow = argv[job:]
    tubeflow[tubeflow.index("--input") + 1] = f"{corpus}/videos"
    tubeflow[tubeflow.index("--output") + 1] = out
    tubeflow += ["--segmenter", "precomputed", "--model", f"{corpus}/perframe", "--image-id-format", IMAGE_ID,
                 "--chunk-frames", "4", "--no-progress"]
    assert argv[:3] == ["ray", "job", "submit"] and tubeflow[:4] == ["tubeflow", "label", "--address", "auto"]
    return cluster.ray(*argv[1:job], *tubeflow, cwd=str(ROOT), timeout=900)


def gpu_actor_nodes(cluster: LocalCluster) -> list[str]:
    """Node ids of every actor that asked for a GPU (the segmentation actors), alive or dead."""
    code = ("import json\nfrom ray.util.state import list_actors\n"
            f"actors = list_actors(address={cluster.dashboard!r}, detail=True, limit=10000, raise_on_missing_output=False)\n"
            "print(json.dumps([a.node_id for a in actors if (a.required_resources or {}).get('GPU')]))")
    return json.loads(cluster.python(code).strip().splitlines()[-1])


def check_outputs(out: Path) -> dict:
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["totals"] == {"ok": 2, "skipped": 0, "failed": 0}, manifest["totals"]
    assert sorted(committed_markers(OutputLayout(str(out)))) == ["0000", "0001"]
    assert (out / "pred.json").exists()
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("cluster") / "corpus", videos=2, frames=8, height=64, width=128)


def fake_autoscaler_config() -> dict:
    """Ray's fake multi-node provider: nodes are Ray processes on this machine, started by the
    head's autoscaler; one GPU node type, at zero."""
    return {"cluster_name": "tubeflow-fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
            "provider": {"type": "fake_multinode", "disable_node_updaters": True,
                         "disable_launch_config_check": True, "use_node_id_as_ip": True},
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
                GPU_NODE_TYPE: {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                                "max_workers": 1}},
            "head_node_type": "ray.head.default", "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}


def test_gpus_auto_makes_the_autoscaler_launch_a_gpu_node(corpus, tmp_path):
    cluster = LocalCluster(head_cpus=2, autoscaling_config=fake_autoscaler_config())
    try:
        assert len(cluster.nodes()) == 1  # the head alone: no GPU anywhere yet
        out = tmp_path / "labels"
        done = submit_as_the_readme_says(cluster, corpus, str(out))
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:] + cluster.node_logs()
        manifest = check_outputs(out)
        choice = manifest["model_resources"]["gpu_choice"]
        assert choice["use_gpus"] and choice["gpus_now"] == 0 and GPU_NODE_TYPE in choice["reason"], choice
        assert f"can launch {GPU_NODE_TYPE}" in done.stdout
        gpu_nodes = [n["id"] for n in cluster.nodes() if n["resources"].get("GPU")]
        assert len(gpu_nodes) == 1  # launched by the autoscaler for the job's GPU actors
        placed = gpu_actor_nodes(cluster)
        assert placed and set(placed) == set(gpu_nodes), (placed, gpu_nodes)
    finally:
        cluster.stop()
    assert cluster.own_pids() == []


@pytest.fixture(scope="module")
def two_nodes():
    cluster = LocalCluster(head_cpus=2)
    try:
        cluster.add_node("gpu-node", cpus=2, gpus=1)
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.stop()


def test_readme_submit_runs_label_on_the_gpu_node(two_nodes, corpus, tmp_path):
    out = tmp_path / "labels"
    done = submit_as_the_readme_says(two_nodes, corpus, str(out))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "model stages: --gpus auto: the cluster has 1 GPU(s)" in done.stdout
    manifest = check_outputs(out)
    choice = manifest["model_resources"]["gpu_choice"]
    assert choice["use_gpus"] and choice["gpus_now"] == 1
    gpu_node = next(n["id"] for n in two_nodes.nodes() if n["resources"].get("GPU"))
    placed = gpu_actor_nodes(two_nodes)
    assert placed and set(placed) == {gpu_node}, (placed, gpu_node)


def test_nightly_submitter_submits_once_per_night_to_a_real_job_server(two_nodes):
    argv = [sys.executable, "-m", "cluster.nightly_submit", "--address", two_nodes.dashboard, "--night", "2026-12-05",
            "--", "python", "-c", "print('the night ran')"]
    first = subprocess.run(argv, cwd=ROOT, env=two_nodes.env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "submitted tubeflow-nightly-2026-12-05-1" in first.stdout and "the night ran" in first.stdout
    again = subprocess.run(argv, cwd=ROOT, env=two_nodes.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already succeeded" in again.stdout, again.stdout + again.stderr
    jobs = two_nodes.ray("job", "list", "--address", two_nodes.dashboard, timeout=120).stdout
    assert jobs.count("tubeflow-nightly-2026-12-05-") == 1, jobs
