"""Labelling through lost processes: what the driver knows of each video, and where a video
that lost a process resumes.

Ray absorbs most losses by itself: a plan, decode or sink task whose worker dies runs
again (``max_retries``), a model actor (segmentation, flow, the association feeders, the
association actors) restarts (``max_restarts``) and the calls it had in flight are sent again
(``max_task_retries``); every stage writes under deterministic names, so a write done twice is
the same file. What Ray cannot give back is an association actor's memory: the chunks it held
for later and the frames of a call whose answer never arrived. A video hit that way comes back
incomplete (or with a row marked ``lost``), and the driver runs it again in a next pass, from
the last chunk boundary that has both

* an association checkpoint in the output store (written by the actor after every push that
  consumed chunks, :class:`pipelines.label.association_actor.CheckpointStore`), and
* every frame before it staged, in sink writes that end before it (what a write staged after the
  loss, or straddling the boundary, is deleted first: its segments part, and its frame-times,
  contingency-table and overlay-frame parts, :data:`pipelines.label.sink.FRAME_PART_DIRS`).

The tracker is deterministic, so the resumed video has the track ids of an uninterrupted run.
A video still lost after :data:`MAX_PASSES` passes fails with a row naming the losses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from operators import fs
from operators.formats import segments_table
from pipelines.commit import OutputLayout, remove_tree
from pipelines.label.sink import FRAME_PART_DIRS, frame_part_span

MAX_PASSES = 4
"""The first pass and up to three more for the videos that lost a process."""

MAX_TASK_RETRIES = 3
"""Times Ray sends a call (or runs a task) again after its process was lost. Bounded: a chunk
that kills its worker every time (a decoder crash on a hostile file) must end as a failed
video, not loop forever."""


@dataclass
class VideoProgress:
    """The driver's account of one video across passes, from the sink's summary rows."""

    video_id: str
    resume_from: int = 0
    frame_count: int = 0
    frames: set[int] = field(default_factory=set)
    """Frames staged so far (by this pass or kept from earlier ones)."""
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Segments parts staged: file name → (first, last) frame of the batch that wrote it."""
    spans: set[tuple[int, int]] = field(default_factory=set)
    """(first, last) frame of every sink write (also of those without segments: their frame
    times and contingency tables are parts of that span too)."""
    frames_failed: int = 0
    error: str = ""
    stage: str = ""
    lost: bool = False
    losses: list[str] = field(default_factory=list)
    """Why each earlier pass lost the video."""
    lost_stage: str = ""

    def add(self, summary: dict) -> int:
        """Account one summary row of the sink; returns the frames it labelled."""
        self.frame_count = int(summary["frame_count"]) or self.frame_count
        frames = [int(f) for f in summary["frames"]]
        self.frames.update(frames)
        if frames:
            self.spans.add((min(frames), max(frames)))
            if summary["part"]:
                self.parts[str(summary["part"])] = (min(frames), max(frames))
        self.frames_failed += int(summary["frames_failed"])
        if summary["error"] and not self.error:
            self.error, self.stage, self.lost = str(summary["error"]), str(summary["stage"]), bool(summary["lost"])
        return int(summary["frames_done"])

    @property
    def complete(self) -> bool:
        return self.frame_count > 0 and len(self.frames) + self.frames_failed >= self.frame_count

    def lose(self, reason: str, stage: str) -> None:
        """The pass lost this video in ``stage`` (not its input's fault): it is tried again."""
        self.losses.append(reason)
        self.lost_stage = stage
        self.error, self.stage, self.lost, self.frames_failed = "", "", False, 0

    def lost_error(self) -> str:
        return (f"video {self.video_id}: lost a worker in each of {len(self.losses)} passes "
                f"(last: {self.losses[-1]})")


def resume_point(progress: VideoProgress, boundaries: list[int]) -> int:
    """The latest checkpointed chunk boundary before which every frame is staged and that no
    sink write straddles (0: start over)."""
    covered = 0
    while covered in progress.frames:
        covered += 1
    spans = set(progress.parts.values()) | progress.spans
    straddled = {b for first, last in spans for b in range(first + 1, last + 1)}
    return max((b for b in boundaries if b <= covered and b not in straddled), default=0)


def prepare_retry(layout: OutputLayout, run_id: str, progress: VideoProgress, boundaries: list[int]) -> int:
    """Make the video's staging hold exactly its frames before the resume point (see module
    doc) and set ``progress.resume_from``; returns it."""
    start = resume_point(progress, boundaries)
    staging = layout.staging(run_id, progress.video_id)
    keep = {name: span for name, span in progress.parts.items() if span[1] < start}
    if start == 0:
        remove_tree(staging)
    else:
        partition = segments_table.partition_dir(fs.join(staging, "segments"), progress.video_id)
        filesystem, path = fs.fresh(partition)
        for name in filesystem.ls(path, detail=False) if filesystem.exists(path) else []:
            if name.rstrip("/").rsplit("/", 1)[-1] not in keep:
                filesystem.rm(name, recursive=True)
        for folder in FRAME_PART_DIRS:  # frame times, contingency tables, overlay frames: named by their frames
            filesystem, path = fs.fresh(fs.join(staging, folder))
            for name in filesystem.ls(path, detail=False) if filesystem.exists(path) else []:
                span = frame_part_span(name)
                if span is None or span[1] >= start:
                    filesystem.rm(name, recursive=True)
    progress.parts = keep
    progress.spans = {span for span in progress.spans if span[1] < start}
    progress.frames = {f for f in progress.frames if f < start}
    progress.resume_from = start
    return start
