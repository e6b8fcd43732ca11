"""Evaluate one video: read each annotated frame's GT and predicted PNG once, build its
contingency table, feed the VPQ windows and the STQ sums. No Ray here: a pipeline runs
:func:`evaluate_video` wherever it likes and adds up what it returns.

Bad input never escapes as an exception: the video's result carries the error (naming
video, frame and file) and no statistics, so one broken video does not stop a corpus.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from operators import fs
from operators.errors import InputError, TubeflowError
from operators.formats.categories import Category
from operators.formats.panoptic import SegmentInfo
from operators.formats.vps_layout import VpsGroundTruth, VpsImage, VpsPredictions
from operators.metrics.contingency import decode_ids, frame_table
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
    """Where one annotated frame's data is. ``pred_uri`` None: no prediction for it."""

    image: VpsImage
    gt_uri: str
    gt_segments: list[SegmentInfo]
    pred_uri: str | None
    pred_segments: list[SegmentInfo] = field(default_factory=list)


@dataclass
class VideoInputs:
    """Everything a worker needs for one video (small, picklable: URIs and JSON records)."""

    video_id: str
    frames: list[FrameInputs]
    pred_json: str = ""


@dataclass
class VideoEvaluation:
    """Result of one video: its sums, or the error that stopped it."""

    video_id: str
    frames: int
    vpq: VpqStats
    stq: StqStats | None
    error: str | None = None
    missing_frames: int = 0


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


def annotation_spacing_warning(plans: Sequence[VideoInputs], stride: int) -> str | None:
    """A warning when annotated frames are not ``stride`` frames apart, else None.

    VPQ's windows are counted in annotated frames: a window of k frames is k/λ + 1
    consecutive annotated frames, which spans k frames only if the annotations are λ frames
    apart (Cityscapes-VPS: every 5th frame, ``--stride 5``). GT annotating every frame and
    evaluated with stride 5 would silently give VPQ over 4-frame windows as "k = 20".
    The frame numbers come from the images' ``frame_index`` (or the ``VVVV_FFFF`` names).
    """
    odd = []
    for video in plans:
        indices = [f.image.frame_index for f in video.frames]
        gaps = sorted({b - a for a, b in zip(indices, indices[1:])})
        if gaps and gaps != [stride]:
            odd.append(f"{video.video_id} ({', '.join(map(str, gaps[:4]))})")
    if not odd:
        return None
    return (f"annotated frames are not --stride {stride} frames apart in {len(odd)} of {len(plans)} videos "
            f"(video: gaps) {'; '.join(odd[:3])}{' …' if len(odd) > 3 else ''}: VPQ windows count annotated "
            f"frames (k/{stride} + 1 of them), so k > 0 does not mean k frames there; pass the real spacing "
            f"as --stride")


def evaluate_video(video: VideoInputs, settings: EvaluationSettings) -> VideoEvaluation:
    """VPQ and STQ sums of one video; on bad input, a result with ``error`` set."""
    vpq = VideoVpq(video.video_id, settings.ks, settings.stride, settings.gt_area)
    stq = settings.new_stq()
    missing = 0
    where = f"video {video.video_id}"
    try:
        for frame in video.frames:
            where = f"video {video.video_id} frame {frame.image.frame_index}"
            if not frame.gt_uri:
                raise InputError(where, f"image {frame.image.id!r} has no GT annotation")
            gt_ids = decode_ids(fs.read_input(frame.gt_uri), frame.gt_uri)
            if frame.image.height and frame.image.width and gt_ids.shape != (frame.image.height, frame.image.width):
                raise InputError(frame.gt_uri, f"GT size {gt_ids.shape[1]}x{gt_ids.shape[0]} (WxH) differs from the "
                                               f"JSON's {frame.image.width}x{frame.image.height}")
            if frame.pred_uri is None:
                if not settings.allow_missing:
                    raise InputError(where, f"no prediction for image {frame.image.id!r} in {video.pred_json} "
                                            "(--allow-missing scores it as empty)")
                missing += 1
                pred_ids = None
            else:
                pred_ids = decode_ids(fs.read_input(frame.pred_uri), frame.pred_uri)
            table = frame_table(frame.image.frame_index, gt_ids, frame.gt_segments, pred_ids, frame.pred_segments,
                                frame.gt_uri, frame.pred_uri or "prediction", settings.categories.keys())
            vpq.update(table)
            stq.update_from_table(table, video.video_id)
    except TubeflowError as exc:
        message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        return VideoEvaluation(video.video_id, len(video.frames), VpqStats(), None, message, missing)
    return VideoEvaluation(video.video_id, len(video.frames), vpq.stats(), stq.stats(), None, missing)


def evaluate_videos(videos: Sequence[VideoInputs], settings: EvaluationSettings) -> list[VideoEvaluation]:
    """A shard of videos, one after the other (what one worker task runs)."""
    return [evaluate_video(v, settings) for v in videos]
