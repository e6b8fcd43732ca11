"""Evaluate one video: read each annotated frame's GT and prediction once (a PNG of the
Cityscapes-VPS layout, or the video's partition of a segments table), build its contingency
table, feed the VPQ windows and the STQ sums. No Ray here: a pipeline runs
:func:`evaluate_video` wherever it likes (this process, a process pool, Ray tasks) and adds
up what it returns.

Bad input never escapes as an exception: the video's result carries the error (naming
video, frame and file) and no statistics, so one broken video does not stop a corpus.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Mapping, Sequence

from operators import fs
from operators.errors import InputError, TubeflowError
from operators.formats import segments_table
from operators.formats.categories import Category
from operators.formats.ground_truth import table_image
from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.formats.vps_layout import VpsGroundTruth, VpsImage, VpsPredictions
from operators.formats.vps_stream import parse_segments
from operators.metrics.contingency import FrameTable, decode_ids, frame_table
from operators.metrics.stq import StqStats, STQuality
from operators.metrics.vpq import DEFAULT_KS, DEFAULT_STRIDE, GtAreaRule, VideoVpq, VpqStats, window_frames


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute. ``gt_area``: "summed" (the paper's and the benchmark evaluator's
    window sums) or "legacy" (the evaluator's first release, which re-added areas across
    windows), see :func:`operators.metrics.vpq._gt_tubes`."""

    categories: Mapping[int, Category]
    ks: tuple[int, ...] = DEFAULT_KS
    stride: int = DEFAULT_STRIDE
    allow_missing: bool = False
    gt_area: GtAreaRule = "summed"
    ignore_label: int = 255
    label_divisor: int = 65536

    def __post_init__(self) -> None:
        for k in self.ks:
            window_frames(k, self.stride)  # raises on a k that is not a multiple of the stride

    def new_stq(self) -> STQuality:
        num_classes = max(self.categories) + 1 if self.categories else 1
        return STQuality(num_classes, [c.id for c in self.categories.values() if c.isthing],
                         self.ignore_label, self.label_divisor)


@dataclass
class FrameInputs:
    """Where one annotated frame's data is. ``pred_uri`` None: no prediction for it.
    Segments are a list or ``segments_info`` as JSON text (parsed and checked in the task).
    ``gt_frame`` / ``pred_frame``: the frame itself, when the task read it from a table."""

    image: VpsImage
    gt_uri: str
    gt_segments: list[SegmentInfo] | str
    pred_uri: str | None
    pred_segments: list[SegmentInfo] | str = field(default_factory=list)
    gt_frame: PanopticFrame | None = None
    pred_frame: PanopticFrame | None = None


@dataclass
class VideoInputs:
    """Everything a worker needs for one video (small, picklable: URIs and JSON records).

    ``gt_table``: the GT is that segments table's partition of the video (``frames`` is then
    empty: the task reads them); ``pred_table``: the predictions are, matched to the GT
    frames by frame index.
    """

    video_id: str
    frames: list[FrameInputs]
    pred_json: str = ""
    gt_table: str = ""
    pred_table: str = ""


@dataclass
class VideoEvaluation:
    """Result of one video: its sums, or the error that stopped it."""

    video_id: str
    frames: int
    vpq: VpqStats
    stq: StqStats | None
    error: str | None = None
    missing_frames: int = 0
    gaps: tuple[int, ...] = ()
    """The distinct distances between consecutive annotated frames (see :class:`SpacingCheck`)."""


def plan_videos(gt: VpsGroundTruth, predictions: VpsPredictions) -> list[VideoInputs]:
    """One :class:`VideoInputs` per GT video, annotated frames in frame order."""
    plans = []
    for video_id, images in gt.videos().items():
        frames = []
        for image in images:
            annotation = gt.annotations.get(image.key)
            gt_uri = gt.png_uri(image) if annotation else ""
            gt_segments = annotation.segments if annotation else []
            if predictions.has(image):
                frames.append(FrameInputs(image, gt_uri, gt_segments, predictions.png_uri(image),
                                          predictions.annotations[image.key].segments))
            else:
                frames.append(FrameInputs(image, gt_uri, gt_segments, None))
        plans.append(VideoInputs(video_id, frames, predictions.json_uri))
    return plans


class SpacingCheck:
    """Whether annotated frames are ``stride`` frames apart, video after video; a warning
    when they are not.

    VPQ's windows are counted in annotated frames: a window of k frames is k/λ + 1
    consecutive annotated frames, which spans k frames only if the annotations are λ frames
    apart (Cityscapes-VPS: every 5th frame, ``--stride 5``). GT annotating every frame and
    evaluated with stride 5 would silently give VPQ over 4-frame windows as "k = 20".
    The frame numbers come from the images' ``frame_index`` (or the ``VVVV_FFFF`` names).
    Holds a count and the first three videos: O(1) memory for any corpus.
    """

    def __init__(self, stride: int):
        self.stride = stride
        self.videos = 0
        self.odd = 0
        self.examples: list[str] = []

    def add(self, video_id: str, gaps: Sequence[int]) -> None:
        self.videos += 1
        if gaps and list(gaps) != [self.stride]:
            self.odd += 1
            if len(self.examples) < 3:
                self.examples.append(f"{video_id} ({', '.join(map(str, list(gaps)[:4]))})")

    def warning(self) -> str | None:
        if not self.odd:
            return None
        return (f"annotated frames are not --stride {self.stride} frames apart in {self.odd} of {self.videos} "
                f"videos (video: gaps) {'; '.join(self.examples)}{' …' if self.odd > 3 else ''}: VPQ windows count "
                f"annotated frames (k/{self.stride} + 1 of them), so k > 0 does not mean k frames there; pass the "
                f"real spacing as --stride")


