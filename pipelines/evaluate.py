"""The ``evaluate`` pipeline: VPQ / PQ / STQ of a prediction set, streamed video by video.

GT: the Cityscapes-VPS layout (JSON + PNG directory) or a segments table; predictions:
``pred.json`` + ``pan_pred/`` or a segments table. The driver never holds either whole: a
GT JSON and ``pred.json`` are split per video as a stream (:class:`VideoSplit`), a table is
only listed, and each video becomes a small :class:`VideoInputs` (URIs and ``segments_info``
text, or just its id for a table, whose partition the worker reads). Shards of videos go
to workers, at most a few per worker ahead; each worker runs :func:`evaluate_shard` — the
per-video :func:`operators.metrics.video.evaluate_video`, then the shard's summed
:class:`Totals` and one ``per_video.parquet`` row per video — and the driver adds the
totals, files the rows in a spill file and keeps the failures: O(1) work and memory per
video.

Where the shards run (``executor``):

* ``"local"``: this process (``workers=1``), or a ``concurrent.futures`` process pool of
  ``workers`` processes (default: the machine's cores). A pool process that dies (killed
  for memory) fails the videos of its shard, the others are scored;
* ``"ray"``: Ray tasks, on an in-process local Ray (:mod:`cluster.connect`: loopback only) or
  a cluster (``address``); a task whose worker dies is retried by Ray, then fails its videos;
* ``"auto"`` (default): Ray when ``address`` (or ``RAY_ADDRESS``) names a cluster, when Ray
  already runs in this process, or when the corpus has more than :data:`LOCAL_MAX_VIDEOS`
  videos; otherwise local. A small job then costs no Ray start-up (seconds): see
  ``tests/benchmarks/README.md``.

Both run the same functions on the same shards, so their results are identical (tested).
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from cluster.connect import check_executor, local_cores, needs_ray, ray_running
from operators import fs
from operators.errors import InputError
from operators.formats import segments_table
from operators.formats.ground_truth import gt_layout
from operators.formats.vps_layout import PRED_JSON, PRED_PNG_DIR
from operators.formats.vps_stream import VideoSplit
from operators.metrics.report import EvaluationReport, VideoLog, build_report, per_video_row, write_report
from operators.metrics.totals import Totals
from operators.metrics.video import (EvaluationSettings, FrameInputs, SpacingCheck, VideoEvaluation, VideoInputs,
                                     evaluate_videos, frame_gaps)
from operators.metrics.vpq import VpqStats

LOCAL_MAX_VIDEOS = 20_000
"""Above this many videos ``executor="auto"`` uses Ray even without a cluster: a local Ray
retries a shard whose worker died instead of failing its videos, which matters more the
longer a job runs."""
SHARDS = 512                # a corpus in about this many shards: enough to balance 64 workers 8 ways
MAX_VIDEOS_PER_SHARD = 64   # ... and shards short enough that a lost one costs little
IN_FLIGHT_PER_WORKER = 2    # shards sent ahead per worker: keeps workers busy, bounds driver memory
_TOTALS_BATCH = 64          # shard totals merged at once


@dataclass
class ShardResult:
    """What a worker returns for a shard: the shard's summed totals, one ``per_video.parquet``
    row per video (:func:`per_video_row`) and each video's annotation gaps."""

    index: int
    totals: Totals
    rows: list[dict]
    gaps: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)


@dataclass
class Shard:
    """Consecutive videos of the corpus, numbered in corpus order."""

    index: int
    videos: list[VideoInputs]


def evaluate_shard(shard: Shard, settings: EvaluationSettings) -> ShardResult:
    """The unit of work of every executor: the videos one after the other, then their sums."""
    results = evaluate_videos(shard.videos, settings)
    return ShardResult(shard.index, Totals.of(results), [per_video_row(r, settings) for r in results],
                       [(r.video_id, r.gaps) for r in results])


