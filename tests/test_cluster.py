"""The cluster manifests parse, put GPUs only on workers, and run real `tubeflow` commands
with options the CLI accepts; the connection helper keeps dashboards on 127.0.0.1."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cluster.connect import cluster_summary, connect, runtime_env
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def parse_tubeflow(argv: list[str]) -> argparse.Namespace:
    """Parse ``tubeflow COMMAND …`` exactly as the CLI does (SystemExit on an unknown option)."""
    assert argv[0] == "tubeflow" and argv[1] in cli.COMMANDS, argv
    module = importlib.import_module(cli.COMMANDS[argv[1]][0])
    parser = argparse.ArgumentParser(prog=f"tubeflow {argv[1]}")
    module.add_arguments(parser)
    return parser.parse_args(argv[2:])


def tubeflow_commands(text: str) -> list[list[str]]:
    """Every ``tubeflow COMMAND --…`` command line in ``text`` (to the end of the line or string;
    a command named in prose, without options, is not one)."""
    text = re.sub(r"\\\n[#\s]*", " ", text)  # shell line continuations (also inside YAML comments)
    out = []
    for match in re.finditer(r"(?<![\w/-])tubeflow (label|nightly|evaluate|synth) --[^\n\"`]*", text):
        out.append(shlex.split(match.group(0).rstrip("\\ ")))
    return out


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_launcher_yaml_has_a_cpu_head_and_gpu_workers():
    doc = load("ray-cluster.yaml")
    types = doc["available_node_types"]
    head = types[doc["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_groups = [t for name, t in types.items() if t["resources"].get("GPU")]
    assert gpu_groups and all(t["resources"]["GPU"] == 1 for t in gpu_groups)
    assert any("--dashboard-host=127.0.0.1" in c for c in doc["head_start_ray_commands"])
    assert any("pip install" in c and "-e ." in c for c in doc["setup_commands"])


def test_raycluster_gpu_only_on_worker_group():
    doc = load("kuberay/raycluster.yaml")
    assert doc["kind"] == "RayCluster" and doc["apiVersion"] == "ray.io/v1"
    head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (workers,) = doc["spec"]["workerGroupSpecs"]
    assert workers["rayStartParams"]["num-gpus"] == "1"
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayjob_entrypoint_is_a_valid_label_command():
    doc = load("kuberay/rayjob-label.yaml")
    assert doc["kind"] == "RayJob"
    (argv,) = tubeflow_commands(doc["spec"]["entrypoint"])
    args = parse_tubeflow(argv)
    assert argv[1] == "label" and args.address == "auto" and args.input.startswith("s3://")
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_nightly_cronjob_submits_a_valid_nightly_command_to_the_raycluster():
    doc = load("kuberay/nightly-cronjob.yaml")
    assert doc["kind"] == "CronJob" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    command = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["ray", "job", "submit"]
    cluster_name = load("kuberay/raycluster.yaml")["metadata"]["name"]
    assert command[command.index("--address") + 1] == f"http://{cluster_name}-head-svc:8265"
    argv = command[command.index("--") + 1:]
    args = parse_tubeflow(argv)
    assert argv[1] == "nightly" and args.address == "auto"


def test_readme_and_launcher_commands_parse():
    """Every `tubeflow` command in the launcher YAML, the top README and cluster/README.md parses
    with the real CLI; the top README's cluster section shows a label job joining a cluster."""
    readme = (ROOT / "README.md").read_text()
    assert "<!-- section: cluster -->" in readme, "README.md lost its cluster section marker"
    cluster_section = readme.split("<!-- section: cluster -->", 1)[1].split("<!-- section:", 1)[0]
    assert any(c[1] == "label" and "--address" in c for c in tubeflow_commands(cluster_section))
    texts = [(CLUSTER / "ray-cluster.yaml").read_text(), readme, (CLUSTER / "README.md").read_text()]
    commands = [c for text in texts for c in tubeflow_commands(text)]
    assert any(c[1] == "nightly" for c in commands) and len(commands) >= 5
    for argv in commands:
        parse_tubeflow(argv)


def test_bad_option_in_a_manifest_would_be_caught():
    with pytest.raises(SystemExit):
        parse_tubeflow(["tubeflow", "label", "--input", "a", "--output", "b", "--no-such-option"])


def test_runtime_env_ships_the_working_dir_without_venv_and_outputs():
    env = runtime_env(".")
    assert env["working_dir"] == "." and ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert runtime_env(None) is None


def test_connect_reuses_a_running_ray(ray_local):
    assert connect() is False  # already initialised: nothing started, nothing to shut down
    summary = cluster_summary()
    assert summary["cpus"] == 2 and summary["nodes"] >= 1
