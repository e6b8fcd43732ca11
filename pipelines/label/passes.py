"""The driver's loop over the sink's summary rows, pass after pass.

A pass runs the graph (:func:`pipelines.label.graph.build_dataset`) over the videos still to
label and reads the sink's small summary rows (per video and batch); on Ray, one execution per
window of videos, each in a sub-driver process that streams the rows back (:class:`RayEngine`),
so the driver runs no Ray Data execution itself. When every frame of a video
has been reported, the pass launches the video's finalize task (annotations, metrics against the
GT, overlay, commit: :func:`pipelines.label.finalize.finalize_video`). A video that lost a
process (an association actor's memory, a finalize worker) is run again by the next pass from its
last association checkpoint (:mod:`pipelines.label.faults`); one still lost after
:data:`~pipelines.label.faults.MAX_PASSES` passes fails with a row naming the losses.

The driver's work per summary row is O(1), whatever the size of the corpus: the bookkeeping
(:class:`PassBook`, :class:`RunTally`) is dictionaries and counters, and the finalize tasks in
flight are a bounded :class:`FinalizeWindow` whose completions are collected by one
``ray.wait`` over the window every ``len(window)`` rows (or when it is full), never over every
task after every row. ``tests/benchmarks/bench_label_driver.py`` measures it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

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
    """The run's GT as the passes need it: the evaluation settings (None: no evaluation) and
    video_id → where the video's GT is (:class:`~pipelines.label.ground_truth.GtRef`: a small
    reference, the tasks read the GT themselves)."""

    settings: object = None
    refs: dict = field(default_factory=dict)


@dataclass
class RunTally:
    """What the run reports, kept up to date row by row in O(1): the results (and how many
    failed, counted as they come, not recounted), frames labelled, operator CPU per stage, the
    progress curve."""

    started: float
    results: list[VideoResult] = field(default_factory=list)
    failed: int = 0
    frames: int = 0
    first_output: float = 0.0
    frame_times: list[tuple[float, int]] = field(default_factory=list)
    stage_cpu_seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in TIMED})
    clock: Callable[[], float] = time.perf_counter

    def add_result(self, result: VideoResult) -> None:
        self.results.append(result)
        self.failed += result.status == "failed"

    def account(self, summary: dict) -> None:
        """The operator time of one summary row (every row counts, also of a closed video's)."""
        self.first_output = self.first_output or self.clock() - self.started
        for s in TIMED:
            self.stage_cpu_seconds[s] += float(summary[f"t_{s}"])

    def labelled(self, frames: int) -> None:
        self.frames += frames
        self.frame_times.append((self.clock() - self.started, self.frames))

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.clock() - self.started, 1e-9)


class PassBook:
    """The driver's account of one pass, without Ray: which videos are running, which the pass
    lost, and what becomes of a video whose last row came (:meth:`take`, O(1) per row).

    ``launch(progress)`` starts a complete video's finalize; ``discard(video_id)`` drops a failed
    video's staging and checkpoints; ``finish(video_id)`` tells the association it is done.

    The book takes ``waiting`` as its :attr:`running` (not a copy): a video leaves it as it closes,
    so what the driver holds of the pass's videos shrinks as they are labelled."""

    def __init__(self, waiting: dict[str, VideoProgress], tally: RunTally, launch: Callable[[VideoProgress], None],
                 discard: Callable[[str], None], finish: Callable[[str], None], done: Callable[[], None]):
        self.running = waiting
        self.lost: dict[str, VideoProgress] = {}
        self.tally, self.launch, self.discard, self.finish, self.done = tally, launch, discard, finish, done

    def take(self, summary: dict) -> None:
        """One summary row of the sink."""
        self.tally.account(summary)
        p = self.running.get(str(summary["video_id"]))
        if p is None:  # a row of a video already closed in this pass
            return
        self.tally.labelled(p.add(summary))
        if p.error or p.complete:
            self.close(p)

    def close(self, p: VideoProgress) -> None:
        del self.running[p.video_id]
        self.finish(p.video_id)
        if p.error and p.lost:
            p.lose(f"{p.stage}: {p.error}", p.stage)
            self.lost[p.video_id] = p
        elif p.error:
            self.discard(p.video_id)
            self.tally.add_result(VideoResult(p.video_id, "failed", len(p.frames), stage=p.stage, error=p.error))
            self.done()
        else:
            self.launch(p)

    def close_unfinished(self, why: str = "") -> None:
        """The rows stopped: the videos still running lost a process (their frames never came back)."""
        for p in list(self.running.values()):
            p.error = p.error or why or f"only {len(p.frames)} of {p.frame_count} frames came back"
            p.stage, p.lost = p.stage or "associate", True
            self.close(p)

    def finalized(self, p: VideoProgress, result: VideoResult | None) -> None:
        """A finalize task ended: its result, or None when it lost its process and the video must
        run again."""
        if result is None:
            self.lost[p.video_id] = p
            return
        self.tally.add_result(result)
        self.done()


