"""``label``: the streaming labelling graph on Ray Data.

::

    videos ─ plan+decode (CPU tasks) ─ segment (model actor pool; 1 GPU each when the cluster
    has GPUs) ─ flow (actor pool) ─ associate (per-video actors, sharded by video id, chunks
    in frame order, ObjectRefs) ─ sink (staging: segments table, PNGs) ─► driver: per-video
    finalize task (annotations, metrics vs GT, overlay, commit) ─► run manifest, pred.json,
    metrics over the committed videos

Ray Data streams chunks through the stages with backpressure, so memory is bounded by the
blocks in flight, not by the corpus. The driver sees only the sink's small summary rows
(per video and batch); it launches a video's finalize task once every frame of it has been
reported. Videos whose commit marker matches their input fingerprint and the config hash are
skipped (``force`` reprocesses them); every output is staged and committed per video
(:mod:`pipelines.commit`), so a killed run, rerun, ends with one complete output per video.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

from operators import fs
from operators.errors import InputError
from operators.formats.categories import check_against_gt
from operators.ids import IdError, printable, video_key
from operators.formats.vps_layout import read_ground_truth
from operators.metrics.report import EvaluationReport
from operators.metrics.video import EvaluationSettings
from pipelines.commit import (OutputLayout, committed_markers, is_current, read_marker, recover, remove_run_staging,
                              remove_tree, undo_commit)
from pipelines.label.config import LabelConfig, check_models
from pipelines.label.faults import MAX_PASSES, MAX_TASK_RETRIES, VideoProgress, prepare_retry
from pipelines.label.finalize import GtFrame, VideoResult, VideoTask, finalize_video
from pipelines.label.outputs import aggregate_metrics, write_predictions_json, write_run_manifest
from pipelines.lease import Lease, LeaseLostError, new_run_id
from pipelines.migrate import check_layout_version
from pipelines.label.stages import (TIMED, AssociateChunks, FlowChunks, SegmentChunks, decode_chunk, describe,
                                    plan_video, write_frames)
from pipelines.plan import VideoEntry, discover
from pipelines.review import video_sources, write_review_outputs


@dataclass
class LabelRun:
    """What a run did: per-video results, frames/s, operator seconds per stage, the report."""

    run_id: str
    results: list[VideoResult]
    seconds: float
    frames: int
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds inside each stage's operator, summed over every worker."""
    report: EvaluationReport | None = None
    first_output_seconds: float = 0.0
    """From the start of the run to the first row out of the sink: planning, Ray Data start-up,
    actor construction (model loading) and the first chunk's trip through every stage."""
    frame_times: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, frames labelled so far) at every row out of the sink."""
    resumed: list[tuple[str, int]] = field(default_factory=list)
    """(video, frame) of every video a later pass ran again after it lost a process, and the
    frame it resumed from (0: started over)."""

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def _progress_at(self, fraction: float) -> tuple[float, int]:
        """The first (seconds, frames done) at which ``fraction`` of the frames were done."""
        return next(p for p in self.frame_times if p[1] >= fraction * self.frames)

    def seconds_until(self, fraction: float) -> float:
        """Seconds from the start until ``fraction`` of the frames were done (``frames`` > 0)."""
        return self._progress_at(fraction)[0]

    def steady_frames_per_second(self, first: float = 0.2, last: float = 0.9) -> float:
        """Frames/s between the moments ``first`` and ``last`` of the frames were done: the
        throughput once the actors run, without start-up and the last videos' tail."""
        if self.frames == 0 or len(self.frame_times) < 2:
            return 0.0
        begin, end = self._progress_at(first), self._progress_at(last)
        return (end[1] - begin[1]) / (end[0] - begin[0]) if end[0] > begin[0] else 0.0


