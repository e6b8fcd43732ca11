"""``label``: the labelling run, from the corpus to the committed outputs.

::

    the door (models, corpus, GT checked; nothing touched yet) ─ the lease ─ recovery of a killed
    run ─ what to skip (commit markers vs input fingerprints and the config hash) ─ passes of the
    Ray Data graph (graph.py) whose summary rows the driver turns into per-video finalize tasks
    (passes.py, finalize.py) ─ run manifest, pred.json, metrics over the committed videos (outputs.py)

Videos whose commit marker matches their input fingerprint and the config hash are skipped
(``force`` reprocesses them); every output is staged and committed per video
(:mod:`pipelines.commit`), so a killed run, rerun, ends with one complete output per video.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from operators import fs
from operators.formats.categories import check_against_gt
from operators.ids import IdError, printable, video_key
from operators.metrics.report import EvaluationReport
from operators.metrics.video import EvaluationSettings
from pipelines.commit import CommitMarker, OutputLayout, committed_markers, is_current, recover, remove_run_staging
from pipelines.label.config import LabelConfig, check_models
from pipelines.label.finalize import VideoResult
from pipelines.label.ground_truth import RunGroundTruth
from pipelines.label.local import choose_executor, local_plan
from pipelines.label.outputs import aggregate_metrics, write_predictions_json, write_run_manifest
from pipelines.label.passes import GroundTruthIndex, LabelPasses, RunTally
from pipelines.lease import Lease, LeaseLostError, new_run_id
from pipelines.migrate import check_layout_version
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


def evaluation_settings(config: LabelConfig, categories) -> EvaluationSettings:
    return EvaluationSettings(categories, tuple(config.ks), config.stride)


def _unusable_ids(video_ids: list[str]) -> dict[str, str]:
    """video_id → why it cannot name a path (:mod:`operators.ids`), for the ids that cannot."""
    errors = {}
    for video_id in video_ids:
        try:
            video_key(video_id)
        except IdError as exc:
            errors[video_id] = str(exc)
    return errors


def split_skipped(entries: list, markers: dict[str, CommitMarker], config_hash: str,
                  force: bool = False) -> tuple[list, list[VideoResult]]:
    """(the entries to label, the results of those skipped): an entry is skipped when its commit
    marker is of its input fingerprint and this config hash (never with ``force``). One dict
    lookup per entry."""
    todo, skipped = [], []
    for entry in entries:
        marker = markers.get(entry.video_id)
        if not force and is_current(marker, entry.fingerprint.digest, config_hash):
            skipped.append(VideoResult(entry.video_id, "skipped", int(marker.counts.get("frames", 0))))
        else:
            todo.append(entry)
    return todo, skipped


def label(input_uri: str, output_uri: str, config: LabelConfig, *, address: str | None = None, force: bool = False,
          progress: bool = True, only_videos: list[str] | None = None, log=print,
          lease: Lease | None = None, keep_cache: bool = False, publish_all: bool = False) -> LabelRun:
    """Label every video of ``input_uri`` into ``output_uri`` (see module doc).

    ``metrics/`` covers the committed videos of this corpus, or with ``publish_all`` every
    committed video of the output (``nightly``); ``pred.json`` always covers every one.

    The run holds the output root's lease (:mod:`pipelines.lease`) from before it changes
    anything until it returns; a caller that already holds it (``nightly``) passes ``lease``.
    Raises :class:`~pipelines.lease.LeaseHeldError` when another live run holds the output.
    Local copies of remote videos go to the run's own private cache, removed at the end
    unless ``keep_cache`` (:func:`operators.fs.run_cache`).
    """
    # the door: everything the command is given is checked here, before the output is touched
    # and before Ray starts (an InputError from here ends the command with exit code 2)
    check_models(config)
    choose_executor(config.resources.executor, address, 0)  # --executor local with --address: exit 2 here
    entries = discover(input_uri)
    if only_videos is not None:
        wanted = set(only_videos)
        entries = [e for e in entries if e.video_id in wanted]
    options = {"address": address, "force": force, "progress": progress, "log": log, "publish_all": publish_all}
    with contextlib.ExitStack() as stack:
        # the GT is checked at the door too, and never held whole: a GT JSON is split per video as
        # a stream (every record checked), a table listed (pipelines/label/ground_truth.py)
        gt = stack.enter_context(RunGroundTruth.open(config.gt_json, config.gt_dir,
                                                     {e.video_id: e.gt for e in entries if e.gt}))
        if lease is None:
            lease = stack.enter_context(Lease(output_uri, new_run_id(), command="tubeflow label"))
        stack.enter_context(fs.run_cache(lease.run_id, keep=keep_cache))
        return _label_holding(input_uri, entries, output_uri, config, lease=lease, gt=gt, **options)


def _label_holding(input_uri: str, entries: list[VideoEntry], output_uri: str, config: LabelConfig, *,
                   address: str | None, force: bool, progress: bool, log, lease: Lease, gt: RunGroundTruth,
                   publish_all: bool = False) -> LabelRun:
    """:func:`label` once the output's lease is held."""
    from tqdm import tqdm

    from pipelines.label.graph import stage_plan

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
    settings = evaluation_settings(config, gt.categories) if gt.categories is not None else None
    if settings is not None:
        check_against_gt(categories, settings.categories, config.model or "the built-in model")
    todo, skipped = split_skipped(entries, committed_markers(layout), config_hash, force)
    tally = RunTally(started)
    for result in skipped:
        tally.add_result(result)
    id_errors = _unusable_ids([e.video_id for e in todo])
    for video_id, error in id_errors.items():
        tally.add_result(VideoResult(video_id, "failed", stage="plan", error=error))
    todo = [e for e in todo if e.video_id not in id_errors]
    model_resources = None  # what the model stages asked Ray for, and why (run manifest)
    executor = choose_executor(config.resources.executor, address, len(todo), config.resources.gpus)
    try:
        # each video to label gets a reference to its GT (a GT JSON's videos: a document each, in
        # the run's staging); the tasks read it, a video whose GT cannot be read fails alone
        refs = gt.refs([e.video_id for e in todo], layout.run_staging(run_id)) if todo else {}
        passes = LabelPasses(config, layout, run_id, {}, categories, GroundTruthIndex(settings, refs),
                             config_hash, checksums, tally, log=log)
        with _ray_for_work(bool(todo) and executor == "ray", address, progress):
            if todo and executor == "ray":
                passes.plan = plan = stage_plan(config, len(todo))
                model_resources = {"executor": "ray", **{key: plan[key] for key in ("gpu_choice", "segment_actors",
                                                                                    "flow_actors")}}
                log(f"model stages: {plan['gpu_choice']['reason']}; segmentation actors {plan['segment_actors']}, "
                    f"flow actors {plan['flow_actors']} (min, max)")
            elif todo:
                passes.plan, passes.engine, model_resources = local_plan(config, len(todo), layout.root, run_id,
                                                                         categories, settings)
                log(f"local run, no Ray (--executor {config.resources.executor}): {model_resources['processes']} "
                    f"process(es) x {model_resources['threads']} thread(s)")
            if todo:
                with tqdm(total=len(todo), unit="video", desc="videos", disable=not progress) as bar:
                    passes.run(todo, bar)
                remove_run_staging(layout, run_id)  # rows of failed videos that came late
            # inside the run's Ray session, if it has one: the metric sums are then Ray tasks
            report = _publish(layout, lease, config, settings, entries, tally.results, publish_all)
    finally:
        gt.remove_documents()  # also when the run fails
    results = tally.results
    seconds = time.perf_counter() - started
    run = LabelRun(run_id, sorted(results, key=lambda r: r.video_id), seconds, tally.frames,
                   tally.stage_cpu_seconds, report, tally.first_output, tally.frame_times, passes.resumed)
    write_run_manifest(layout, run_id, {"input": str(input_uri), "output": layout.root, "config": config.to_json(),
                                        "config_hash": config_hash, "model_checksums": checksums,
                                        "seconds": seconds, "frames": tally.frames,
                                        "stage_cpu_seconds": tally.stage_cpu_seconds,
                                        "resumed": passes.resumed, "sources": video_sources(entries),
                                        "model_resources": model_resources},
                       run.results)
    return run


