"""Speed and memory of ``tubeflow label`` on the synthetic corpus.

Run::

    .venv/bin/python tests/benchmarks/bench_label.py speed  [--videos 8 --frames 32 --height 512 --width 1024 --chunk-frames 16 --repeat 1]
    .venv/bin/python tests/benchmarks/bench_label.py memory [--counts 10,100 --frames 10 --height 128 --width 256]

``speed`` measures, in one run and on the same corpus, end-to-end frames/s of

* the plain sequential loop over the same operators (:mod:`pipelines.sequential`), writing
  the same segments table, on 1 core and on 2 cores (torch may use both for the model);
* ``split_2``: two such loops at once, each on its own core with half the videos (no Ray):
  what two cores of this machine give when the work splits perfectly;
* the Ray Data pipeline (:func:`pipelines.label.label`) with Ray given 1 and 2 CPUs,

each in its own process pinned to that many cores (``sched_setaffinity``; Ray's workers
inherit it), and prints the ratio pipeline / sequential on 2 cores, end to end and in the
steady state (frames/s between 20 % and 90 % of the frames done: start-up excluded), the
scaling 1 → 2 CPUs, each stage's share of operator CPU time, the pipeline's overhead — the
share of ``cores × wall`` not spent as CPU time inside an operator (start-up, scheduling,
serialisation, commit, idle cores) — and the ideal 2-core pipeline: the operators' CPU time per
frame on one core spread over two cores with zero overhead (a bound that assumes the two cores
do not slow each other down; ``split_2`` measures how far they do).
The pipeline's wall time is what a user waits for: it includes starting the actors (model
loading) and committing the outputs, not starting Ray itself (a local Ray is started beforehand
with the settings ``tubeflow label`` uses, :func:`cluster.connect.connect`); the loops are timed
from building their model. ``--repeat N`` interleaves N rounds and reports medians.

``memory`` runs the pipeline on corpora of 10 and 100 videos and prints the peak proportional
set size (PSS: shared pages such as the object store counted once) summed over the driver
and every Ray process, sampled every 0.2 s.

The default operators are the built-in segmentation model, OpenCV DIS (medium) and the
tracker. Without the built-in weights the ``precomputed`` backend (scrambled GT) stands in,
and the output says so.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

IMAGE_ID = "{video_id}_{frame_index:04d}_synth"


def make_corpus(out: str, videos: int, frames: int, height: int, width: int) -> str:
    import numpy as np

    from operators.formats.vps_layout import PredictionWriter
    from operators.synth import SynthConfig, generate_video, write_corpus
    from operators.synth.perturb import scramble_ids

    cfg = SynthConfig(videos=videos, frames=frames, height=height, width=width, seed=0, annotate_every=5)
    write_corpus(out, cfg)
    rng = np.random.default_rng(0)
    with PredictionWriter(f"{out}/perframe") as writer:
        for v in range(videos):
            for frame in generate_video(cfg, v):
                writer.add(frame.image_id, scramble_ids(frame.panoptic, rng))
    return out


def default_config(corpus: str, chunk_frames: int):
    from operators.segmentation.host import BUILTIN_WEIGHTS
    from pipelines.label.config import LabelConfig

    if os.path.exists(BUILTIN_WEIGHTS):
        return LabelConfig(chunk_frames=chunk_frames, image_id_format=IMAGE_ID), "builtin"
    return LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", chunk_frames=chunk_frames,
                       image_id_format=IMAGE_ID), "precomputed (built-in weights absent)"


# ------------------------------------------------------------------ measured in child processes
def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}/task").exists() else []:
            try:
                stack.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return out


class PeakMemory:
    """Samples the PSS of this process and all its descendants (Ray's raylet, workers, store)."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak_kib, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in _descendants(os.getpid())))
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def child_pipeline(corpus: str, out: str, cores: int, chunk_frames: int, memory: bool) -> dict:
    import ray

    from cluster.connect import connect
    from pipelines.label import label

    config, name = default_config(corpus, chunk_frames)
    connect(num_cpus=cores)  # as `tubeflow label` starts a local Ray
    # The sampler reads every Ray process's smaps each 0.2 s: only when memory is measured.
    peak = PeakMemory() if memory else contextlib.nullcontext()
    with peak:
        run = label(f"{corpus}/videos", out, config, progress=False, log=lambda *_: None)
    ray.shutdown()
    return {"segmenter": name, "seconds": run.seconds, "frames": run.frames, "stage_cpu_seconds": run.stage_cpu_seconds,
            "first_output_seconds": run.first_output_seconds, "steady_fps": run.steady_frames_per_second(),
            "seconds_to": {f"{q:.0%}": run.seconds_until(q) for q in (0.1, 0.5, 0.9, 1.0)} if run.frames else {},
            "failed": len(run.failed), "peak_pss_mib": peak.peak_kib / 1024 if memory else None}


def child_sequential(corpus: str, out: str, cores: int, part: str = "0/1", start_at: float = 0.0) -> dict:
    """The plain loop on ``cores`` cores (torch threads) over the videos of ``part`` ("i/n": every
    n-th video from the i-th); with ``start_at`` (epoch seconds) it waits, model loaded, until then."""
    import torch

    from operators.segmentation.host import SegmentationHost
    from pipelines.sequential import label_sequentially
    from pipelines.plan import discover

    torch.set_num_threads(cores)
    # Ray runs its workers at niceness 15 (seen in top; RAY_worker_niceness); on a machine shared with other
    # jobs the baseline must compete for the cores on the same terms.
    os.nice(int(os.environ.get("RAY_worker_niceness", 15)) - os.nice(0))
    index, count = (int(x) for x in part.split("/"))
    videos = [(e.video_id, e.uri) for e in discover(f"{corpus}/videos")][index::count]
    config, name = default_config(corpus, 32)
    if start_at:
        SegmentationHost(**config.host_kwargs())  # load the code and weights once before the start line
        time.sleep(max(0.0, start_at - time.time()))
    # Timed from the model's construction, as the pipeline's time includes its actors' construction.
    started, start = time.time(), time.perf_counter()
    host = SegmentationHost(**config.host_kwargs())
    result = label_sequentially(videos, host, config.flow, config.flow_options, config.tracker,
                                image_id=config.image_id, keep_frames=False, segments_out=f"{out}/segments")
    return {"segmenter": name, "seconds": time.perf_counter() - start, "started": started, "ended": time.time(),
            "frames": result.frame_count, "stage_cpu_seconds": result.stage_cpu_seconds}


def _child_argv(kind: str, cores: int, **kwargs) -> list[str]:
    return [sys.executable, __file__, f"_{kind}", "--cores", str(cores)] + \
        [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]


def _child_result(kind: str, cores: int, returncode: int, stdout: str, stderr: str) -> dict:
    if returncode != 0:
        raise RuntimeError(f"{kind} on {cores} core(s) failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_child(kind: str, cores: int, **kwargs) -> dict:
    """Run one measurement in a fresh process pinned to ``cores`` cores."""
    done = subprocess.run(_child_argv(kind, cores, **kwargs), capture_output=True, text=True, cwd=ROOT)
    return _child_result(kind, cores, done.returncode, done.stdout, done.stderr)


SPLIT_WARM_UP = 20.0  # seconds for each split process to import torch and load the model before the start line


def run_split(cores: int, corpus: str, out: str) -> dict:
    """``cores`` plain 1-core loops at once, each pinned to its own core with every ``cores``-th
    video: what the machine gives when the work is split perfectly and nothing else runs (no Ray,
    no hand-over between stages). The reference for what any schedule of these operators on
    these cores can reach; its ratio to the 1-core loop is how well the cores scale together
    (caches, memory bandwidth and the host of a virtual machine are shared)."""
    start_at = time.time() + SPLIT_WARM_UP
    procs = [subprocess.Popen(_child_argv("sequential", 1, corpus=corpus, out=f"{out}/{i}", part=f"{i}/{cores}",
                                          start_at=start_at, core_offset=i),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for i in range(cores)]
    parts = []
    for proc in procs:
        stdout, stderr = proc.communicate()  # first: the return code is known only after it
        parts.append(_child_result("split", 1, proc.returncode, stdout, stderr))
    late = max(p["started"] for p in parts) - min(p["started"] for p in parts)
    if late > 1.0:
        print(f"warning: the split loops started {late:.1f} s apart (model loading took > {SPLIT_WARM_UP:.0f} s)")
    return {"segmenter": parts[0]["segmenter"], "frames": sum(p["frames"] for p in parts),
            "seconds": max(p["ended"] for p in parts) - min(p["started"] for p in parts),
            "stage_cpu_seconds": {s: sum(p["stage_cpu_seconds"][s] for p in parts) for s in parts[0]["stage_cpu_seconds"]}}


# ------------------------------------------------------------------ reports
RUNS = ("sequential_1", "sequential_2", "split_2", "pipeline_1", "pipeline_2")


def _median_run(measured: list[dict]) -> dict:
    """The repetition with the median frames/s, the upper one of an even count (its other
    figures come with it)."""
    return sorted(measured, key=lambda r: r["frames"] / r["seconds"])[len(measured) // 2]


def speed(videos: int, frames: int, height: int, width: int, chunk_frames: int, runs=RUNS, repeat: int = 1) -> dict:
    """``runs``: which of sequential / split / pipeline on 1 / 2 cores to measure (all by default).
    ``repeat`` > 1 measures the runs that many times, every other round in reverse order, and
    reports each run's median: a shared virtual machine's speed drifts by tens of percent over
    minutes, and interleaving keeps that drift out of the ratios."""
    with tempfile.TemporaryDirectory(prefix="bench-label-") as tmp:
        corpus = make_corpus(f"{tmp}/corpus", videos, frames, height, width)
        measured: dict[str, list[dict]] = {key: [] for key in runs}
        for round_ in range(repeat):
            for key in (runs if round_ % 2 == 0 else runs[::-1]):
                kind, cores = key.split("_")
                out = f"{tmp}/{key}-{round_}"
                if kind == "split":
                    measured[key].append(run_split(int(cores), corpus, out))
                elif kind == "pipeline":
                    measured[key].append(run_child(kind, int(cores), corpus=corpus, out=out, chunk_frames=chunk_frames))
                else:
                    measured[key].append(run_child(kind, int(cores), corpus=corpus, out=out))
        results = {key: _median_run(m) for key, m in measured.items()}
    fps = {k: v["frames"] / v["seconds"] for k, v in results.items()}
    print(f"\nlabel speed: {videos} videos × {frames} frames at {height}×{width}, segmenter "
          f"{next(iter(results.values()))['segmenter']}, DIS medium, tracker; chunk {chunk_frames} frames"
          + (f"; median (upper) of {repeat} interleaved rounds" if repeat > 1 else ""))
    print(f"{'run':<16} {'frames/s':>9} {'seconds':>8}  {'steady frames/s (20-90 % of frames)':>36}"
          + ("  all rounds, frames/s" if repeat > 1 else ""))
    for key in results:
        steady = results[key].get("steady_fps")
        rounds = "  " + " ".join(f"{m['frames'] / m['seconds']:.2f}" for m in measured[key]) if repeat > 1 else ""
        print(f"{key:<16} {fps[key]:>9.2f} {results[key]['seconds']:>8.1f}  {f'{steady:.2f}' if steady else '':>36}"
              + rounds)
    for base in ("sequential_2", "sequential_1", "split_2"):
        if "pipeline_2" in fps and base in fps:
            print(f"pipeline_2 / {base}: {fps['pipeline_2'] / fps[base]:.2f}x end to end, "
                  f"{results['pipeline_2']['steady_fps'] / fps[base]:.2f}x steady"
                  + (" (target >= 1.6x vs the loop on 2 cores)" if base == "sequential_2" else ""))
    if "split_2" in fps:
        for base in ("sequential_1", "sequential_2"):
            if base in fps:
                print(f"split_2 / {base}: {fps['split_2'] / fps[base]:.2f}x (two 1-core loops at once, no Ray: "
                      f"what these 2 cores give when the work splits perfectly)")
    if "sequential_1" in results and "sequential_2" in fps:
        # The most any schedule of these operators could reach on 2 cores if the cores did not slow
        # each other down: their CPU time per frame on one core, spread over both.
        per_frame = sum(results["sequential_1"]["stage_cpu_seconds"].values()) / results["sequential_1"]["frames"]
        print(f"ideal 2-core pipeline (1-core operator CPU {1000 * per_frame:.0f} ms/frame over 2 cores, zero "
              f"overhead, no slow-down of one core by the other): {2 / per_frame:.2f} frames/s = "
              f"{2 / per_frame / fps['sequential_2']:.2f}x the 2-core loop")
    if "pipeline_1" in fps and "pipeline_2" in fps:
        print(f"pipeline scaling 1 -> 2 CPUs: {fps['pipeline_2'] / fps['pipeline_1']:.2f}x end to end, "
              f"{results['pipeline_2']['steady_fps'] / results['pipeline_1']['steady_fps']:.2f}x steady")
    for key in results:
        stages = results[key]["stage_cpu_seconds"]
        total = sum(stages.values())
        print(f"{key} share of operator CPU time: " + ", ".join(f"{s} {100 * t / total:.0f}%" for s, t in stages.items())
              + f" ({1000 * total / results[key]['frames']:.0f} ms/frame)")
    for key in [k for k in results if k.startswith("pipeline")]:
        r, cores = results[key], int(key[-1])
        overhead = 1 - sum(r["stage_cpu_seconds"].values()) / (cores * r["seconds"])
        print(f"{key} overhead (share of cores × wall not spent in an operator's CPU time: start-up, Ray, "
              f"serialisation, idle cores): {100 * overhead:.0f}% (target < 15%); first output after "
              f"{r['first_output_seconds']:.1f} s; frames done after " +
              ", ".join(f"{q}: {t:.1f} s" for q, t in r["seconds_to"].items()) + f" (run {r['seconds']:.1f} s)")
    return results


def memory(counts: list[int], frames: int, height: int, width: int, chunk_frames: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-label-mem-") as tmp:
        for n in counts:
            corpus = make_corpus(f"{tmp}/corpus{n}", n, frames, height, width)
            results[n] = run_child("pipeline", 2, corpus=corpus, out=f"{tmp}/out{n}", chunk_frames=chunk_frames,
                                   memory=1)
    print(f"\nlabel peak memory (PSS of driver + all Ray processes), {frames} frames/video at {height}×{width}, "
          f"segmenter {results[counts[0]]['segmenter']}:")
    for n, r in results.items():
        print(f"{n:>5} videos: peak {r['peak_pss_mib']:.0f} MiB, {r['frames']} frames in {r['seconds']:.1f} s")
    return results


SPEED_DEFAULTS = (32, 512, 1024, 16)   # frames per video, height, width, chunk frames
MEMORY_DEFAULTS = (10, 128, 256, 10)


@pytest.mark.benchmark
def test_label_speed_and_memory():
    speed(8, *SPEED_DEFAULTS)
    memory([10, 100], *MEMORY_DEFAULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("speed", "memory", "_pipeline", "_sequential"))
    parser.add_argument("--videos", type=int, default=8)
    # frames, height, width, chunk frames: each mode's defaults (see the docstring) unless given
    parser.add_argument("--frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--chunk-frames", type=int)
    parser.add_argument("--counts", default="10,100")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)}")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--corpus")
    parser.add_argument("--out")
    parser.add_argument("--memory", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds of the speed runs (median)")
    parser.add_argument("--part", default="0/1", help="(_sequential) every n-th video from the i-th: i/n")
    parser.add_argument("--start-at", type=float, default=0.0, help="(_sequential) epoch seconds to start at")
    parser.add_argument("--core-offset", type=int, default=0, help="(children) first core of the pinned set")
    args = parser.parse_args()
    defaults = MEMORY_DEFAULTS if args.mode == "memory" else SPEED_DEFAULTS
    for name, value in zip(("frames", "height", "width", "chunk_frames"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.mode == "speed":
        speed(args.videos, args.frames, args.height, args.width, args.chunk_frames, tuple(args.runs.split(",")),
              args.repeat)
    elif args.mode == "memory":
        memory([int(c) for c in args.counts.split(",")], args.frames, args.height, args.width, args.chunk_frames)
    else:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cores[args.core_offset:args.core_offset + args.cores]))
        if args.mode == "_pipeline":
            print(json.dumps(child_pipeline(args.corpus, args.out, args.cores, args.chunk_frames, bool(args.memory))))
        else:
            print(json.dumps(child_sequential(args.corpus, args.out, args.cores, args.part, args.start_at)))


if __name__ == "__main__":
    main()