def _finalize_lost(layout: OutputLayout, run_id: str, p: VideoProgress, exc: BaseException) -> VideoResult | None:
    """The finalize task of a video died (its worker was lost, after or during its commit):
    the video's result when its commit point was reached, else None after undoing the partial
    commit and resetting the video to start over in the next pass."""
    marker = read_marker(layout, p.video_id)
    if marker is not None and marker.run_id == run_id:
        counts = marker.counts
        return VideoResult(p.video_id, "ok", int(counts.get("frames", 0)), int(counts.get("segments", 0)),
                           int(counts.get("tracks", 0)))
    undo_commit(layout, p.video_id)
    p.frames.clear()  # the commit may have moved staged files away: start the video over
    p.parts.clear()
    p.lose(f"finalize: {describe(exc)}", "finalize")
    return None


def evaluation_settings(config: LabelConfig, categories) -> EvaluationSettings:
    return EvaluationSettings(categories, tuple(config.ks), config.stride)


def _gt_index(config: LabelConfig, entries: list[VideoEntry]):
    """The ground truth of the run: ``--gt`` for every video, and a manifest's per-video ``gt``
    (a GT JSON beside its ``panoptic/`` PNG dir) for its video.

    Returns (settings or None, video_id → annotated GtFrames, video_id → {frame_index:
    image_id}, video_id → error for a per-video GT that cannot be read).
    """
    sources, errors = [], {}
    if config.gt_json:
        sources.append((read_ground_truth(config.gt_json, config.gt_dir), None))
    for entry in entries:
        if entry.gt:
            try:
                sources.append((read_ground_truth(entry.gt, fs.join(entry.gt.rsplit("/", 1)[0], "panoptic")),
                                entry.video_id))
            except InputError as exc:
                errors[entry.video_id] = str(exc)
    if not sources:
        return None, {}, {}, errors
    annotated, named = {}, {}
    for gt, only in sources:
        videos = gt.videos()
        if only is not None:  # a per-video GT: that video's images, or all of a one-video GT
            videos = {only: videos.get(only) or (next(iter(videos.values())) if len(videos) == 1 else [])}
        for video_id, images in videos.items():
            named[video_id] = {image.frame_index: str(image.id) for image in images}
            annotated[video_id] = [GtFrame(image, gt.png_uri(image), gt.annotations[image.key].segments)
                                   for image in images if image.key in gt.annotations]
    return evaluation_settings(config, sources[0][0].categories), annotated, named, errors


def _unusable_ids(video_ids: list[str]) -> dict[str, str]:
    """video_id → why it cannot name a path (:mod:`operators.ids`), for the ids that cannot."""
    errors = {}
    for video_id in video_ids:
        try:
            video_key(video_id)
        except IdError as exc:
            errors[video_id] = str(exc)
    return errors


FEEDER_CPUS = 0.1  # the AssociateChunks replicas only wait on their association actor
# A lost process costs a retry, never the run (Ray Data's defaults are the same but unbounded:
# a chunk that kills its worker every time would be retried forever).
TASK_FAULTS = {"max_retries": MAX_TASK_RETRIES}
ACTOR_FAULTS = {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES}


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
            "task_concurrency": max(1, int(cpus) // 2)}
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
                  categories=None):
    """The Ray Data graph from video rows to the sink's summary rows (lazy: nothing runs yet);
    ``categories``: the model's classes (default Cityscapes').

    Every stage survives the loss of its process: tasks run again, actors restart and get
    their calls again (:data:`TASK_FAULTS`, :data:`ACTOR_FAULTS`; see pipelines/label/faults.py)."""
    import ray

    # Ray 2.60 deprecates passing max_retries / max_restarts this way but has no other way yet.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    cpus = plan["cpus"]
    tasks = ray.data.TaskPoolStrategy(size=plan["task_concurrency"])
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.flat_map(plan_video, fn_kwargs={"chunk_frames": config.chunk_frames,
                                            "image_id_format": config.image_id_format}, num_cpus=cpus["decode"],
                     compute=tasks, **TASK_FAULTS)
    ds = ds.map(decode_chunk, num_cpus=cpus["decode"], compute=tasks, **TASK_FAULTS)
    ds = ds.map_batches(SegmentChunks, **segment_stage_options(config, plan))
    ds = ds.map_batches(FlowChunks, fn_constructor_kwargs={"flow": config.flow, "options": config.flow_options},
                        batch_size=1, compute=actor_pool(plan["flow_actors"]),
                        num_cpus=cpus["flow"], **ACTOR_FAULTS)
    ds = ds.map_batches(AssociateChunks, fn_constructor_kwargs={"pool": pool}, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=plan["association_actors"]), num_cpus=cpus["feeder"],
                        **ACTOR_FAULTS)
    return ds.map_batches(write_frames, fn_kwargs={"root": root, "run_id": run_id, "write_png": config.write_png,
                                                   "categories": categories},
                          batch_size=1, num_cpus=cpus["sink"], compute=tasks, **TASK_FAULTS)