class FinalizeWindow:
    """The finalize tasks in flight, at most ``limit``, and their collection at O(1) per row.

    ``wait(refs, num_returns, timeout)`` has ``ray.wait``'s contract (it takes O(len(refs))).
    :meth:`poll` waits over the window only once every ``len(window)`` calls, so a row costs
    O(1) amortised; :meth:`add` into a full window first blocks until one task is done (the
    driver then reads rows no faster than videos are finalized, and Ray Data's backpressure
    holds the graph). Returns of both: ``(handle, item)`` of the tasks that ended.
    """

    def __init__(self, limit: int, wait: Callable):
        if limit < 1:
            raise ValueError("the finalize window holds at least one task")
        self.limit, self.wait = limit, wait
        self.pending: dict = {}
        self._calls = 0

    def __len__(self) -> int:
        return len(self.pending)

    def _collect(self, num_returns: int, timeout: float | None) -> list[tuple]:
        self._calls = 0
        if not self.pending:
            return []
        done, rest = self.wait(list(self.pending), num_returns=num_returns, timeout=timeout)
        if done and rest and timeout != 0:  # one ended after a wait: take every other that did too
            more, _ = self.wait(rest, num_returns=len(rest), timeout=0)
            done = list(done) + list(more)
        return [(h, self.pending.pop(h)) for h in done]

    def add(self, handle, item) -> list[tuple]:
        ended = self._collect(1, None) if len(self.pending) >= self.limit else []
        self.pending[handle] = item
        return ended

    def poll(self) -> list[tuple]:
        self._calls += 1
        if self._calls < len(self.pending):
            return []
        return self._collect(len(self.pending), 0)

    def drain(self, timeout: float = 1.0) -> list[tuple]:
        """Wait (up to ``timeout`` seconds) for at least one task; what ended."""
        return self._collect(1, timeout) if self.pending else []


