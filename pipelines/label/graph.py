"""The Ray Data graph of a labelling run and the resources of its stages.

::

    videos ─ plan+decode (CPU tasks) ─ segment (model actor pool; 1 GPU each when the cluster
    has GPUs) ─ flow (actor pool) ─ associate (per-video actors, sharded by video id, chunks
    in frame order, ObjectRefs) ─ sink (staging: segments table, frame times, the annotated
    frames' contingency tables vs GT, PNGs, overlay frames) ─► summary rows

Ray Data streams chunks through the stages with backpressure, so the workers' memory is bounded
by the blocks in flight, not by the corpus. Ray Data and Ray keep state per block in the process
that runs an execution (its statistics until the execution ends, and native memory of Ray's core
worker for as long as the process lives), so a pass runs as one execution per window of videos
(:func:`execution_windows`), each in a short-lived sub-driver process (:func:`window_summaries`, a
Ray task) that exits when its window is done; the driver only reads the summary rows, in batches
(``tests/benchmarks/README.md``, ``bench_label_window.py``). The stages themselves are in
:mod:`pipelines.label.stages`; what the driver does with the sink's rows is :mod:`pipelines.label.passes`.
"""
from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
import warnings
from typing import Iterable, Iterator, NamedTuple

from pipelines.label.config import LabelConfig
from pipelines.label.faults import MAX_TASK_RETRIES
from pipelines.label.sink import write_frames
from pipelines.label.stages import AssociateChunks, FlowChunks, SegmentChunks, decode_chunk, plan_video

FEEDER_CPUS = 0.1  # the AssociateChunks replicas only wait on their association actor
# A lost process costs a retry, never the run (Ray Data's defaults are the same but unbounded:
# a chunk that kills its worker every time would be retried forever).
TASK_FAULTS = {"max_retries": MAX_TASK_RETRIES}
ACTOR_FAULTS = {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES}
BLOCKS_PER_SLOT = 4
"""Input blocks per plan+decode slot (at least): a slot that finishes early finds another block."""
VIDEOS_PER_BLOCK = 64
"""Videos per input block (at most): a plan+decode task whose worker is lost runs again from its
block's first video, so a block bounds the work a lost worker costs."""
WINDOW_VIDEOS_PER_CPU = 64
MIN_WINDOW_VIDEOS = 256
MAX_WINDOW_VIDEOS = 2048
"""Videos per execution of the graph (:func:`execution_window_size`): 256 up to 4 CPUs, 2,048
from 32 CPUs on; what a sub-driver holds of an execution is at most the window's."""
SUMMARY_BATCH_ROWS = 64
SUMMARY_BATCH_SECONDS = 0.2
"""A sub-driver sends the driver its summary rows in lists of up to :data:`SUMMARY_BATCH_ROWS`,
each at the latest when its first row is :data:`SUMMARY_BATCH_SECONDS` old (:func:`in_lists`):
the driver owns one small object per list, not one per row, and no row waits for the next."""
SUMMARY_BATCHES_AHEAD = 2
"""Lists a sub-driver may send ahead of the driver (Ray's generator backpressure): a driver that
stops reading (its finalize window is full) stops the sub-driver, and so the graph."""


