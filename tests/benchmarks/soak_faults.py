"""Soak: ``tubeflow label`` on many small videos under random SIGKILLs, rerun until it exits 0.

While a run lives, a killer SIGKILLs a random process of the run's own Ray every few seconds:
a stage's actor or task while it works on a chunk (segmentation, flow, association feeder or
actor, plan/decode, sink, finalize); in the first ``--driver-kill-runs`` runs it kills,
now and then, the driver itself instead (its whole process group, Ray included). The run is
started again until it exits 0. Then every video must be
committed exactly once (one marker, every file it names present, no other file in its segments
partition) with the segment rows of a clean, uninterrupted run (the sequential loop over the
same operators, no Ray). Prints kills survived, reruns and time; exits 1 when a check fails.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/soak_faults.py --videos 200 --out /tmp/tubeflow-soak

Not collected by pytest (no ``bench_`` prefix): it runs for minutes. Figures in README.md.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from operators.formats import segments_table  # noqa: E402
from operators.formats.vps_layout import PredictionWriter  # noqa: E402
from operators.synth import SynthConfig, generate_video, write_corpus  # noqa: E402
from operators.synth.perturb import scramble_ids  # noqa: E402

IMAGE_ID = "{video_id}_{frame_index:04d}_synth"
# Processes at work: an actor's title gains the method it runs (``.submit``, ``.push``); a task's
# title is its name only while it runs. Actors starting up (``.__init__``) or idle are left alone:
# on a loaded machine a start-up takes longer than the interval between kills, and killing them
# would only starve the run.
BUSY_ACTOR_TITLES = (".submit", ".push")
TASK_TITLES = ("ray::FlatMap(", "ray::MapBatches(", "ray::finalize_video")


def make_corpus(root: Path, videos: int, frames: int, height: int, width: int) -> None:
    cfg = SynthConfig(videos=videos, frames=frames, height=height, width=width, seed=0, annotate_every=5)
    write_corpus(str(root), cfg)
    rng = np.random.default_rng(0)
    with PredictionWriter(str(root / "perframe")) as writer:
        for v in range(videos):
            for frame in generate_video(cfg, v):
                writer.add(frame.image_id, scramble_ids(frame.panoptic, rng))


def clean_rows(corpus: Path, out: Path):
    """The segments rows of an uninterrupted labelling: the sequential loop, no Ray."""
    from operators.segmentation.precomputed import PrecomputedSegmenter
    from pipelines.sequential import label_sequentially

    videos = sorted((p.stem, str(p)) for p in (corpus / "videos").glob("*.mp4"))
    host = PrecomputedSegmenter(str(corpus / "perframe"))
    label_sequentially(videos, host, image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i),
                       segments_out=str(out))
    return sorted_rows(out)


COLUMNS = ["video_id", "frame_index", "image_id", "track_id", "category_id", "area", "bbox", "mask"]


def sorted_rows(segments: Path):
    table = segments_table.read_segments_table(str(segments)).select(COLUMNS)
    return table.sort_by([("video_id", "ascending"), ("frame_index", "ascending"), ("track_id", "ascending")])


class Killer(threading.Thread):
    """Every ``every`` seconds (uniform in the range) SIGKILLs one random stage process of the
    run; with probability ``driver_share`` the driver's whole process group instead."""

    def __init__(self, proc: subprocess.Popen, every: tuple[float, float], driver_share: float, rng: random.Random):
        super().__init__(daemon=True)
        self.proc, self.every, self.driver_share, self.rng = proc, every, driver_share, rng
        self.kills: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        root = psutil.Process(self.proc.pid)
        while not self.stop.wait(self.rng.uniform(*self.every)) and self.proc.poll() is None:
            if self.rng.random() < self.driver_share:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.kills["driver"] = self.kills.get("driver", 0) + 1
                return
            victims = []
            for process in root.children(recursive=True):
                try:
                    title = (process.cmdline() or [""])[0]
                except psutil.Error:
                    continue
                if title.startswith(TASK_TITLES) or (title.startswith("ray::") and title.endswith(BUSY_ACTOR_TITLES)):
                    victims.append((process, title))
            if not victims:
                continue
            process, title = self.rng.choice(victims)
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
            names = re.findall(r"\(([^()]+)\)", title)  # ray::MapWorker(MapBatches(SegmentChunks)).submit
            kind = "->".join(names) if names else title.removeprefix("ray::").split(".")[0]
            self.kills[kind] = self.kills.get(kind, 0) + 1


