"""The labelling driver's own work per summary row, as the corpus grows (no Ray, no models).

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_label_driver.py``); ``TUBEFLOW_BENCH_DRIVER=1000,4000`` runs other sizes.

A corpus of 2N videos of which N are committed already (skipped by their markers) and N are
new, of one chunk each (a fleet's short clips: every row closes a video and launches its
finalize); their synthetic sink summary rows flow through

* **new**: the driver's bookkeeping as it runs in :mod:`pipelines.label.passes`
  (:class:`RunTally`, :class:`PassBook`, :class:`FinalizeWindow` with the window of a 2-CPU
  machine) and the skip selection of :mod:`pipelines.label.driver`;
* **old** (baseline, same run): a transcription of the loop these replaced (tubeflow before
  2026-12-05): ``ray.wait`` over every pending finalize after every row, the failed videos
  recounted over all results per row, the skipped videos found by list membership
  (``e not in todo``).

Ray's ``wait`` is replaced by a stand-in with its cost model (it looks at every reference it is
given) and a finalize that ends ``LATENCY`` rows after it was launched, 1 video in 20 failing.
Printed: microseconds of driver work per row for each N (skip selection, bookkeeping, finalize
collection; the old loop's once, being the slow one, the new loop's best of three), old ÷ new,
and the new loop's growth from the smallest N to the largest: it should stay flat (what is left is
noise and Python's garbage collector over a larger heap), the old one grows with N.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipelines.commit import CommitMarker, is_current
from pipelines.label.driver import split_skipped
from pipelines.label.faults import VideoProgress
from pipelines.label.finalize import VideoResult
from pipelines.label.graph import finalize_window_size
from pipelines.label.passes import FinalizeWindow, PassBook, RunTally
from pipelines.label.stages import TIMED

SIZES = tuple(int(n) for n in os.environ.get("TUBEFLOW_BENCH_DRIVER", "1000,4000,16000").split(","))
LATENCY = 64  # rows that arrive while one finalize runs


class Ref:
    """A finalize's reference: done once the row clock reaches ``ready_at``."""

    __slots__ = ("ready_at", "result")

    def __init__(self, ready_at: int, result: VideoResult):
        self.ready_at, self.result = ready_at, result


class FakeRay:
    """``ray.wait``'s contract and cost (a look at every reference given) over :class:`Ref`\\ s,
    with a clock counted in rows; a blocking wait moves the clock to the first that ends."""

    def __init__(self):
        self.now = 0

    def wait(self, refs, num_returns=1, timeout=None):
        done = [r for r in refs if r.ready_at <= self.now]
        if len(done) < num_returns and timeout is None:
            self.now = sorted(r.ready_at for r in refs)[num_returns - 1]
            done = [r for r in refs if r.ready_at <= self.now]
        done = done[:num_returns]
        chosen = set(map(id, done))
        return done, [r for r in refs if id(r) not in chosen]

    def finalize(self, p: VideoProgress) -> Ref:
        status = "failed" if int(p.video_id[1:]) % 20 == 0 else "ok"
        return Ref(self.now + LATENCY, VideoResult(p.video_id, status, p.frame_count))


def summary_rows(n: int):
    zero = {f"t_{s}": 0.0 for s in TIMED}
    for v in range(n):
        yield {"video_id": f"v{v:07d}", "frame_count": 10, "frames_done": 10, "frames_failed": 0, "error": "",
               "stage": "", "lost": False, "frames": np.arange(10), "part": "part-0.parquet",
               **zero}


class Bar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass


class Entry:
    """A corpus entry: ``video_id`` and ``fingerprint.digest`` are what the skip looks at."""

    __slots__ = ("video_id", "fingerprint")

    def __init__(self, video_id: str):
        self.video_id, self.fingerprint = video_id, self

    digest = "d"


def corpus(n: int) -> tuple[list[Entry], dict[str, CommitMarker]]:
    """``2n`` entries of which ``n`` are committed with the same fingerprint and config (skipped)."""
    entries = [Entry(f"v{v:07d}") for v in range(2 * n)]
    markers = {e.video_id: CommitMarker(e.video_id, "d", "c", {}, {"frames": 10}, [], "r", committed_at="")
               for e in entries[n:]}
    return entries, markers


