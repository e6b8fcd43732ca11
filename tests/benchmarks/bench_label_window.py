"""The Ray label driver's memory per video of the corpus: a pass in windows of videos (one
execution of the graph per window, ``graph.execution_windows``), each run in a sub-driver process
(``graph.window_summaries``, the default), against the same windows run in the driver (the
behaviour before: ``TUBEFLOW_LABEL_WINDOWS_IN_DRIVER=1``, ``passes.WINDOWS_IN_DRIVER_ENV``), in the
same run.

Run::

    .venv/bin/python tests/benchmarks/bench_label_window.py [--counts 256,1024 --frames 2,8]

or with ``make bench`` (smaller sizes, windows of 40 videos). One tiny synthetic video (64×128)
cloned under N ids (``bench_label_gt.make_corpus``); ``tubeflow label --executor ray`` (the
built-in model without test-time augmentation or refinement, no GT) in a child process of its
own per measurement; the figure is the child's peak RSS (``VmHWM``: the driver only, not Ray's
processes) and its growth per added video from the first N to the last. Two-frame clips are the
worst case (each decoded chunk is under Ray's 100 KiB inline limit, so it lives in the driver's
memory store, which owns every block); 8-frame clips' chunks go to the object store. With the
default window (64 per cluster CPU, at least 256) the first N is one window and the last several.
Target (issue 16): at most 10 KiB per video of the corpus in the driver. (Before the sub-drivers
this benchmark compared windows in the driver with a pass in one execution, ``--window-videos 0``:
figures in tests/benchmarks/README.md.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_label_gt import IMAGE_ID, _LABEL, _child, make_corpus  # noqa: E402

from pipelines.label.passes import WINDOWS_IN_DRIVER_ENV  # noqa: E402

BEFORE, AFTER = "windows in the driver (before)", "windows in sub-drivers"
MODES = {BEFORE: {WINDOWS_IN_DRIVER_ENV: "1"}, AFTER: {}}


@contextlib.contextmanager
def environment(variables: dict[str, str]):
    """``variables`` set in this process's environment (which the child inherits) for the block."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure(counts: list[int], frames: int, window: int | None = None) -> dict:
    """(mode, N) → {"seconds", "peak_kib"}; ``window``: --window-videos of both modes (None: the
    default, from the cluster's CPUs)."""
    flags = [] if window is None else ["--window-videos", str(window)]
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench_label_window_") as tmp:
        work = Path(tmp)
        corpus = make_corpus(work, counts, frames)
        for count in counts:
            for mode, variables in MODES.items():
                out = work / f"out_{count}"
                with environment(variables):
                    seconds, peak, _ = _child(_LABEL, "label", "--input", str(corpus[count]["inputs"]), "--output",
                                              str(out), "--image-id-format", IMAGE_ID, "--no-flip", "--no-shift",
                                              "--no-refine", "--executor", "ray", "--no-progress", *flags)
                manifest = json.loads((out / "run_manifest.json").read_text())
                assert manifest["totals"] == {"ok": count, "skipped": 0, "failed": 0}, manifest["totals"]
                figures[(mode, count)] = {"seconds": seconds, "peak_kib": peak}
                shutil.rmtree(out)
    return figures


def report(figures: dict, counts: list[int], frames: int, window: int | None = None) -> dict[str, float]:
    first, last = counts[0], counts[-1]
    modes = [BEFORE, AFTER]
    print(f"\n`tubeflow label --executor ray`, {frames}-frame 64x128 videos, built-in model without TTA/refine, "
          f"no GT, windows of {window or 'the default'} videos, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; driver peak RSS (VmHWM)")
    growth = {}
    for mode in modes:
        peaks = [figures[(mode, n)]["peak_kib"] for n in counts]
        growth[mode] = (peaks[-1] - peaks[0]) / (last - first)
        print(f"  {mode:30s} peak " + " -> ".join(f"{p / 1024:.1f} MiB" for p in peaks)
              + f" ({first} -> {last} videos): {growth[mode]:+.2f} KiB per added video   "
              + "  ".join(f"{figures[(mode, n)]['seconds']:.0f} s" for n in counts))
    before, after = growth[modes[0]], growth[modes[1]]
    ratio = f"{before / after:.1f}x less per video" if after > 0.1 else "no growth above 0.1 KiB per video"
    print(f"  sub-drivers vs windows in the driver: {ratio} ({before:+.1f} -> {after:+.1f} KiB per video); "
          "target <= 10 KiB per video")
    return growth


@pytest.mark.benchmark
def test_label_driver_memory_per_video_in_windows():
    counts = [40, 160]
    report(measure(counts, frames=2, window=40), counts, 2, window=40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="256,1024", help="corpus sizes (videos)")
    parser.add_argument("--frames", default="2,8", help="frames per clip, one measurement each")
    parser.add_argument("--window", type=int, default=None, help="--window-videos of both modes "
                                                                 "(default: the command's default)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    for frames in (int(f) for f in args.frames.split(",")):
        report(measure(counts, frames, args.window), counts, frames, args.window)


if __name__ == "__main__":
    main()
