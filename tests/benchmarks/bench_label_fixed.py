"""The fixed cost of a ``tubeflow label`` run and its marginal cost per frame, against the bound
that two cores give the operators, with each engine: the default for a small run without
``--address`` (``--executor auto`` → ``local``: processes of this machine, no Ray) and the Ray
Data graph (``--executor ray``, the baseline: what every run paid before).

Run::

    .venv/bin/python tests/benchmarks/bench_label_fixed.py [--small 3 --large 12 --frames 20 --rounds 2]

Two synthetic corpora (``tubeflow synth``: ``--small`` and ``--large`` videos of ``--frames``
frames at 256×512) are labelled by ``tubeflow label`` with its defaults, each run a fresh
process from launch to exit (Ray's start-up, the model's start-up, the pipeline's fill and
drain, finalize, publishing and shutdown all included); engines, small and large interleaved
over ``--rounds`` rounds. From each engine's median wall times:

* marginal cost per frame = (T_large − T_small) / (F_large − F_small);
* fixed cost = T_small − F_small × marginal: what a run costs beyond its frames;
* the 2-core bound per frame = the operators' CPU seconds per frame (the run manifests'
  ``stage_cpu_seconds``, same runs) ÷ the cores: the marginal cost with zero overhead and the
  cores never idle; the ratio marginal / bound is printed (target ≤ 1.1);
* a bare local Ray (``cluster.connect.ray_session``) started, given one trivial task and shut
  down: the part of the Ray engine's fixed cost that is Ray's own;
* CPU seconds of the run's own processes (the command and all its descendants, sampled from
  /proc: other users' work not included) beside the operators' CPU: the CPU a run spends outside
  its operators. Wall times need a quiet machine; these do not.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BARE_RAY = """import sys
sys.path.insert(0, sys.argv[1])
import ray
from cluster.connect import ray_session
with ray_session():
    ray.get(ray.remote(lambda: 1).remote())
"""


def busy_cpu_seconds() -> float:
    """The machine's CPU seconds not idle since boot (all cores, every process)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / 100.0


class TreeCpu:
    """CPU seconds of a process and all its descendants (Ray's servers and workers, a local
    pool's processes), sampled from /proc every ``every`` seconds: each process counts with the
    last CPU time seen (a process that ends loses at most its last ``every`` seconds)."""

    def __init__(self, root: int, every: float = 0.1):
        self.root, self.every, self.seen = root, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        parents, cpu = {}, {}
        tick = os.sysconf("SC_CLK_TCK")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(pid)] = int(fields[1])
            cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / tick
        for pid in cpu:
            p = pid
            while p in parents and p != self.root:
                p = parents[p]
            if p == self.root:
                self.seen[pid] = max(self.seen.get(pid, 0.0), cpu[pid])

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def timed(argv: list[str]) -> tuple[float, float, float]:
    """Run a command → (wall seconds, its process tree's CPU seconds, the machine's busy CPU
    seconds meanwhile)."""
    busy, started = busy_cpu_seconds(), time.perf_counter()
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree = TreeCpu(process.pid)
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    tree, busy = tree.stop(), busy_cpu_seconds() - busy
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}:\n{output[-3000:]}")
    return wall, tree, busy