def old_driver(n: int) -> float:
    """The loop before: seconds of driver work for ``n`` rows (skip selection included)."""
    fake, bar, results = FakeRay(), Bar(), []
    start = time.perf_counter()
    entries, markers = corpus(n)
    todo = [e for e in entries if not is_current(markers.get(e.video_id), e.fingerprint.digest, "c")]
    results.extend(VideoResult(e.video_id, "skipped", int(markers[e.video_id].counts.get("frames", 0)))
                   for e in entries if e not in todo)
    running = {e.video_id: VideoProgress(e.video_id) for e in todo}
    pending, stage_cpu_seconds, frames, frame_times, first_output = {}, {s: 0.0 for s in TIMED}, 0, [], 0.0

    def close(p):
        del running[p.video_id]
        pending[fake.finalize(p)] = p

    def collect(timeout):
        done, _ = fake.wait(list(pending), num_returns=len(pending), timeout=timeout) if pending else ([], [])
        for ref in done:
            pending.pop(ref)
            results.append(ref.result)
            bar.update(1)

    for summary in summary_rows(n):
        fake.now += 1
        first_output = first_output or time.perf_counter() - start
        for s in TIMED:
            stage_cpu_seconds[s] += float(summary[f"t_{s}"])
        p = running.get(str(summary["video_id"]))
        if p is None:
            continue
        frames += p.add(summary)
        frame_times.append((time.perf_counter() - start, frames))
        if p.error or p.complete:
            close(p)
        collect(0)
        bar.set_postfix(failed=sum(r.status == "failed" for r in results),
                        fps=f"{frames / max(time.perf_counter() - start, 1e-9):.1f}")
    while pending:
        fake.now += LATENCY
        collect(1.0)
    assert len(results) == 2 * n
    return time.perf_counter() - start


def new_driver(n: int) -> float:
    """The loop of pipelines/label/passes.py: seconds of driver work for ``n`` rows."""
    fake, bar = FakeRay(), Bar()
    start = time.perf_counter()
    entries, markers = corpus(n)
    todo, skipped = split_skipped(entries, markers, "c")
    tally = RunTally(start)
    for result in skipped:
        tally.add_result(result)
    window = FinalizeWindow(finalize_window_size(2), fake.wait)

    def finished(ended):
        for ref, p in ended:
            book.finalized(p, ref.result)

    def done():
        bar.update(1)
        bar.set_postfix(failed=tally.failed, fps=f"{tally.frames_per_second:.1f}", refresh=False)

    book = PassBook({e.video_id: VideoProgress(e.video_id) for e in todo}, tally,
                    lambda p: finished(window.add(fake.finalize(p), p)), lambda v: None, lambda v: None, done)
    for summary in summary_rows(n):
        fake.now += 1
        book.take(summary)
        finished(window.poll())
    book.close_unfinished()
    while len(window):
        fake.now += LATENCY
        finished(window.drain(1.0))
    assert len(tally.results) == 2 * n and len(skipped) == n and not book.lost
    return time.perf_counter() - start


@pytest.mark.benchmark
def test_driver_work_per_row_stays_flat():
    print(f"\nlabel driver, per summary row (1 row per video, finalize latency {LATENCY} rows, "
          f"window {finalize_window_size(2)}):")
    print(f"{'videos':>8} {'old µs/row':>11} {'new µs/row':>11} {'old/new':>8}")
    per_row = {}
    for n in SIZES:
        old = old_driver(n) / n  # once: it is the slow one
        new = min(new_driver(n) for _ in range(3)) / n
        per_row[n] = new
        print(f"{n:>8} {1e6 * old:>11.1f} {1e6 * new:>11.1f} {old / new:>8.1f}")
    growth = per_row[SIZES[-1]] / per_row[SIZES[0]]
    print(f"new per-row cost, {SIZES[-1]} vs {SIZES[0]} videos: {growth:.2f}x")