class LabelPasses:
    """Labels ``todo`` into ``layout`` with the graph, pass after pass (see module doc), and keeps
    what the run reports in :attr:`tally` and :attr:`resumed`. ``engine``: what runs a pass —
    :class:`RayEngine` (default) or, without Ray, :class:`pipelines.label.local.LocalEngine`."""

    def __init__(self, config: LabelConfig, layout: OutputLayout, run_id: str, plan: dict, categories,
                 gt: GroundTruthIndex, config_hash: str, checksums: dict, tally: RunTally, log=print,
                 engine: Callable[["LabelPasses"], object] | None = None):
        self.config, self.layout, self.run_id, self.plan, self.categories = config, layout, run_id, plan, categories
        self.gt, self.config_hash, self.checksums, self.tally, self.log = gt, config_hash, checksums, tally, log
        self.engine = engine or RayEngine  # a pass's engine, built per pass from this object
        self.resumed: list[tuple[str, int]] = []
        self.attempt = 0  # the pass running (0: the first)

    def run(self, todo: list[VideoEntry], bar) -> None:
        """Every pass over ``todo``; a result for each of its videos ends in the tally."""
        from pipelines.label.association_actor import CHECKPOINTS_DIR, CheckpointStore

        self.by_id = {e.video_id: e for e in todo}
        self.checkpoints = CheckpointStore(fs.join(self.layout.run_staging(self.run_id), CHECKPOINTS_DIR))
        self.bar = bar
        waiting = {e.video_id: VideoProgress(e.video_id) for e in todo}
        for attempt in range(MAX_PASSES):
            self.attempt = attempt
            if attempt:
                self.log(f"{len(waiting)} video(s) lost a worker; pass {attempt + 1} resumes them from their "
                         "association checkpoints (from their first frame where they have none)")
                for p in waiting.values():
                    self.resumed.append((p.video_id, prepare_retry(self.layout, self.run_id, p,
                                                                   self.checkpoints.boundaries(p.video_id))))
            waiting = self.run_pass(waiting)
            if not waiting:
                break
        for p in waiting.values():
            remove_tree(self.layout.staging(self.run_id, p.video_id))
            self.tally.add_result(VideoResult(p.video_id, "failed", len(p.frames), stage=p.lost_stage,
                                              error=p.lost_error()))
            bar.update(1)

    def _task(self, p: VideoProgress) -> VideoTask:
        entry = self.by_id[p.video_id]
        return VideoTask(p.video_id, entry.uri, entry.fingerprint.digest, p.frame_count, self.config.image_id_format,
                         self.gt.refs.get(p.video_id), self.categories)

    def _discard(self, video_id: str) -> None:
        remove_tree(self.layout.staging(self.run_id, video_id))
        self.checkpoints.discard(video_id)

    def run_pass(self, waiting: dict[str, VideoProgress]) -> dict[str, VideoProgress]:
        """One pass of the engine over ``waiting`` (emptied as its videos close); returns the
        videos it lost (see faults)."""
        config, layout, run_id, bar, tally = self.config, self.layout, self.run_id, self.bar, self.tally
        engine = self.engine(self)
        window = FinalizeWindow(self.plan["finalize_window"], engine.wait)

        def finished(ended: list[tuple]) -> None:
            for handle, p in ended:
                try:
                    result = engine.result(handle)
                    self.checkpoints.discard(p.video_id)  # done with, committed or failed
                except engine.lost_errors as exc:  # its worker died: it is not retried blindly
                    result = finalize_lost(layout, run_id, p, exc)
                book.finalized(p, result)

        def launch(p: VideoProgress) -> None:
            finished(window.add(engine.finalize(layout.root, run_id, self._task(p), self.config_hash, self.checksums,
                                                self.gt.settings, config.write_overlay, config.review), p))

        def done() -> None:
            bar.update(1)
            bar.set_postfix(failed=tally.failed, fps=f"{tally.frames_per_second:.1f}", refresh=False)

        # made as the engine takes them (a window's rows at a time: RayEngine; a video's: LocalEngine),
        # before any of their videos can close
        rows = ({"video_id": v, "uri": self.by_id[v].uri, "gt": self.gt.refs[v].to_text() if v in self.gt.refs else "",
                 "resume_from": waiting[v].resume_from} for v in list(waiting))
        book = PassBook(waiting, tally, launch, self._discard, engine.finish, done)
        try:
            gone = ""
            try:
                for summary in engine.summaries(rows):
                    book.take(summary)
                    finished(window.poll())
            except engine.lost_errors as exc:  # the executor gave up (e.g. actors dying as they start)
                gone = f"the pass stopped: {describe(exc)}"
            book.close_unfinished(gone)
            while len(window):
                finished(window.drain(1.0))
        finally:
            engine.close()
        return book.lost