def frame_gaps(frame_indices: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted({b - a for a, b in zip(frame_indices, frame_indices[1:])}))


def _segment_list(segments: list[SegmentInfo] | str, where: str) -> list[SegmentInfo]:
    return parse_segments(segments, f"{where} segments_info") if isinstance(segments, str) else segments


def _table_frames(video: VideoInputs) -> list[FrameInputs]:
    """The video's frames with what the tables hold filled in (read here, in the task)."""
    frames = video.frames
    if video.gt_table:
        where = segments_table.partition_dir(video.gt_table, video.video_id)
        gt = segments_table.video_frames(video.gt_table, video.video_id)
        if not gt:
            raise InputError(where, f"no GT rows for video {video.video_id}")
        frames = [FrameInputs(table_image(gt[i]), where, gt[i].frame.segments, None, gt_frame=gt[i].frame)
                  for i in sorted(gt)]
    if video.pred_table:
        where = segments_table.partition_dir(video.pred_table, video.video_id)
        pred = segments_table.video_frames(video.pred_table, video.video_id)
        frames = [replace(f, pred_uri=where, pred_segments=pred[f.image.frame_index].frame.segments,
                          pred_frame=pred[f.image.frame_index].frame) if f.image.frame_index in pred else
                  replace(f, pred_uri=None, pred_segments=[], pred_frame=None) for f in frames]
    return frames


def frame_inputs_table(frame: FrameInputs, settings: EvaluationSettings, where: str,
                       source: str = "") -> tuple[FrameTable, bool]:
    """One annotated frame's :class:`FrameTable` (its PNGs read here unless the frames are given)
    and whether its prediction was missing (scored as empty under ``allow_missing``; ``source``
    names where the predictions come from in that error; ``where`` names the frame, ``video … frame …``).
    Raises :class:`TubeflowError` on bad input."""
    if not frame.gt_uri:
        raise InputError(where, f"image {frame.image.id!r} has no GT annotation")
    if frame.gt_frame is not None:
        gt_ids = frame.gt_frame.ids
    else:
        gt_ids = decode_ids(fs.read_input(frame.gt_uri), frame.gt_uri)
    if frame.image.height and frame.image.width and gt_ids.shape != (frame.image.height, frame.image.width):
        raise InputError(frame.gt_uri, f"GT size {gt_ids.shape[1]}x{gt_ids.shape[0]} (WxH) differs from the "
                                       f"JSON's {frame.image.width}x{frame.image.height}")
    missing = frame.pred_uri is None
    if missing:
        if not settings.allow_missing:
            raise InputError(where, f"no prediction for image {frame.image.id!r} in {source} "
                                    "(--allow-missing scores it as empty)")
        pred_ids = None
    elif frame.pred_frame is not None:
        pred_ids = frame.pred_frame.ids
    else:
        pred_ids = decode_ids(fs.read_input(frame.pred_uri), frame.pred_uri)
    table = frame_table(frame.image.frame_index, gt_ids, _segment_list(frame.gt_segments, frame.gt_uri),
                        pred_ids, _segment_list(frame.pred_segments, frame.pred_uri or "prediction"),
                        frame.gt_uri, frame.pred_uri or "prediction", settings.categories.keys())
    return table, missing


def score_tables(video_id: str, tables: Iterable[FrameTable], settings: EvaluationSettings) -> tuple[VpqStats, StqStats]:
    """A video's VPQ and STQ sums from its annotated frames' tables, in frame order (the
    tables may come one at a time: a generator that reads each frame keeps one in memory)."""
    vpq = VideoVpq(video_id, settings.ks, settings.stride, settings.gt_area)
    stq = settings.new_stq()
    for table in tables:
        vpq.update(table)
        stq.update_from_table(table, video_id)
    return vpq.stats(), stq.stats()


def evaluate_video(video: VideoInputs, settings: EvaluationSettings) -> VideoEvaluation:
    """VPQ and STQ sums of one video; on bad input, a result with ``error`` set."""
    missing = 0
    where = f"video {video.video_id}"
    frames = video.frames

    def tables() -> Iterator[FrameTable]:
        nonlocal missing, where
        for frame in frames:
            where = f"video {video.video_id} frame {frame.image.frame_index}"
            table, missed = frame_inputs_table(frame, settings, where, video.pred_table or video.pred_json)
            missing += missed
            yield table

    try:
        frames = _table_frames(video)
        vpq, stq = score_tables(video.video_id, tables(), settings)
    except TubeflowError as exc:
        message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        return VideoEvaluation(video.video_id, len(frames), VpqStats(), None, message, missing,
                               frame_gaps([f.image.frame_index for f in frames]))
    return VideoEvaluation(video.video_id, len(frames), vpq, stq, None, missing,
                           frame_gaps([f.image.frame_index for f in frames]))


def evaluate_videos(videos: Sequence[VideoInputs], settings: EvaluationSettings) -> list[VideoEvaluation]:
    """A shard of videos, one after the other (what one worker task runs)."""
    return [evaluate_video(v, settings) for v in videos]