def _publish(layout: OutputLayout, lease, config: LabelConfig, settings, entries: list[VideoEntry],
             results: list[VideoResult], publish_all: bool):
    """The run-level outputs over the committed videos (metrics/, pred.json, review index);
    the report, or None without GT."""
    if lease.lost:
        raise LeaseLostError(lease.lost)
    lease.check_holder()  # publishing must cover only what this holder committed
    report = None
    if settings is not None or config.write_png or config.review or config.write_overlay:
        # one fresh listing and read of the markers (in parallel) for everything published here
        published = committed_markers(layout)
        if settings is not None:
            report = aggregate_metrics(layout, settings, None if publish_all else [e.video_id for e in entries],
                                       published)
        if config.write_png:
            write_predictions_json(layout, published)
        if config.review or config.write_overlay:
            write_review_outputs(layout, entries, config, results, published)
    return report


@contextlib.contextmanager
def _ray_for_work(needed: bool, address: str | None, progress: bool):
    """Ray and Ray Data's settings for the run's work; none when every video is skipped (a
    rerun over an unchanged corpus, a nightly with nothing new) — Ray's start-up is seconds."""
    if not needed:
        yield
        return
    from cluster.connect import ray_session
    from pipelines.label.graph import ray_data_settings

    with ray_session(address), ray_data_settings(progress):
        yield


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
