"""The cluster manifests parse, put GPUs only on workers, and run real `tubeflow` commands
with options the CLI accepts; the connection helper keeps dashboards on 127.0.0.1."""
from __future__ import annotations

import argparse
import json
import fnmatch
import importlib
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from cluster import nightly_submit
from cluster.connect import cluster_summary, connect, runtime_env
from cluster.gpus import NodeType, choose_gpus, monitor_config_path, node_types_from_config
from jobs import cli
from pipelines.label.graph import segment_stage_options, stage_plan
from pipelines.label.config import LabelConfig, StageResources

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
IMAGE = "ghcr.io/your-org/tubeflow:0.1.0"


def dockerfile_commands() -> list:
    import dockerfile

    return list(dockerfile.parse_file(str(CLUSTER / "Dockerfile")))


def dockerfile_args() -> dict[str, str]:
    return dict(c.value[0].split("=", 1) for c in dockerfile_commands() if c.cmd == "ARG")


def dockerfile_workdir() -> str:
    return [c.value[0] for c in dockerfile_commands() if c.cmd == "WORKDIR"][-1]


def readme_submit_commands() -> list[list[str]]:
    """The ``ray job submit … -- tubeflow label …`` command lines of cluster/README.md."""
    text = re.sub(r"\\\n\s*", " ", (CLUSTER / "README.md").read_text())
    return [shlex.split(line.strip()) for line in text.splitlines()
            if line.strip().startswith("ray job submit") and "tubeflow label" in line]


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
    assert gpu_groups and all(t["resources"]["GPU"] == 1 and t["min_workers"] == 0 for t in gpu_groups)
    assert any("--dashboard-host=127.0.0.1" in c for c in doc["head_start_ray_commands"])


def test_launcher_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load("ray-cluster.yaml")))


def test_launcher_runs_the_project_image_and_syncs_no_venv():
    doc = load("ray-cluster.yaml")
    assert doc["docker"]["image"] == IMAGE
    assert all(source != "." for source in doc["file_mounts"].values())  # no copy of the checkout (and its .venv)
    assert ".venv" in doc["rsync_exclude"] and not doc["setup_commands"]


def test_launcher_gives_every_node_an_instance_profile_and_no_keys():
    doc = load("ray-cluster.yaml")
    for name, node_type in doc["available_node_types"].items():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name


def test_auto_would_ask_for_gpus_on_the_launcher_cluster_at_zero_workers():
    types = node_types_from_config(load("ray-cluster.yaml"))
    choice = choose_gpus("auto", 0, types, "ray-cluster.yaml")
    assert choice.use_gpus and choice.gpus_max == 8 and "gpu_worker" in choice.reason


def test_raycluster_gpu_only_on_worker_group():
    doc = load("kuberay/raycluster.yaml")
    assert doc["kind"] == "RayCluster" and doc["apiVersion"] == "ray.io/v1"
    head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (workers,) = doc["spec"]["workerGroupSpecs"]
    assert workers["rayStartParams"]["num-gpus"] == "1"
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayjob_entrypoint_is_a_valid_label_command_that_asks_for_gpus():
    doc = load("kuberay/rayjob-label.yaml")
    assert doc["kind"] == "RayJob"
    (argv,) = tubeflow_commands(doc["spec"]["entrypoint"])
    args = parse_tubeflow(argv)
    assert argv[1] == "label" and args.address == "auto" and args.input.startswith("s3://")
    assert args.gpus == "gpu"  # KubeRay's autoscaler is invisible to the driver: ask, so it adds GPU pods
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["working_dir"] == dockerfile_workdir()