def label(input_uri: str, output_uri: str, config: LabelConfig, *, address: str | None = None, force: bool = False,
          progress: bool = True, only_videos: list[str] | None = None, log=print,
          lease: Lease | None = None, keep_cache: bool = False) -> LabelRun:
    """Label every video of ``input_uri`` into ``output_uri`` (see module doc).

    The run holds the output root's lease (:mod:`pipelines.lease`) from before it changes
    anything until it returns; a caller that already holds it (``nightly``) passes ``lease``.
    Raises :class:`~pipelines.lease.LeaseHeldError` when another live run holds the output.
    Local copies of remote videos go to the run's own private cache, removed at the end
    unless ``keep_cache`` (:func:`operators.fs.run_cache`).
    """
    # the door: everything the command is given is checked here, before the output is touched
    # and before Ray starts (an InputError from here ends the command with exit code 2)
    check_models(config)
    entries = discover(input_uri)
    if only_videos is not None:
        entries = [e for e in entries if e.video_id in set(only_videos)]
    options = {"address": address, "force": force, "progress": progress, "log": log}
    with contextlib.ExitStack() as stack:
        if lease is None:
            lease = stack.enter_context(Lease(output_uri, new_run_id(), command="tubeflow label"))
        stack.enter_context(fs.run_cache(lease.run_id, keep=keep_cache))
        return _label_holding(input_uri, entries, output_uri, config, lease=lease, **options)