def failed_shard(shard: Shard, settings: EvaluationSettings, exc: BaseException) -> ShardResult:
    """The result of a shard whose worker died: each of its videos fails, naming the cause."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    results = [VideoEvaluation(v.video_id, len(v.frames), VpqStats(), None,
                               f"video {v.video_id}: its evaluation task failed ({type(exc).__name__}"
                               f"{': ' + reason if reason else ''})") for v in shard.videos]
    return ShardResult(shard.index, Totals.of([]), [per_video_row(r, settings) for r in results],
                       [(v.video_id, frame_gaps([f.image.frame_index for f in v.frames])) for v in shard.videos])


class TotalsSum:
    """Running dataset totals, summed in shard order whatever order the shards finish in
    (a shard that finishes early waits for those before it), so that every executor and
    every run gives the same floating-point sums; merged in batches (one Arrow group-by
    per batch)."""

    def __init__(self) -> None:
        self._parts: list[Totals] = []
        self._early: dict[int, Totals] = {}
        self._next = 0

    def add(self, result: ShardResult) -> None:
        self._early[result.index] = result.totals
        while self._next in self._early:
            self._parts.append(self._early.pop(self._next))
            self._next += 1
            if len(self._parts) >= _TOTALS_BATCH:
                self._parts = [Totals.merge(self._parts)]

    def result(self) -> Totals:
        if self._early:
            raise RuntimeError(f"shards {sorted(self._early)[:5]} came without shard {self._next}")
        return Totals.merge(self._parts)


# -- inputs -------------------------------------------------------------------------------
@contextlib.contextmanager
def open_inputs(gt_json: str | None, gt_dir: str | None, pred_dir: str | None, gt_table: str | None,
                pred_table: str | None) -> Iterator[tuple[dict, int, Iterator[VideoInputs]]]:
    """(categories, number of videos, the videos' inputs one at a time) of a GT and a
    prediction set in either layout. A GT JSON is split as a stream (files deleted after)."""
    if bool(gt_json) == bool(gt_table) or (gt_json and not gt_dir):
        raise InputError("evaluate", "give the GT as --gt-json with --gt-dir, or as --gt-table")
    if bool(pred_dir) == bool(pred_table):
        raise InputError("evaluate", "give the predictions as --pred-dir or as --pred-table")
    if gt_json and gt_layout(gt_json) == "table":
        raise InputError(gt_json, "a segments table, not a GT JSON: give it as --gt-table")
    if gt_table:
        if pred_dir:
            raise InputError("evaluate", "a GT table needs predictions as a table too (pred.json names images, only "
                                         "a GT JSON says which video they belong to): tubeflow convert --gt-json ... "
                                         "--pred-dir ... --to-table ...")
        videos = segments_table.list_videos(gt_table)
        yield (segments_table.read_table_categories(gt_table), len(videos),
               (VideoInputs(v, [], gt_table=gt_table, pred_table=pred_table) for v in videos))
        return
    with VideoSplit(gt_json, pred_dir) as split:
        pred_json = fs.join(pred_dir, PRED_JSON) if pred_dir else ""
        pred_png = fs.join(pred_dir, PRED_PNG_DIR) if pred_dir else ""

        def plans() -> Iterator[VideoInputs]:
            for records in split.videos():
                frames = [FrameInputs(f.image, fs.join(gt_dir, f.gt_file) if f.gt_file is not None else "",
                                      f.gt_segments_json,
                                      fs.join(pred_png, f.pred_file) if f.pred_file is not None else None,
                                      f.pred_segments_json) for f in records.frames]
                yield VideoInputs(records.video_id, frames, pred_json, pred_table=pred_table or "")

        yield split.categories, split.num_videos, plans()


def shards_of(videos: Iterable[VideoInputs], size: int) -> Iterator[Shard]:
    shard = Shard(0, [])
    for video in videos:
        shard.videos.append(video)
        if len(shard.videos) >= size:
            yield shard
            shard = Shard(shard.index + 1, [])
    if shard.videos:
        yield shard


def shard_size(videos: int) -> int:
    """Videos per shard: the same for every executor and machine (so are the sums), about
    :data:`SHARDS` shards in all, at most :data:`MAX_VIDEOS_PER_SHARD` videos each."""
    return max(1, min(MAX_VIDEOS_PER_SHARD, math.ceil(videos / SHARDS)))


# -- executors ----------------------------------------------------------------------------
def choose_executor(executor: str, address: str | None, videos: int) -> str:
    check_executor(executor, address)
    if executor != "auto":
        return executor
    return "ray" if needs_ray(address) or videos > LOCAL_MAX_VIDEOS else "local"


def _pool_context():
    """fork: a worker starts in milliseconds with the modules already imported. Not when
    Ray runs in this process (its threads could hold locks a child would inherit held):
    forkserver then."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not ray_running():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _import_before_fork() -> None:
    """Make here the imports each pool process would otherwise make on its first video, so
    that forked processes inherit them: pyarrow imports pandas (~0.15 s of CPU) at its first
    ``pa.array``, to check whether the values are pandas objects. This process imports it
    anyway when it sums the shards."""
    import pyarrow as pa

    pa.array([0])


def run_local(shards: Iterable[Shard], settings: EvaluationSettings,
              workers: int) -> Iterator[ShardResult]:
    """The shards in this process (``workers`` ≤ 1) or in a process pool, at most
    ``IN_FLIGHT_PER_WORKER`` shards per process ahead.

    A pool process that dies (killed for memory, a crash) breaks the whole pool and every
    shard in it: those shards are run again one at a time, each in a pool of its own, so
    only the shard that kills its process fails (its videos, naming the cause); a new pool
    takes the rest.
    """
    if workers <= 1:
        for shard in shards:
            yield evaluate_shard(shard, settings)
        return
    context = _pool_context()
    if context.get_start_method() == "fork":
        _import_before_fork()

    def alone(shard: Shard) -> ShardResult:
        with ProcessPoolExecutor(1, mp_context=context) as single:
            try:
                return single.submit(evaluate_shard, shard, settings).result()
            except BrokenProcessPool as exc:
                return failed_shard(shard, settings, exc)

    pool = ProcessPoolExecutor(workers, mp_context=context)
    pending: dict = {}
    shards = iter(shards)
    try:
        while True:
            for shard in shards:
                pending[pool.submit(evaluate_shard, shard, settings)] = shard
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    break
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            suspects = []
            for future in done:
                shard = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    suspects.append(shard)
                    continue
                yield result
            if suspects:  # the pool is dead: every shard still in it died with it
                suspects.extend(pending.values())
                pending.clear()
                pool.shutdown(wait=True)
                for shard in suspects:
                    yield alone(shard)
                pool = ProcessPoolExecutor(workers, mp_context=context)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(shards: Iterable, settings: EvaluationSettings, address: str | None = None, *,
            work: Callable = evaluate_shard, failed: Callable = failed_shard) -> Iterator[ShardResult]:
    """The shards as Ray tasks of ``work(shard, settings)`` (a local Ray started here, the
    cluster at ``address``, or the Ray already running in this process), a bounded number in
    flight. A task that fails after Ray's retries gives ``failed(shard, settings, exc)``: by
    default its videos fail."""
    import ray

    from cluster.connect import ray_session

    with contextlib.nullcontext() if ray_running() else ray_session(address):
        task = ray.remote(work)
        settings_ref = ray.put(settings)
        window = max(4, int(ray.cluster_resources().get("CPU", 1)) * IN_FLIGHT_PER_WORKER)
        pending: dict = {}

        def collect() -> Iterator[ShardResult]:
            done, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task died after its retries
                yield failed(shard, settings, exc)

        for shard in shards:
            pending[task.remote(shard, settings_ref)] = shard
            while len(pending) >= window:
                yield from collect()
        while pending:
            yield from collect()


def run_shards(shards: Iterable[Shard], settings: EvaluationSettings, executor: str = "local",
               address: str | None = None, workers: int | None = None) -> Iterator[ShardResult]:
    if executor == "ray":
        return run_ray(shards, settings, address)
    return run_local(shards, settings, local_cores() if workers is None else workers)


# -- the pipeline -------------------------------------------------------------------------
def evaluate(gt_json: str | None = None, gt_dir: str | None = None, pred_dir: str | None = None,
             out: str = "", *, gt_table: str | None = None, pred_table: str | None = None,
             address: str | None = None, executor: str = "auto", workers: int | None = None,
             allow_missing: bool = False, stride: int = 5, ks: Sequence[int] = (0, 5, 10, 15),
             gt_area: str = "summed", stq_ignore_label: int = 255, videos_per_task: int | None = None,
             progress: bool = True) -> EvaluationReport:
    """Evaluate the predictions (``pred_dir`` or ``pred_table``) against the GT (``gt_json`` +
    ``gt_dir``, or ``gt_table``) and write the report under ``out``. Bad videos are listed in
    the report, not raised."""
    from tqdm import tqdm

    if videos_per_task is not None and videos_per_task < 1:
        raise InputError("--videos-per-task", f"videos per task must be at least 1, got {videos_per_task}")
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    check_executor(executor, address)
    with open_inputs(gt_json, gt_dir, pred_dir, gt_table, pred_table) as (categories, count, videos):
        settings = EvaluationSettings(categories, tuple(int(k) for k in ks), int(stride), allow_missing, gt_area,
                                      ignore_label=int(stq_ignore_label))
        where = choose_executor(executor, address, count)
        size = videos_per_task or shard_size(count)
        pool_size = min(local_cores() if workers is None else workers, math.ceil(count / size) or 1)
        log, spacing, totals = VideoLog(settings.ks), SpacingCheck(settings.stride), TotalsSum()
        with tqdm(total=count, unit="video", desc="evaluate", disable=not progress) as bar:
            for result in run_shards(shards_of(videos, size), settings, where, address, pool_size):
                totals.add(result)
                for row in result.rows:
                    log.add(row)
                    if row["error"]:
                        bar.write(f"failed: {row['error']}")
                for video_id, gaps in result.gaps:
                    spacing.add(video_id, gaps)
                bar.update(len(result.rows))
    total = totals.result()
    warning = spacing.warning()
    report = build_report(settings, total.vpq, total.stq, log, [warning] if warning else [])
    write_report(out, report)
    return report