def stage_plan(config: LabelConfig, n_videos: int, choice=None) -> dict:
    """Actor pools (min, max), GPU requests and logical CPUs per stage from what the cluster
    offers and what ``--gpus`` asks (``choice``: a :class:`cluster.gpus.GpuChoice`, read from the
    connected cluster when None).

    Model actor pools autoscale (Ray Data adds actors up to the max while work waits, and the
    cluster's autoscaler adds nodes for actors that do not fit) where the cluster can grow; on a
    cluster that cannot (the local embedded Ray) they start at their max. The actors hold their
    CPUs for the whole run; if the most of them and one decode and one sink task would not fit in
    the cluster's CPUs, every stage's share is scaled down to fit (else an actor never starts and
    the run waits forever). Logical CPUs only order the scheduling; the processes still share the
    physical cores.
    """
    import ray

    from cluster.gpus import gpu_choice

    choice = choice or gpu_choice(config.resources.gpus)
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1)), int(total.get("GPU", 0))
    r = config.resources
    # one GPU per actor: as many actors as GPUs the cluster can have (None: no bound known)
    gpu_max = max(1, choice.gpus_max) if choice.gpus_max is not None else None
    # without GPUs the model dominates: ~3/4 of the cores segment, the rest compute flow
    segment_max = r.segment_actors or (gpu_max if choice.use_gpus else max(1, int(cpus) - int(cpus) // 4))
    flow_max = r.flow_actors or max(1, int(cpus) // 4)
    plan = {"gpus": gpus, "use_gpus": choice.use_gpus, "gpu_choice": choice.to_json(),
            "segment_actors": (1 if choice.can_grow else segment_max, segment_max),
            "flow_actors": (1 if choice.can_grow else flow_max, flow_max),
            "association_actors": r.association_actors or max(1, min(n_videos, max(1, int(cpus) // 2))),
            # Fractional CPUs would let Ray start 4-5 decode and sink tasks per core, each in a
            # worker process of its own that first imports numpy, OpenCV, Arrow (~1-2 s of CPU
            # each): on a small machine that start-up costs more than the decoding. One task per
            # two cores keeps the decoder ahead of the models (decode is ~2 % of operator time).
            "task_concurrency": max(1, int(cpus) // 2),
            "finalize_window": finalize_window_size(cpus),
            "window_videos": execution_window_size(cpus) if r.window_videos is None else r.window_videos}
    shares = {"decode": r.decode_cpus, "segment": r.segment_cpus, "flow": r.flow_cpus,
              "associate": r.associate_cpus, "feeder": FEEDER_CPUS, "sink": r.sink_cpus}
    held = ((0 if choice.use_gpus else segment_max * shares["segment"]) + flow_max * shares["flow"]
            + plan["association_actors"] * (shares["associate"] + shares["feeder"]) + shares["decode"]
            + 2 * shares["sink"])
    scale = min(1.0, 0.95 * cpus / held)
    plan["cpus"] = {stage: round(share * scale, 4) for stage, share in shares.items()}
    if choice.use_gpus:  # a GPU actor needs little CPU; never let it crowd out the CPU stages
        plan["cpus"]["segment"] = min(plan["cpus"]["segment"], 0.1 * cpus / max(1, gpus, segment_max or 1))
    return plan


def input_blocks(n_videos: int, slots: int, isolate: bool = False) -> int:
    """How many Ray Data blocks the video rows of a pass are split into (each block is one
    plan+decode task that plans and decodes its videos one after another, streaming their chunks
    out as it goes): enough to keep each of the ``slots`` plan+decode tasks busy
    (:data:`BLOCKS_PER_SLOT` per slot), with at most :data:`VIDEOS_PER_BLOCK` videos each, never
    more blocks than videos. So 100,000 videos are 1,563 blocks, not 100,000 blocks and tasks.

    A video whose input is bad fails in its own rows (the stages turn exceptions into failure
    rows), whatever block it shares. A video that kills its process every time takes its block's
    later videos down with it for the pass; those come back lost and the next pass runs them
    again with ``isolate`` (one video per block; a later pass has only the lost videos), so the
    bad video still fails alone."""
    if n_videos < 1:
        return 1
    if isolate:
        return n_videos
    return min(n_videos, max(BLOCKS_PER_SLOT * max(1, slots), -(-n_videos // VIDEOS_PER_BLOCK)))


def execution_window_size(cpus: float) -> int:
    """Videos per execution of the graph (:func:`execution_windows`): :data:`WINDOW_VIDEOS_PER_CPU`
    per CPU of the cluster, at least :data:`MIN_WINDOW_VIDEOS`, at most :data:`MAX_WINDOW_VIDEOS`."""
    return int(min(MAX_WINDOW_VIDEOS, max(MIN_WINDOW_VIDEOS, WINDOW_VIDEOS_PER_CPU * cpus)))


def execution_windows(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """The video rows of a pass in consecutive windows of at most ``size`` videos (0: one window
    of them all), each one execution of the graph (:class:`pipelines.label.passes.RayEngine`),
    taken from ``rows`` only once the window before has run (``rows`` may be a generator).

    Why: until an execution ends, Ray Data keeps in the process that runs it every operator's
    statistics of each block it passed on (``MapOperator._output_blocks_stats``, one per chunk
    per stage; Ray issue 66016), and that process, which owns every block, holds native state per
    block in Ray's core worker (small blocks inline in its memory store): with one chunk per
    block, 45-85 KiB per video for as long as the execution runs
    (``tests/benchmarks/bench_label_window.py``). An execution per window frees the statistics at
    the window's end (measured in the driver: +80 → +21 KiB per video with 2-frame clips; the
    rest is native memory of Ray's core worker that outlives executions).
    The price is a start of the stages' actors (model loading) and a pipeline drained per window:
    a window holds many videos, so it is small against the window's work.

    What the executions leave behind in the process that ran them (native memory of Ray's core
    worker, ~5.7 MiB per window of 256 videos, freed only when the process exits) is why each
    window runs in a sub-driver of its own (:func:`window_summaries`)."""
    if size < 0:
        raise ValueError(f"a window holds at least one video, not {size}")
    rows = iter(rows)
    while window := list(itertools.islice(rows, size or None)):
        yield window


def window_summaries(rows: list[dict], config: LabelConfig, root: str, run_id: str, pool, plan: dict,
                     categories=None, settings=None, blocks: int | None = None,
                     context=None) -> Iterator[list[dict]]:
    """The sub-driver of one window: runs :func:`build_dataset` over ``rows`` (in ``blocks`` input
    blocks, decided by the driver) in this process and yields the sink's summary rows in lists
    (:data:`SUMMARY_BATCH_ROWS`, :data:`SUMMARY_BATCH_SECONDS`). ``context``: the driver's Ray Data
    settings (:func:`ray_data_settings`, which the driver applies; None: this process's).

    :class:`pipelines.label.passes.RayEngine` runs it as a Ray task (streaming generator,
    ``max_calls=1``) per window, so the execution, the blocks it owns (every block of the graph,
    its small ones in this process's memory) and what Ray's core worker keeps of them live in a
    worker process that exits when the window is done: the driver's memory no longer grows with
    the windows it ran (``tests/benchmarks/bench_label_window.py``). The association actors
    (``pool``, made by the driver) serve every window; the stages' actors are this process's and
    go with it. If this process dies, the task fails: the driver closes the window's videos as
    lost and the next pass resumes them (:mod:`pipelines.label.faults`)."""
    import ray

    with ray.data.DataContext.current(context or ray.data.DataContext.get_current()):
        dataset = build_dataset(rows, config, root, run_id, pool, plan, categories, settings, blocks)
        yield from in_lists(dataset.iter_rows(), SUMMARY_BATCH_ROWS, SUMMARY_BATCH_SECONDS)


class _Raised(NamedTuple):
    error: BaseException


def in_lists(rows: Iterator[dict], size: int, seconds: float) -> Iterator[list[dict]]:
    """``rows`` in lists of at most ``size``, each sent once it is full or its first row is
    ``seconds`` old, whether or not another row comes (a thread reads ``rows``, at most ``size``
    ahead): a row never waits for the next one, nor for the end of the execution. If ``rows``
    raises, the rows it did deliver are sent first (their writes are staged), then the error."""
    ahead: queue.Queue = queue.Queue(maxsize=size)
    end = object()

    def read() -> None:
        try:
            for row in rows:
                ahead.put(row)
        except BaseException as exc:  # raised in the reader: the caller raises it
            ahead.put(_Raised(exc))
        else:
            ahead.put(end)

    threading.Thread(target=read, name="summary-rows", daemon=True).start()
    batch: list[dict] = []
    due = 0.0
    while True:
        try:
            item = ahead.get(timeout=max(0.0, due - time.monotonic()) if batch else None)
        except queue.Empty:  # the list's first row is due
            yield batch
            batch = []
            continue
        if item is end or isinstance(item, _Raised):
            if batch:
                yield batch
            if item is end:
                return
            raise item.error
        if not batch:
            due = time.monotonic() + seconds
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []


def finalize_window_size(cpus: float) -> int:
    """Finalize tasks the driver keeps in flight (:class:`pipelines.label.passes.FinalizeWindow`):
    enough to keep every CPU of the cluster busy with them (four per CPU; a finalize asks for a
    fraction of one), at least 16, at most 1024 (one collection looks at the whole window)."""
    return int(min(1024, max(16, 4 * cpus)))


def segment_stage_options(config: LabelConfig, plan: dict) -> dict:
    """``map_batches`` arguments of the segmentation stage: an autoscaling actor pool, one GPU per
    actor when the plan asks for GPUs (Ray then sets each actor's CUDA_VISIBLE_DEVICES to its own id)."""
    return {"fn_constructor_kwargs": {"host_kwargs": config.host_kwargs()}, "batch_size": 1,
            "compute": actor_pool(plan["segment_actors"]),
            "num_cpus": plan["cpus"]["segment"], "num_gpus": 1 if plan["use_gpus"] else 0, **ACTOR_FAULTS}


def actor_pool(sizes: tuple[int, int | None]):
    """Ray Data's actor pool for (min, max) actors: fixed when they agree, else autoscaling
    (max None: no bound, the cluster's autoscaler decides)."""
    import ray

    low, high = sizes
    if low == high:
        return ray.data.ActorPoolStrategy(size=low)
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


@contextlib.contextmanager
def ray_data_settings(progress: bool) -> Iterator[None]:
    """This process's Ray Data settings for a labelling run, restored afterwards, also when
    the run raises (they are process-wide: a notebook's next dataset would inherit them)."""
    import ray

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.target_max_block_size, context.max_errored_blocks
    # One chunk per block: actor pools receive work by block, so a block holding all of a
    # video's chunks would go to one model actor while the others wait. A block whose task failed
    # for good (its worker lost MAX_TASK_RETRIES + 1 times) is dropped, not the run: its video
    # comes back incomplete and the next pass retries it (pipelines/label/faults.py).
    context.enable_progress_bars, context.target_max_block_size, context.max_errored_blocks = progress, 1, -1
    try:
        yield
    finally:
        context.enable_progress_bars, context.target_max_block_size, context.max_errored_blocks = saved


def build_dataset(rows: list[dict], config: LabelConfig, root: str, run_id: str, pool, plan: dict,
                  categories=None, settings=None, blocks: int | None = None):
    """The Ray Data graph from video rows to the sink's summary rows (lazy: nothing runs yet);
    ``categories``: the model's classes (default Cityscapes'); ``settings``: the evaluation's
    (None: no GT), with which the sink stages each annotated frame's contingency table. The rows
    go into ``blocks`` Ray Data blocks (:func:`input_blocks`; None: as in a first pass).

    Every stage survives the loss of its process: tasks run again, actors restart and get
    their calls again (:data:`TASK_FAULTS`, :data:`ACTOR_FAULTS`; see pipelines/label/faults.py)."""
    import ray

    # Ray 2.60 deprecates passing max_retries / max_restarts this way but has no other way yet.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    cpus = plan["cpus"]
    tasks = ray.data.TaskPoolStrategy(size=plan["task_concurrency"])
    blocks = input_blocks(len(rows), plan["task_concurrency"]) if blocks is None else blocks
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.flat_map(plan_video, fn_kwargs={"chunk_frames": config.chunk_frames,
                                            "image_id_format": config.image_id_format}, num_cpus=cpus["decode"],
                     compute=tasks, **TASK_FAULTS)
    ds = ds.map(decode_chunk, num_cpus=cpus["decode"], compute=tasks, **TASK_FAULTS)
    ds = ds.map_batches(SegmentChunks, **segment_stage_options(config, plan))
    ds = ds.map_batches(FlowChunks, fn_constructor_kwargs={"flow": config.flow, "options": config.flow_options},
                        batch_size=1, compute=actor_pool(plan["flow_actors"]),
                        num_cpus=cpus["flow"], **ACTOR_FAULTS)
    ds = ds.map_batches(AssociateChunks, fn_constructor_kwargs={"pool": pool, "chunk_frames": config.chunk_frames,
                                                               "render": config.render},
                        batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=plan["association_actors"]), num_cpus=cpus["feeder"],
                        **ACTOR_FAULTS)
    return ds.map_batches(write_frames, fn_kwargs={"root": root, "run_id": run_id, "write_png": config.write_png,
                                                   "categories": categories, "settings": settings,
                                                   "render": config.render},
                          batch_size=1, num_cpus=cpus["sink"], compute=tasks, **TASK_FAULTS)