def make_corpus(out: Path, videos: int, frames: int) -> Path:
    subprocess.run([sys.executable, "-m", "jobs.cli", "synth", "--out", str(out), "--videos", str(videos),
                    "--frames", str(frames)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out / "videos"


ENGINES = ("auto", "ray")  # the default (local for these runs) and the Ray graph, the baseline


def label_once(corpus: Path, out: Path, executor: str) -> dict:
    wall, tree, busy = timed([sys.executable, "-m", "jobs.cli", "label", "--input", str(corpus), "--output", str(out),
                              "--no-progress", "--executor", executor])
    manifest = json.loads(next((out / "runs").glob("*.json")).read_text())
    stage_cpu = manifest["stage_cpu_seconds"]
    return {"wall": wall, "tree_cpu": tree, "busy_cpu": busy, "frames": manifest["frames"],
            "operator_cpu": sum(stage_cpu.values()), "stage_cpu": stage_cpu,
            "engine": (manifest.get("model_resources") or {}).get("executor", executor)}


def measure(small: int, large: int, frames: int, rounds: int, engines=ENGINES) -> dict:
    runs: dict[tuple[str, str], list[dict]] = {(e, k): [] for e in engines for k in ("small", "large")}
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_label_fixed_") as tmp:
        work = Path(tmp)
        corpora = {"small": make_corpus(work / "small", small, frames), "large": make_corpus(work / "large", large, frames)}
        for r in range(rounds):
            bare.append(timed([sys.executable, "-c", BARE_RAY, str(ROOT)])[0])
            for engine in engines:
                for kind in ("small", "large"):
                    runs[engine, kind].append(label_once(corpora[kind], work / f"out_{engine}_{kind}_{r}", engine))
    return {"runs": runs, "bare_ray": bare, "engines": engines}


def report(result: dict, cores: int = 2) -> dict:
    runs, figures = result["runs"], {}
    bare = statistics.median(result["bare_ray"])
    print(f"bare local Ray (start, one task, shutdown): " + ", ".join(f"{b:.1f}" for b in result["bare_ray"]) + " s")
    for engine in result["engines"]:
        mine = {kind: runs[engine, kind] for kind in ("small", "large")}
        med = {k: statistics.median(r["wall"] for r in v) for k, v in mine.items()}
        frames = {k: v[0]["frames"] for k, v in mine.items()}
        marginal = (med["large"] - med["small"]) / (frames["large"] - frames["small"])
        fixed = med["small"] - frames["small"] * marginal
        operator_cpu_per_frame = sum(r["operator_cpu"] for v in mine.values() for r in v) / \
            sum(r["frames"] for v in mine.values() for r in v)
        bound = operator_cpu_per_frame / cores
        name = f"--executor {engine}" + (f" ({mine['small'][0]['engine']})" if engine == "auto" else "")
        print(f"== {name}")
        for kind, values in mine.items():
            for r in values:
                print(f"  {kind:>5}: {r['frames']:>4} frames  wall {r['wall']:6.1f} s  its processes' CPU "
                      f"{r['tree_cpu']:6.1f} s (operators {r['operator_cpu']:5.1f} s, outside them "
                      f"{r['tree_cpu'] - r['operator_cpu']:5.1f} s)  machine busy {r['busy_cpu']:6.1f} s")
        print(f"  median wall: {frames['small']} frames {med['small']:.1f} s, {frames['large']} frames {med['large']:.1f} s")
        print(f"  marginal cost {1e3 * marginal:.0f} ms/frame; 2-core bound {1e3 * bound:.0f} ms/frame (operators "
              f"{1e3 * operator_cpu_per_frame:.0f} ms CPU/frame / {cores}): ratio {marginal / bound:.2f} (target <= 1.1)")
        print(f"  fixed cost {fixed:.1f} s (target <= 8 s); a bare local Ray costs {bare:.1f} s")
        figures[engine] = {"fixed": fixed, "marginal": marginal, "bound": bound}
    if "ray" in figures and len(figures) > 1:
        for engine, f in figures.items():
            if engine != "ray":
                print(f"fixed cost --executor {engine} / --executor ray: {f['fixed'] / figures['ray']['fixed']:.2f}x; "
                      f"marginal {f['marginal'] / figures['ray']['marginal']:.2f}x")
    return figures


@pytest.mark.benchmark
def test_label_fixed_cost_small():
    result = measure(small=1, large=2, frames=6, rounds=1)
    report(result)
    assert {key: [r["frames"] for r in runs] for key, runs in result["runs"].items()} == \
        {(e, k): [6 if k == "small" else 12] for e in ENGINES for k in ("small", "large")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=3)
    parser.add_argument("--large", type=int, default=12)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    report(measure(args.small, args.large, args.frames, args.rounds))


if __name__ == "__main__":
    main()