WINDOWS_IN_DRIVER_ENV = "TUBEFLOW_LABEL_WINDOWS_IN_DRIVER"
"""Set to 1, :class:`RayEngine` runs each window's execution in the driver, as before the
sub-drivers (internal: the baseline of ``tests/benchmarks/bench_label_window.py``)."""


class RayEngine:
    """The engine of one pass on Ray: the graph (:func:`pipelines.label.graph.build_dataset`)
    with its association actors, finalize as Ray tasks (a run without Ray has
    :class:`pipelines.label.local.LocalEngine`; both have this shape).

    Each window's execution runs in a sub-driver, a Ray task of its own process
    (:func:`pipelines.label.graph.window_summaries`: ``max_calls=1``, so its worker exits when
    the window is done and takes the execution's state with it; no retry, no CPU of its own),
    whose summary rows stream back in lists; the driver keeps the association actors, which serve
    every window, and launches the finalize tasks. ``--window-videos 0`` is one sub-driver for
    the whole pass."""

    def __init__(self, passes: LabelPasses):
        import ray

        from pipelines.label.association_actor import AssociationPool

        self.passes, plan = passes, passes.plan
        self.pool = AssociationPool(plan["association_actors"], passes.config.tracker_for(passes.categories),
                                    checkpoint_dir=passes.checkpoints.prefix,
                                    actor_options={"num_cpus": plan["cpus"]["associate"]})
        self.task = ray.remote(finalize_video).options(num_cpus=plan["cpus"]["sink"], max_retries=0)
        self.window_task = ray.remote(num_cpus=0, max_calls=1, max_retries=0, num_returns="streaming")(
            graph.window_summaries).options(name="label_window",
                                            _generator_backpressure_num_objects=graph.SUMMARY_BATCHES_AHEAD)
        self.in_driver = os.environ.get(WINDOWS_IN_DRIVER_ENV) == "1"
        self.running = None  # the sub-driver of the window being read
        self.wait, self.get, self.lost_errors = ray.wait, ray.get, (ray.exceptions.RayError,)

    def summaries(self, rows: Iterable[dict]) -> Iterator[dict]:
        """The sink's summary rows of a pass over ``rows``, one execution of the graph per window
        of videos (:func:`pipelines.label.graph.execution_windows`), each in a sub-driver (see the
        class doc). A pass after the first puts each video in an input block of its own
        (:func:`pipelines.label.graph.input_blocks`: it runs the videos that lost a process, and
        one that kills its process must not take others along).

        A sub-driver that dies, or whose execution gave up on a lost process, raises a
        :class:`ray.exceptions.RayError` here (the pass closes the window's videos as lost); an
        error of its own code that is not Ray's is raised as itself, as it would be in the driver."""
        import ray

        p = self.passes
        for window in graph.execution_windows(rows, p.plan["window_videos"]):
            blocks = graph.input_blocks(len(window), p.plan["task_concurrency"], isolate=p.attempt > 0)
            args = (window, p.config, p.layout.root, p.run_id, self.pool, p.plan, p.categories, p.gt.settings, blocks)
            if self.in_driver:
                yield from graph.build_dataset(*args).iter_rows()
                continue
            self.running = self.window_task.remote(*args, context=ray.data.DataContext.get_current())
            for ref in self.running:
                try:
                    batch = self.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, ray.exceptions.RayError):
                        raise
                    raise exc.cause from exc
                yield from batch
            self.running = None

    def finalize(self, *args):
        return self.task.remote(*args)

    def result(self, ref):
        return self.get(ref)

    def finish(self, video_id: str) -> None:
        self.pool.finish(video_id)

    def close(self) -> None:
        import ray

        if self.running is not None:  # the pass stopped reading a sub-driver (it raised): stop it
            ray.cancel(self.running, force=True)
        for actor in self.pool.actors:
            ray.kill(actor)