def test_nightly_cronjob_submits_once_per_night_to_the_raycluster():
    doc = load("kuberay/nightly-cronjob.yaml")
    assert doc["kind"] == "CronJob" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["python", "-m", "cluster.nightly_submit"]
    cluster_name = load("kuberay/raycluster.yaml")["metadata"]["name"]
    assert command[command.index("--address") + 1] == f"http://{cluster_name}-head-svc:8265"
    assert command[command.index("--job-name") + 1] == "$(JOB_NAME)"
    assert container["env"][0]["name"] == "JOB_NAME" and "job-name" in container["env"][0]["valueFrom"]["fieldRef"][
        "fieldPath"]
    assert command[command.index("--working-dir") + 1] == dockerfile_workdir()
    argv = command[command.index("--") + 1:]
    args = parse_tubeflow(argv)
    assert argv[1] == "nightly" and args.address == "auto" and args.gpus == "gpu"
    # the submitter's own options parse too
    submit_args = command[3:command.index("--")]
    assert nightly_submit.main([*submit_args, "--"]) == 2  # …and it refuses to run without a command


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


def test_kuberay_pods_use_the_service_account_and_an_optional_secret_never_keys():
    account = load("kuberay/serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount"
    specs = [load("kuberay/raycluster.yaml")["spec"], load("kuberay/rayjob-label.yaml")["spec"]["rayClusterSpec"]]
    for spec in specs:
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod["serviceAccountName"] == account["metadata"]["name"]
            (container,) = pod["containers"]
            assert container["image"] == IMAGE
            assert container["envFrom"] == [{"secretRef": {"name": "tubeflow-object-store", "optional": True}}]
            assert "env" not in container  # no inline credentials
        assert spec.get("enableInTreeAutoscaling") and all(g["minReplicas"] == 0 for g in spec["workerGroupSpecs"])


def test_no_manifest_holds_a_key():
    secret = re.compile(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*[\"']?[A-Za-z0-9/+]{20,}|AKIA[0-9A-Z]{16}")
    for path in [*CLUSTER.rglob("*.yaml"), CLUSTER / "Dockerfile"]:
        assert not secret.search(path.read_text()), path


def test_ray_version_is_one_everywhere():
    """The tested Ray (installed, pinned in the constraints and the cluster extra) is the one the
    image, the KubeRay manifests and the nodes run."""
    import ray

    pins = re.findall(r"^ray==(\S+)$", (ROOT / ".ci" / "constraints.txt").read_text(), re.M)
    assert pins == [ray.__version__]
    assert f'"ray[default]=={ray.__version__}"' in (ROOT / "pyproject.toml").read_text()
    assert dockerfile_args()["RAY_VERSION"] == ray.__version__
    assert dockerfile_args()["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"
    assert load("kuberay/raycluster.yaml")["spec"]["rayVersion"] == ray.__version__
    assert load("kuberay/rayjob-label.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_dockerfile_copies_paths_that_exist_and_are_not_ignored():
    """The image cannot be built here (no Docker daemon): BuildKit's own parser reads the file, and
    every path it copies must exist in the build context (the repository root), not be left out by
    .dockerignore, and hold what the install needs."""
    commands = dockerfile_commands()
    assert commands[0].cmd != "FROM" and any(c.cmd == "FROM" for c in commands)
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ".venv" in ignored and ".git" in ignored
    copied = []
    for command in commands:
        if command.cmd == "COPY":
            assert not any(f.startswith("--from") for f in command.flags)
            copied += command.value[:-1]
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    packages = {p.split("*")[0] for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]}
    assert packages <= set(copied) and {"pyproject.toml", "README.md", ".ci/constraints.txt"} <= set(copied)
    install = [c.value[0] for c in commands if c.cmd == "RUN" and "[cluster]" in c.value[0]]
    assert install and "-c .ci/constraints.txt" in install[0]


def test_every_manifest_names_the_image_the_dockerfile_header_builds():
    header = (CLUSTER / "Dockerfile").read_text()
    assert f"docker build -f cluster/Dockerfile -t {IMAGE} ." in header
    for path in CLUSTER.rglob("*.yaml"):
        images = set(re.findall(r"image:\s*(\S+)", path.read_text()))
        assert images <= {IMAGE}, path


def test_cluster_readme_submits_through_the_job_server_with_the_working_dir():
    (submit,) = readme_submit_commands()
    assert submit[:3] == ["ray", "job", "submit"] and submit[submit.index("--working-dir") + 1] == "."
    assert submit[submit.index("--address") + 1] == "http://127.0.0.1:8265"
    argv = submit[submit.index("--") + 1:]
    assert parse_tubeflow(argv).address == "auto"


def test_gpu_choice_modes():
    none_yet = [NodeType("gpu_worker", {"CPU": 4, "GPU": 1}, 8), NodeType("cpu_worker", {"CPU": 8}, 4)]
    cpu_only = [NodeType("cpu_worker", {"CPU": 8}, 4)]
    auto_zero = choose_gpus("auto", 0, none_yet, "autoscaler.yaml")
    assert auto_zero.use_gpus and auto_zero.can_grow and auto_zero.gpus_max == 8
    assert "gpu_worker (1 GPU x up to 8)" in auto_zero.reason and "autoscaler.yaml" in auto_zero.reason
    assert not choose_gpus("auto", 0, cpu_only).use_gpus
    assert not choose_gpus("auto", 0, [NodeType("gpu_worker", {"GPU": 1}, 0)]).use_gpus  # max 0: cannot launch
    no_autoscaler = choose_gpus("auto", 0, None)
    assert not no_autoscaler.use_gpus and not no_autoscaler.can_grow and "--gpus gpu" in no_autoscaler.reason
    has_some = choose_gpus("auto", 2, None)
    assert has_some.use_gpus and has_some.gpus_max == 2 and not has_some.can_grow
    asked = choose_gpus("gpu", 0, None)  # whatever the cluster has now: the autoscaler must add them
    assert asked.use_gpus and asked.can_grow and asked.gpus_max is None and "autoscaler" in asked.reason
    assert not choose_gpus("cpu", 4, none_yet).use_gpus
    with pytest.raises(ValueError, match="--gpus"):
        choose_gpus("cuda", 0, None)


def test_monitor_config_path_is_read_from_this_sessions_monitor(tmp_path):
    proc = tmp_path / "proc"
    for pid, logs in (("11", "/tmp/ray/session_other/logs"), ("12", "/tmp/ray/session_mine/logs")):
        (proc / pid).mkdir(parents=True)
        argv = ["python", "-u", "/x/ray/autoscaler/_private/monitor.py", f"--logs-dir={logs}",
                f"--autoscaling-config=/cfg/{pid}.yaml"]
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "self").mkdir()
    assert monitor_config_path("/tmp/ray/session_mine", proc=str(proc)) == Path("/cfg/12.yaml")
    assert monitor_config_path("/tmp/ray/session_none", proc=str(proc)) is None


def test_gpu_mode_asks_one_gpu_per_segmentation_actor_from_an_autoscaling_pool(ray_local, tmp_path):
    config = LabelConfig(segmenter="precomputed", model=str(tmp_path), resources=StageResources(gpus="gpu"))
    plan = stage_plan(config, n_videos=3, choice=choose_gpus("gpu", 0, None))
    options = segment_stage_options(config, plan)
    assert plan["segment_actors"] == (1, None) and options["num_gpus"] == 1  # no GPU here: still asked
    assert options["compute"].min_size == 1 and options["compute"].max_size == float("inf")  # Ray Data: no bound
    bounded = stage_plan(config, 3, choice=choose_gpus("auto", 0, [NodeType("g", {"GPU": 1}, 3)]))
    assert bounded["segment_actors"] == (1, 3) and bounded["flow_actors"][0] == 1
    assert bounded["cpus"]["segment"] <= 0.1 * 2  # a GPU actor holds little of the CPUs


def test_gpu_mode_on_a_local_ray_without_gpus_is_refused_not_left_waiting(ray_local):
    from cluster.gpus import gpu_choice
    from operators.errors import InputError

    with pytest.raises(InputError, match="--gpus gpu.*no autoscaler"):
        gpu_choice("gpu")
    assert not gpu_choice("auto").use_gpus


def test_gpus_option_reaches_the_stage_resources():
    from jobs.label import config_from_args

    args = parse_tubeflow(["tubeflow", "label", "--input", "a", "--output", "b", "--gpus", "gpu"])
    assert config_from_args(args).resources.gpus == "gpu"
    assert parse_tubeflow(["tubeflow", "nightly", "--input", "a", "--output", "b"]).gpus == "auto"
    with pytest.raises(SystemExit):
        parse_tubeflow(["tubeflow", "label", "--input", "a", "--output", "b", "--gpus", "cuda"])
    with pytest.raises(ValueError, match="gpus"):
        StageResources(gpus="cuda")


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


class FakeJobServer:
    """The parts of Ray's JobSubmissionClient the nightly submitter uses; jobs end as ``outcome`` says."""

    def __init__(self, jobs: dict[str, str] | None = None, outcome: str = "SUCCEEDED"):
        self.jobs = dict(jobs or {})
        self.outcome = outcome
        self.submitted: list[str] = []

    def list_jobs(self):
        return [argparse.Namespace(submission_id=i, status=s) for i, s in self.jobs.items()]

    def submit_job(self, entrypoint: str, submission_id: str, runtime_env=None):
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists")
        self.submitted.append(submission_id)
        self.jobs[submission_id] = "RUNNING"

    async def tail_job_logs(self, job_id: str):
        yield f"log of {job_id}\n"
        self.jobs[job_id] = self.outcome

    def get_job_status(self, job_id: str) -> str:
        return self.jobs[job_id]


NIGHT = "2026-12-05"


def test_nightly_submits_once_then_finds_the_night_done():
    server = FakeJobServer()
    assert nightly_submit.run(server, "tubeflow nightly", NIGHT, 2, None, log=lambda *_: None) == 0
    assert server.submitted == [f"tubeflow-nightly-{NIGHT}-1"]
    assert nightly_submit.run(server, "tubeflow nightly", NIGHT, 2, None, log=lambda *_: None) == 0
    assert server.submitted == [f"tubeflow-nightly-{NIGHT}-1"]  # the rerun submitted nothing


def test_a_restarted_submitter_follows_the_running_job_instead_of_starting_another():
    server = FakeJobServer({f"tubeflow-nightly-{NIGHT}-1": "RUNNING", "tubeflow-nightly-2026-12-04-1": "FAILED"})
    assert nightly_submit.run(server, "tubeflow nightly", NIGHT, 2, None, log=lambda *_: None) == 0
    assert server.submitted == [] and server.jobs[f"tubeflow-nightly-{NIGHT}-1"] == "SUCCEEDED"


def test_a_failed_night_is_retried_up_to_the_attempts_then_fails():
    server = FakeJobServer({f"tubeflow-nightly-{NIGHT}-1": "FAILED"}, outcome="FAILED")
    assert nightly_submit.run(server, "tubeflow nightly", NIGHT, 2, None, log=lambda *_: None) == 1
    assert server.submitted == [f"tubeflow-nightly-{NIGHT}-2"]
    assert nightly_submit.run(server, "tubeflow nightly", NIGHT, 2, None, log=lambda *_: None) == 1
    assert server.submitted == [f"tubeflow-nightly-{NIGHT}-2"]  # attempts used up: nothing more


def test_losing_a_submission_race_follows_the_winner():
    class Racing(FakeJobServer):
        def submit_job(self, entrypoint, submission_id, runtime_env=None):
            self.jobs[submission_id] = "RUNNING"  # another pod got there first
            raise RuntimeError(f"Job with submission_id {submission_id} already exists")

    server = Racing()
    assert nightly_submit.run(server, "tubeflow nightly", NIGHT, 2, None, log=lambda *_: None) == 0
    assert list(server.jobs) == [f"tubeflow-nightly-{NIGHT}-1"]


def test_the_night_is_the_cronjobs_scheduled_date():
    import datetime as dt

    scheduled = int(dt.datetime(2026, 12, 5, 2, 0, tzinfo=dt.timezone.utc).timestamp() // 60)
    after_midnight = dt.datetime(2026, 12, 6, 0, 30, tzinfo=dt.timezone.utc)
    assert nightly_submit.night_of(f"tubeflow-nightly-{scheduled}", after_midnight) == "2026-12-05"
    assert nightly_submit.night_of(None, after_midnight) == "2026-12-06"
    assert nightly_submit.night_of("manual-run", after_midnight) == "2026-12-06"


LISTENERS = r"""
import http.client, json, os, sys, time
sys.path.insert(0, {root!r})
from cluster.connect import connect
import ray

connect(num_cpus=1)


@ray.remote
class Probe:
    def ready(self):
        return True


@ray.remote
def task():
    return 1


actor = Probe.remote()  # workers, and the agents Ray starts for them
assert ray.get(actor.ready.remote()) and ray.get(task.remote()) == 1


def descendants(root):
    parent = {{}}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit():
                parent[int(entry)] = int(open(f"/proc/{{entry}}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    tree, grew = {{root}}, True
    while grew:
        more = {{pid for pid, ppid in parent.items() if ppid in tree}} - tree
        tree |= more
        grew = bool(more)
    return tree


def hex_address(text):
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1]), int(port, 16)
    return ("127.0.0.1" if raw[-4:][::-1] == bytes([127, 0, 0, 1]) else "::"), int(port, 16)


found = {{}}
for _ in range(15):  # the helper processes start their servers over the first seconds
    time.sleep(1)
    inodes = {{}}
    for pid in descendants(os.getpid()):
        try:
            for fd in os.listdir(f"/proc/{{pid}}/fd"):
                link = os.readlink(f"/proc/{{pid}}/fd/{{fd}}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            pass
    for table in ("tcp", "tcp6"):
        for line in open(f"/proc/net/{{table}}").read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                pid = inodes[fields[9]]
                argv = open(f"/proc/{{pid}}/cmdline", "rb").read().decode(errors="replace").split("\0")
                name = "driver" if pid == os.getpid() else os.path.basename(
                    next((a for a in argv if a.endswith(".py")), argv[0]))
                found[hex_address(fields[1])] = name
http_servers = []
for (host, port), name in found.items():
    try:  # Ray's gRPC servers drop an HTTP/1.1 request; a dashboard, job agent or metrics page answers it
        conn = http.client.HTTPConnection("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, timeout=3)
        conn.request("GET", "/")
        http_servers.append([name, port, conn.getresponse().status])
    except (OSError, http.client.HTTPException):
        pass
programs = set()
for pid in descendants(os.getpid()):
    try:
        argv = open(f"/proc/{{pid}}/cmdline", "rb").read().decode(errors="replace").split("\0")
        programs.add(os.path.basename(next((a for a in argv if a.endswith(".py")), argv[0])))
    except OSError:
        pass
print(json.dumps({{"listeners": sorted(set(found.values())), "http": http_servers, "programs": sorted(programs),
                  "webui": ray._private.worker._global_node.address_info.get("webui_url")}}))
ray.shutdown()
"""


def test_local_embedded_ray_starts_no_dashboard_and_serves_no_http(tmp_path):
    """With the job server installed (ray[default]: the dev install has it), the local default
    still starts no dashboard, job server or metrics server: of every listening socket of the
    driver's process tree (Ray's gRPC servers: GCS, raylet, workers, agents) none answers HTTP,
    but Ray's runtime-env agent (as without ray[default]), and neither the dashboard process nor
    the autoscaler monitor listens (the monitor would serve metrics on port 44217 if let, the
    dashboard agent its Prometheus export)."""
    import subprocess

    import aiohttp_cors  # noqa: F401  (the job server's dependencies: the dev install has tubeflow[cluster])
    import prometheus_client  # noqa: F401  (what makes the monitor open its metrics port)

    script = tmp_path / "listeners.py"
    script.write_text(LISTENERS.format(root=str(ROOT)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["webui"]
    assert {"gcs_server", "raylet", "driver"} <= set(result["listeners"]), result  # the sockets were seen
    assert not {"dashboard.py", "monitor.py"} & set(result["listeners"]), result
    # nor run at all: ray.init waits seconds for the API server, and a local Ray has no nodes to scale
    assert "raylet" in result["programs"] and not {"dashboard.py", "monitor.py"} & set(result["programs"]), result
    # no dashboard, job agent or metrics page; only the runtime-env agent, part of Ray's core
    # (it answers with 401 without the token), serves HTTP, as it did without ray[default]
    assert [name for name, _, _ in result["http"]] in ([], ["ray::RuntimeEnvAgent"]), result
