"""The driver's loop over the sink's summary rows, pass after pass.

A pass runs the graph (:func:`pipelines.label.graph.build_dataset`) over the videos still to
label and reads the sink's small summary rows (per video and batch). When every frame of a video
has been reported, the pass launches the video's finalize task (annotations, metrics against the
GT, overlay, commit: :func:`pipelines.label.finalize.finalize_video`). A video that lost a
process (an association actor's memory, a finalize worker) is run again by the next pass from its
last association checkpoint (:mod:`pipelines.label.faults`); one still lost after
:data:`~pipelines.label.faults.MAX_PASSES` passes fails with a row naming the losses.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from operators import fs
from pipelines.commit import OutputLayout, read_marker, remove_tree, undo_commit
from pipelines.label import graph
from pipelines.label.config import LabelConfig
from pipelines.label.faults import MAX_PASSES, VideoProgress, prepare_retry
from pipelines.label.finalize import VideoResult, VideoTask, finalize_video
from pipelines.label.stages import TIMED, describe
from pipelines.plan import VideoEntry


def finalize_lost(layout: OutputLayout, run_id: str, p: VideoProgress, exc: BaseException) -> VideoResult | None:
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


@dataclass
class GroundTruthIndex:
    """The run's GT as the passes need it: the evaluation settings (None: no evaluation),
    video_id → annotated :class:`~pipelines.label.finalize.GtFrame`\\ s and video_id →
    {frame_index: image_id}."""

    settings: object = None
    frames: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)


class LabelPasses:
    """Labels ``todo`` into ``layout`` with the graph, pass after pass (see module doc), and keeps
    what the run reports: ``results``, ``frames``, ``first_output``, ``frame_times``,
    ``resumed``, ``stage_cpu_seconds``."""

    def __init__(self, config: LabelConfig, layout: OutputLayout, run_id: str, plan: dict, categories,
                 gt: GroundTruthIndex, config_hash: str, checksums: dict, *, started: float, results: list,
                 log=print):
        self.config, self.layout, self.run_id, self.plan, self.categories = config, layout, run_id, plan, categories
        self.gt, self.config_hash, self.checksums, self.log = gt, config_hash, checksums, log
        self.started, self.results = started, results
        self.frames, self.first_output = 0, 0.0
        self.frame_times: list[tuple[float, int]] = []
        self.resumed: list[tuple[str, int]] = []
        self.stage_cpu_seconds = {s: 0.0 for s in TIMED}

    def run(self, todo: list[VideoEntry], bar) -> None:
        """Every pass over ``todo``; a result for each of its videos ends in ``results``."""
        import ray

        from pipelines.label.association_actor import CHECKPOINTS_DIR, CheckpointStore

        self.by_id = {e.video_id: e for e in todo}
        self.checkpoints = CheckpointStore(fs.join(self.layout.run_staging(self.run_id), CHECKPOINTS_DIR))
        self.bar = bar
        self.finalize = ray.remote(finalize_video).options(num_cpus=self.plan["cpus"]["sink"], max_retries=0)
        waiting = {e.video_id: VideoProgress(e.video_id) for e in todo}
        for attempt in range(MAX_PASSES):
            if attempt:
                self.log(f"{len(waiting)} video(s) lost a worker; pass {attempt + 1} resumes them from their "
                         "association checkpoints")
                for p in waiting.values():
                    self.resumed.append((p.video_id, prepare_retry(self.layout, self.run_id, p,
                                                                   self.checkpoints.boundaries(p.video_id))))
            waiting = self.run_pass(waiting)
            if not waiting:
                break
        for p in waiting.values():
            remove_tree(self.layout.staging(self.run_id, p.video_id))
            self.results.append(VideoResult(p.video_id, "failed", len(p.frames), stage=p.lost_stage,
                                            error=p.lost_error()))
            bar.update(1)

    def run_pass(self, waiting: dict[str, VideoProgress]) -> dict[str, VideoProgress]:
        """One pass of the graph over ``waiting``; returns the videos it lost (see faults)."""
        import ray

        from pipelines.label.association_actor import AssociationPool

        config, layout, run_id, plan, bar = self.config, self.layout, self.run_id, self.plan, self.bar
        finalize = self.finalize
        pool = AssociationPool(plan["association_actors"], config.tracker_for(self.categories),
                               max_buffered_chunks=1 << 16,
                               checkpoint_dir=self.checkpoints.prefix,
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
                self.checkpoints.discard(p.video_id)
                self.results.append(VideoResult(p.video_id, "failed", len(p.frames), stage=p.stage, error=p.error))
                bar.update(1)
            else:
                entry, names = self.by_id[p.video_id], self.gt.names.get(p.video_id, {})
                image_ids = [names.get(i) or config.image_id(p.video_id, i) for i in range(p.frame_count)]
                task = VideoTask(p.video_id, entry.uri, entry.fingerprint.digest, p.frame_count, image_ids,
                                 self.gt.frames.get(p.video_id, []) if self.gt.settings else None, self.categories)
                pending[finalize.remote(layout.root, run_id, task, self.config_hash, self.checksums,
                                        self.gt.settings, config.write_png, config.write_overlay,
                                        config.review)] = p

        def collect(timeout: float) -> None:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout) if pending else ([], [])
            for ref in done:
                p = pending.pop(ref)
                try:
                    self.results.append(ray.get(ref))
                    self.checkpoints.discard(p.video_id)  # done with, committed or failed
                except ray.exceptions.RayError as exc:  # its worker died: it is not retried blindly
                    result = finalize_lost(layout, run_id, p, exc)
                    if result is None:
                        lost[p.video_id] = p
                        continue
                    self.results.append(result)
                bar.update(1)

        rows = [{"video_id": v, "uri": self.by_id[v].uri, "gt_image_ids": json.dumps(self.gt.names.get(v, {})),
                 "resume_from": p.resume_from} for v, p in waiting.items()]
        try:
            gone = ""
            try:
                for summary in graph.build_dataset(rows, config, layout.root, run_id, pool, plan,
                                                   self.categories).iter_rows():
                    self.first_output = self.first_output or time.perf_counter() - self.started
                    for s in TIMED:
                        self.stage_cpu_seconds[s] += float(summary[f"t_{s}"])
                    p = running.get(str(summary["video_id"]))
                    if p is None:  # a row of a video already closed in this pass
                        continue
                    self.frames += p.add(summary)
                    self.frame_times.append((time.perf_counter() - self.started, self.frames))
                    if p.error or p.complete:
                        close(p)
                    collect(0)
                    bar.set_postfix(failed=sum(r.status == "failed" for r in self.results),
                                    fps=f"{self.frames / max(time.perf_counter() - self.started, 1e-9):.1f}")
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
