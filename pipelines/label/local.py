"""A labelling pass without Ray: the graph's own stages, one video at a time in each of a few
local processes — for a run small enough for this machine, where Ray's start-up would cost
more than the work.

A local Ray costs a labelling run ~20 CPU-seconds before and around its operators (on a 2-core
machine ~10 s of wall time): the GCS, the raylet and its agents, Ray Data's own actors, and a
worker process per actor and task pool that each import Ray and Ray Data (~1 CPU-second each)
before the model's imports (``tests/benchmarks/bench_label_fixed.py``). Here a pool of
``cores`` processes (fewer for fewer videos, each with the cores left over as torch threads)
builds the same stages once per process and runs each video's chunks through them in order:
``plan_video`` → ``decode_chunk`` → ``SegmentChunks.segment`` → ``FlowChunks.flow`` →
``AssociateChunks.associate`` (with an in-process :class:`LocalAssociation` in place of the
association actors) → ``sink.write_frames``; finalize (:func:`~pipelines.label.finalize.finalize_video`)
runs in the pool too. The driver's bookkeeping is the Ray pass's (:class:`pipelines.label.passes.PassBook`,
:class:`~pipelines.label.passes.FinalizeWindow`), so outputs, metrics, failure rows and commits
are the same; ``tests/test_label_local.py`` holds both engines equal.

A process that dies (killed, out of memory) breaks the pool: the videos it held are lost for
this pass and run again, from their first frame, in the next (no association checkpoints here:
a video is one job), at most :data:`~pipelines.label.faults.MAX_PASSES` times.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterator

from cluster.connect import check_executor, local_cores, needs_ray
from operators.association import TrackChunk, TrackedFrame, TrackerConfig, VideoOperator
from pipelines.label.finalize import finalize_video

# Without --address, a run of at most this many videos to label runs without Ray (--executor
# auto). Past it the Ray graph's chunk-level streaming, association checkpoints and autoscaling
# are worth their start-up; a user can choose either engine with --executor.
LOCAL_MAX_VIDEOS = 64


def machine_has_gpus() -> bool:
    """Whether this machine shows an NVIDIA GPU to its processes (device files, unless
    ``CUDA_VISIBLE_DEVICES`` hides them all), without importing torch or Ray."""
    import glob

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def choose_executor(executor: str, address: str | None, videos: int, gpus: str = "auto") -> str:
    """``local`` or ``ray`` for a run of ``videos`` to label (see :data:`LOCAL_MAX_VIDEOS`). A
    machine with GPUs runs the Ray graph: its model actors get a GPU each, where local processes
    would each load the model onto the same GPU."""
    check_executor(executor, address)
    if executor != "auto":
        return executor
    if needs_ray(address) or gpus == "gpu" or videos > LOCAL_MAX_VIDEOS or (gpus == "auto" and machine_has_gpus()):
        return "ray"
    return "local"


class LocalAssociation:
    """The association of the videos of one process, in that process: one
    :class:`~operators.association.VideoOperator` per video (chunks arrive in order)."""

    def __init__(self, config: TrackerConfig):
        self.config = config
        self.videos: dict[str, VideoOperator] = {}

    def track(self, chunk: TrackChunk, resume_from: int = 0, max_held: int | None = None) -> list[TrackedFrame]:
        op = self.videos.get(chunk.video_id)
        if op is None:
            op = self.videos[chunk.video_id] = VideoOperator(chunk.video_id, self.config,
                                                             max_buffered_chunks=max_held or 1)
        return op.push(chunk.start, chunk.stop, chunk)

    def finish(self, video_id: str) -> None:
        self.videos.pop(video_id, None)


@dataclass(frozen=True)
class LocalJob:
    """What every video of a local pass shares (sent once to each process)."""

    host_kwargs: dict
    flow: str
    flow_options: dict
    tracker_json: str
    chunk_frames: int
    image_id_format: str
    root: str
    run_id: str
    write_png: bool
    categories: object
    settings: object
    threads: int
    render: str = ""


_stages = None  # this process's (job, segment, flow, associate) stages, built by _start_worker


def _start_worker(job: LocalJob) -> None:
    """Build the stages once per process (the model loads while the driver plans)."""
    global _stages
    import cv2

    from pipelines.label.stages import AssociateChunks, FlowChunks, SegmentChunks

    cv2.setNumThreads(job.threads)
    segment = SegmentChunks(job.host_kwargs)
    if "torch" in sys.modules:  # the segmenter imported it (precomputed predictions do not)
        sys.modules["torch"].set_num_threads(job.threads)
    flow = FlowChunks(job.flow, job.flow_options)
    associate = AssociateChunks(LocalAssociation(TrackerConfig.from_json(job.tracker_json)), job.chunk_frames,
                                job.render)
    _stages = (job, segment, flow, associate)


def label_video(row: dict) -> list[dict]:
    """One video row (as the Ray graph's input rows) through every stage → the sink's summary rows."""
    from pipelines.label.sink import write_frames
    from pipelines.label.stages import batch_of, decode_chunk, plan_video, rows_of

    job, segment, flow, associate = _stages
    summaries = []
    try:
        for chunk in plan_video(row, job.chunk_frames, job.image_id_format):
            tracked = associate.associate(flow.flow(segment.segment(decode_chunk(chunk))))
            summaries.extend(rows_of(write_frames(batch_of([tracked]), job.root, job.run_id, job.write_png,
                                                  job.categories, job.settings, job.render)))
    finally:
        associate.pool.finish(str(row["video_id"]))
    return summaries


def wait_futures(futures: list[Future], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
    """``ray.wait``'s contract over futures: (up to ``num_returns`` done, the rest)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done = [f for f in futures if f.done()]
        left = None if deadline is None else deadline - time.monotonic()
        if len(done) >= num_returns or (left is not None and left <= 0):
            break
        wait([f for f in futures if not f.done()], timeout=left, return_when=FIRST_COMPLETED)
    done = done[:num_returns]
    chosen = set(done)
    return done, [f for f in futures if f not in chosen]


class LocalEngine:
    """The engine of one local pass (the Ray pass's is :class:`pipelines.label.passes.RayEngine`):
    summary rows of the videos, finalize jobs, their results. A process that dies stops the
    pass (:class:`BrokenProcessPool`): the videos still running are lost and run again next pass."""

    lost_errors = (BrokenProcessPool,)

    def __init__(self, job: LocalJob, workers: int):
        methods = multiprocessing.get_all_start_methods()
        # forkserver: the driver runs threads (the lease's heartbeat, I/O pools) that a forked
        # child could inherit mid-lock; the server process forks clean, lightly imported workers
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(job,))
        self.workers = workers
        self.wait = wait_futures

    def summaries(self, rows: list[dict]) -> Iterator[dict]:
        """The summary rows of every video, a video's all at once as it ends (at most two
        videos per process ahead, so the finalize jobs get their turn)."""
        rows = iter(rows)
        pending: set[Future] = set()
        while True:
            for row in rows:
                pending.add(self.pool.submit(label_video, row))
                if len(pending) >= 2 * self.workers:
                    break
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()  # BrokenProcessPool: the pass stops (passes.run_pass)

    def finalize(self, *args) -> Future:
        return self.pool.submit(finalize_video, *args)

    @staticmethod
    def result(future: Future):
        return future.result()

    def finish(self, video_id: str) -> None:
        """Nothing to tell: a process forgets a video's association when the video ends."""

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def local_plan(config, n_videos: int, root: str, run_id: str, categories, settings) -> tuple[dict, object, dict]:
    """(the passes' plan, the engine factory, what the run manifest records) of a local run of
    ``n_videos``: one process per core (fewer for fewer videos), the cores left over as each
    process's torch / OpenCV threads."""
    cores = local_cores()
    processes = max(1, min(cores, n_videos))
    threads = max(1, cores // processes)
    job = LocalJob(config.host_kwargs(), config.flow, dict(config.flow_options),
                   config.tracker_for(categories).to_json(), config.chunk_frames, config.image_id_format, root,
                   run_id, config.write_png, categories, settings, threads, config.render)
    plan = {"finalize_window": 2 * processes}
    return plan, lambda passes: LocalEngine(job, processes), {"executor": "local", "processes": processes,
                                                              "threads": threads}