def _label_holding(input_uri: str, entries: list[VideoEntry], output_uri: str, config: LabelConfig, *,
                   address: str | None, force: bool, progress: bool, log, lease: Lease) -> LabelRun:
    """:func:`label` once the output's lease is held."""
    import ray
    from tqdm import tqdm

    from cluster.connect import ray_session
    from pipelines.association_actor import CHECKPOINTS_DIR, AssociationPool, CheckpointStore

    started = time.perf_counter()
    run_id = lease.run_id
    layout = OutputLayout(str(output_uri).rstrip("/"))
    check_layout_version(layout)
    if lease.stopped:
        log(f"stopped {len(lease.stopped)} process(es) a killed run left writing to this output")
    undone = recover(layout, run_id)
    if undone:
        log(f"recovered from an interrupted run: partial outputs of {len(undone)} video(s) removed")
    checksums = config.model_checksums()
    config_hash = config.config_hash(checksums)
    categories = config.model_spec().categories
    settings, gt_frames, gt_names, gt_errors = _gt_index(config, entries)
    if settings is not None:
        check_against_gt(categories, settings.categories, config.model or "the built-in model")
    markers = committed_markers(layout)
    todo = [e for e in entries if force or not is_current(markers.get(e.video_id), e.fingerprint.digest, config_hash)]
    results = [VideoResult(e.video_id, "skipped", int(markers[e.video_id].counts.get("frames", 0)))
               for e in entries if e not in todo]
    results += [VideoResult(e.video_id, "failed", stage="gt", error=gt_errors[e.video_id])
                for e in todo if e.video_id in gt_errors]
    todo = [e for e in todo if e.video_id not in gt_errors]
    id_errors = _unusable_ids([e.video_id for e in todo])
    results += [VideoResult(video_id, "failed", stage="plan", error=error) for video_id, error in id_errors.items()]
    todo = [e for e in todo if e.video_id not in id_errors]
    stage_cpu_seconds = {s: 0.0 for s in TIMED}
    frames, first_output, frame_times, resumed = 0, 0.0, [], []
    model_resources = None  # what the model stages asked Ray for, and why (run manifest)
    with ray_session(address), ray_data_settings(progress):
        if todo:
            plan = stage_plan(config, len(todo))
            model_resources = {key: plan[key] for key in ("gpu_choice", "segment_actors", "flow_actors")}
            log(f"model stages: {plan['gpu_choice']['reason']}; segmentation actors {plan['segment_actors']}, "
                f"flow actors {plan['flow_actors']} (min, max)")
            checkpoints = CheckpointStore(fs.join(layout.run_staging(run_id), CHECKPOINTS_DIR))
            by_id = {e.video_id: e for e in todo}
            finalize = ray.remote(finalize_video).options(num_cpus=plan["cpus"]["sink"], max_retries=0)

            def run_pass(waiting: dict[str, VideoProgress]) -> dict[str, VideoProgress]:
                """One pass of the graph over ``waiting``; returns the videos it lost (see pipelines.label.faults)."""
                nonlocal frames, first_output
                pool = AssociationPool(plan["association_actors"], config.tracker_for(categories),
                                       max_buffered_chunks=1 << 16,
                                       checkpoint_dir=checkpoints.prefix,
                                       actor_options={"num_cpus": plan["cpus"]["associate"]})
                running, lost, pending = dict(waiting), {}, {}

                def close(p: VideoProgress) -> None:
                    del running[p.video_id]
                    pool.finish(p.video_id)
                    if p.error and p.lost:
                        p.lose(f"{p.stage}: {p.error}", p.stage)
                        lost[p.video_id] = p
                    elif p.error:
                        remove_tree(layout.staging(run_id, p.video_id))
                        checkpoints.discard(p.video_id)
                        results.append(VideoResult(p.video_id, "failed", len(p.frames), stage=p.stage, error=p.error))
                        bar.update(1)
                    else:
                        entry, names = by_id[p.video_id], gt_names.get(p.video_id, {})
                        image_ids = [names.get(i) or config.image_id(p.video_id, i) for i in range(p.frame_count)]
                        task = VideoTask(p.video_id, entry.uri, entry.fingerprint.digest, p.frame_count, image_ids,
                                         gt_frames.get(p.video_id, []) if settings else None, categories)
                        pending[finalize.remote(layout.root, run_id, task, config_hash, checksums, settings,
                                                config.write_png, config.write_overlay, config.review)] = p

                def collect(timeout: float) -> None:
                    done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout) if pending else ([], [])
                    for ref in done:
                        p = pending.pop(ref)
                        try:
                            results.append(ray.get(ref))
                            checkpoints.discard(p.video_id)  # done with, committed or failed
                        except ray.exceptions.RayError as exc:  # its worker died: it is not retried blindly
                            result = _finalize_lost(layout, run_id, p, exc)
                            if result is None:
                                lost[p.video_id] = p
                                continue
                            results.append(result)
                        bar.update(1)

                rows = [{"video_id": v, "uri": by_id[v].uri, "gt_image_ids": json.dumps(gt_names.get(v, {})),
                         "resume_from": p.resume_from} for v, p in waiting.items()]
                try:
                    gone = ""
                    try:
                        for summary in build_dataset(rows, config, layout.root, run_id, pool, plan,
                                                     categories).iter_rows():
                            first_output = first_output or time.perf_counter() - started
                            for s in TIMED:
                                stage_cpu_seconds[s] += float(summary[f"t_{s}"])
                            p = running.get(str(summary["video_id"]))
                            if p is None:  # a row of a video already closed in this pass
                                continue
                            frames += p.add(summary)
                            frame_times.append((time.perf_counter() - started, frames))
                            if p.error or p.complete:
                                close(p)
                            collect(0)
                            bar.set_postfix(failed=sum(r.status == "failed" for r in results),
                                            fps=f"{frames / max(time.perf_counter() - started, 1e-9):.1f}")
                    except ray.exceptions.RayError as exc:  # the executor gave up (e.g. actors dying as they start)
                        gone = f"the pass stopped: {describe(exc)}"
                    for p in list(running.values()):  # frames that never came back: a process was lost
                        p.error = p.error or gone or f"only {len(p.frames)} of {p.frame_count} frames came back"
                        p.stage, p.lost = p.stage or "associate", True
                        close(p)
                    while pending:
                        collect(1.0)
                finally:
                    for actor in pool.actors:
                        ray.kill(actor)
                return lost

            with tqdm(total=len(todo), unit="video", desc="videos", disable=not progress) as bar:
                waiting = {e.video_id: VideoProgress(e.video_id) for e in todo}
                for attempt in range(MAX_PASSES):
                    if attempt:
                        log(f"{len(waiting)} video(s) lost a worker; pass {attempt + 1} resumes them from their "
                            "association checkpoints")
                        for p in waiting.values():
                            resumed.append((p.video_id, prepare_retry(layout, run_id, p,
                                                                      checkpoints.boundaries(p.video_id))))
                    waiting = run_pass(waiting)
                    if not waiting:
                        break
                for p in waiting.values():
                    remove_tree(layout.staging(run_id, p.video_id))
                    results.append(VideoResult(p.video_id, "failed", len(p.frames), stage=p.lost_stage,
                                               error=p.lost_error()))
                    bar.update(1)
            remove_run_staging(layout, run_id)  # rows of failed videos that came late
    if lease.lost:
        raise LeaseLostError(lease.lost)
    lease.check_holder()  # publishing below must cover only what this holder committed
    report = None
    if settings is not None:
        report = aggregate_metrics(layout, settings, [e.video_id for e in entries])
    if config.write_png:
        write_predictions_json(layout)
    if config.review or config.write_overlay:
        write_review_outputs(layout, entries, config, results)
    seconds = time.perf_counter() - started
    run = LabelRun(run_id, sorted(results, key=lambda r: r.video_id), seconds, frames, stage_cpu_seconds, report,
                   first_output, frame_times, resumed)
    write_run_manifest(layout, run_id, {"input": str(input_uri), "output": layout.root, "config": config.to_json(),
                                        "config_hash": config_hash, "model_checksums": checksums,
                                        "seconds": seconds, "frames": frames, "stage_cpu_seconds": stage_cpu_seconds,
                                        "resumed": resumed, "sources": video_sources(entries),
                                        "model_resources": model_resources},
                       run.results)
    return run