def check(out: Path, videos: list[str], reference) -> list[str]:
    """Every video committed exactly once with the clean rows; returns the problems found."""
    from pipelines.commit import OutputLayout, committed_markers

    problems = []
    markers = committed_markers(OutputLayout(str(out)))
    if sorted(markers) != videos:
        problems.append(f"committed {len(markers)} of {len(videos)} videos")
    for video_id, marker in markers.items():
        missing = [f for f in marker.files if not (out / f).exists()]
        partition = Path(segments_table.partition_dir(str(out / "segments"), video_id))
        prefix = f"segments/{partition.name}"
        stray = sorted(f"{prefix}/{f}" for f in os.listdir(partition)) if partition.exists() else []
        stray = [f for f in stray if f not in marker.files]
        if missing or stray:
            problems.append(f"video {video_id}: missing {missing[:3]}, not owned by its marker {stray[:3]}")
    if (out / "_staging").exists():
        problems.append("staging left behind")
    rows = sorted_rows(out / "segments")
    if not rows.equals(reference):
        problems.append(f"segment rows differ from the clean run's ({rows.num_rows} vs {reference.num_rows} rows)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working directory (deleted first, see --reuse-corpus)")
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--chunk-frames", type=int, default=4)
    parser.add_argument("--kill-every", default="3,6", help="seconds between kills: MIN,MAX (default 3,6)")
    parser.add_argument("--driver-share", type=float, default=0.05, help="share of kills that hit the driver")
    parser.add_argument("--driver-kill-runs", type=int, default=3, help="runs whose driver may be killed")
    parser.add_argument("--max-runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-corpus", action="store_true", help="keep the corpus and clean rows of an earlier "
                                                                     "soak with the same sizes in --out")
    args = parser.parse_args(argv)
    work = Path(args.out)
    stamp = f"{args.videos} {args.frames} {args.height} {args.width}"
    started = time.perf_counter()
    if args.reuse_corpus and (work / "corpus.stamp").exists() and (work / "corpus.stamp").read_text() == stamp:
        reference = None  # read after the soak
        shutil.rmtree(work / "out", ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        make_corpus(work / "corpus", args.videos, args.frames, args.height, args.width)
        reference = clean_rows(work / "corpus", work / "clean")
        (work / "corpus.stamp").write_text(stamp)
    print(f"corpus and clean rows: {time.perf_counter() - started:.1f} s", flush=True)
    out = work / "out"
    argv_label = [sys.executable, "-m", "jobs.cli", "label", "--input", str(work / "corpus" / "videos"), "--output",
                  str(out), "--segmenter", "precomputed", "--model", str(work / "corpus" / "perframe"),
                  "--image-id-format", IMAGE_ID, "--chunk-frames", str(args.chunk_frames), "--no-progress"]
    rng = random.Random(args.seed)
    every = tuple(float(x) for x in args.kill_every.split(","))
    kills: dict[str, int] = {}
    codes, resumed_lines = [], []
    soak_started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for run in range(args.max_runs):
        proc = subprocess.Popen(argv_label, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        killer = Killer(proc, every, args.driver_share if run < args.driver_kill_runs else 0.0, rng)
        killer.start()
        output, _ = proc.communicate()
        killer.stop.set()
        killer.join(5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the run left behind
        except ProcessLookupError:
            pass
        for kind, n in killer.kills.items():
            kills[kind] = kills.get(kind, 0) + n
        codes.append(proc.returncode)
        resumed_lines += [line for line in output.splitlines() if "lost a worker and ran again" in line]
        summary = next((line for line in output.splitlines() if " videos: " in line), "")
        print(f"run {run + 1}: exit {proc.returncode}, kills {killer.kills}; {summary}", flush=True)
        if proc.returncode == 0:
            break
    seconds = time.perf_counter() - soak_started
    reference = sorted_rows(work / "clean") if reference is None else reference
    problems = check(out, sorted(p.stem for p in (work / "corpus" / "videos").glob("*.mp4")), reference)
    print(f"\n{args.videos} videos x {args.frames} frames at {args.width}x{args.height}: {len(codes)} runs "
          f"({len(codes) - 1} reruns), exit codes {codes}, {sum(kills.values())} kills survived {kills}, "
          f"{seconds:.0f} s under kills")
    print(f"runs that resumed videos after a lost worker: {len(resumed_lines)}")
    for line in resumed_lines:
        print("  " + line[:300])
    print("check: " + ("every video committed exactly once with the clean run's rows" if not problems else
                       "FAILED: " + "; ".join(problems)))
    return 0 if not problems and codes[-1] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