def summary_table(run: LabelRun) -> str:
    """The table printed at the end of a run: one line per video, then totals."""
    lines = [f"{'video':<24} {'status':<8} {'frames':>7} {'segments':>9} {'tracks':>7}  note"]
    for r in run.results:
        note = f"{r.stage}: {r.error}" if r.status == "failed" else \
            " ".join(f"{k}={v:.3f}" for k, v in r.metrics.items())
        lines.append(f"{printable(r.video_id):<24} {r.status:<8} {r.frames:>7} {r.segments:>9} {r.tracks:>7}  {note}")
    counts = {s: sum(r.status == s for r in run.results) for s in ("ok", "skipped", "failed")}
    lines.append(f"{len(run.results)} videos: {counts['ok']} labelled, {counts['skipped']} skipped (unchanged), "
                 f"{counts['failed']} failed; {run.frames} frames in {run.seconds:.1f} s "
                 f"({run.frames_per_second:.1f} frames/s end to end, {run.steady_frames_per_second():.1f} once started)")
    if run.resumed:
        lines.append(f"{len(run.resumed)} video(s) lost a worker and ran again, resumed at frames "
                     + ", ".join(f"{video}:{frame}" for video, frame in run.resumed))
    if run.report is not None:
        lines.append(f"VPQ {100 * run.report.vpq.vpq:.2f}  STQ {100 * run.report.stq['STQ']:.2f}")
    return "\n".join(lines)
