"""``tubeflow track``: give per-frame panoptic predictions identities that hold through each video.

Input: per-frame predictions in COCO-panoptic format whose ids are *not* consistent over
time (``--perframe-json`` with ``annotations[].image_id/file_name/segments_info``, PNGs in
``--perframe-dir``), and the frames themselves (``--images``: files named ``<image_id>…``
with .png/.jpg/.jpeg). Video and frame come from ``images[].video_id/frame_index`` of the
JSON when present, else from the Cityscapes-VPS naming ``VVVV_FFFF_…`` of the image id.
Flow between consecutive frames is computed with OpenCV DIS. Output: the submission layout
``OUT/pred.json`` + ``OUT/pan_pred/<image_id>.png`` and the Parquet segments table under
``OUT/segments/`` (hive-partitioned by video, :mod:`operators.formats.segments_table`).

A bad frame (missing image, corrupt PNG, segments that disagree with the PNG) is reported on
stderr with its video and frame and skipped; the rest of the job goes on (exit code 1).
"""
from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from operators import fs
from operators.association import TrackerConfig, TrackerFrame, VideoTracker
from operators.association.config import TRACKER_HELP, TRACKER_METHODS
from operators.association.frame_loop import track_frames
from operators.association.methods import make_tracker
from operators.errors import FormatMismatchError, InputError, TubeflowError
from operators.flow.dis import PRESETS, DisFlow
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category
from operators.formats import segments_table
from operators.formats.panoptic import PanopticFrame, SegmentInfo, read_panoptic_png, validate_frame
from operators.formats.vps_layout import PredictionWriter, load_json, video_identity
from operators.video.image_sequence import decode_image
from pipelines.commit import STAGING_DIR, publish_staged, remove_tree, remove_tree_if_empty

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SEPARATORS = "_.-"
SEGMENTS_DIR = "segments"  # OUT/segments/video_key=<key>/part-….parquet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="directory of the frames, named <image_id>… (.png/.jpg)")
    parser.add_argument("--perframe-json", required=True, help="COCO-panoptic JSON of the per-frame predictions")
    parser.add_argument("--perframe-dir", required=True, help="directory of the per-frame prediction PNGs")
    parser.add_argument("--out", required=True, help="output directory (pred.json, pan_pred/, segments table)")
    parser.add_argument("--only-annotated", metavar="GT_JSON", help="write only the frames of this GT JSON")
    parser.add_argument("--flow-preset", default="medium", choices=sorted(PRESETS), help="OpenCV DIS preset")
    parser.add_argument("--config", help="TrackerConfig as JSON (fields of operators.association.TrackerConfig)")
    parser.add_argument("--tracker", choices=TRACKER_METHODS, default=None,
                        help=TRACKER_HELP + "; overrides the method of --config")


@dataclass(frozen=True)
class PerFrameImage:
    image_id: object
    file_name: str
    video_id: str
    frame_index: int
    segments: tuple[SegmentInfo, ...]


def read_perframe(json_uri: str) -> tuple[dict[str, list[PerFrameImage]], list[Category]]:
    """video_id → its per-frame predictions in frame order, and the categories of the JSON."""
    doc = load_json(json_uri)
    if "annotations" not in doc:
        raise FormatMismatchError(json_uri, "missing top-level key 'annotations'")
    identity = {str(rec.get("id")): video_identity(rec, json_uri) for rec in doc.get("images", [])}
    categories = [Category.from_json(c) for c in doc["categories"]] if "categories" in doc else list(CITYSCAPES_CATEGORIES)
    videos: dict[str, list[PerFrameImage]] = {}
    for rec in doc["annotations"]:
        if "image_id" not in rec or "file_name" not in rec:
            raise FormatMismatchError(json_uri, f"annotation without image_id/file_name: {str(rec)[:80]}")
        key = str(rec["image_id"])
        video_id, frame_index = identity.get(key) or video_identity({"id": key, "file_name": rec["file_name"]}, json_uri)
        segments = tuple(SegmentInfo.from_json(s, f"{json_uri} (image {key})") for s in rec.get("segments_info", []))
        videos.setdefault(video_id, []).append(PerFrameImage(rec["image_id"], rec["file_name"], video_id, frame_index, segments))
    for video_id, frames in videos.items():
        frames.sort(key=lambda f: f.frame_index)
        indices = [f.frame_index for f in frames]
        if len(set(indices)) != len(indices):
            raise FormatMismatchError(json_uri, f"video {video_id} lists a frame index twice")
    return dict(sorted(videos.items())), categories


def index_images(images_dir: str, image_ids: list[str]) -> dict[str, str]:
    """image_id → URI of its frame: the file whose name is ``<image_id>`` followed by a separator
    (``_ . -``) or its extension; the longest matching image id wins."""
    fsys, path = fs.filesystem(images_dir)
    if not fsys.isdir(path):
        raise InputError(images_dir, "images directory not found")
    wanted = set(image_ids)
    found: dict[str, str] = {}
    for entry in sorted(fsys.ls(path, detail=False)):
        name = entry.rsplit("/", 1)[-1]
        stem, dot, ext = name.rpartition(".")
        if not dot or f".{ext.lower()}" not in IMAGE_EXTENSIONS:
            continue
        cuts = [i for i, ch in enumerate(stem) if ch in _SEPARATORS] + [len(stem)]
        for cut in reversed(cuts):
            if stem[:cut] in wanted:
                found.setdefault(stem[:cut], fs.join(images_dir, name))
                break
    return found


def read_rgb(uri: str) -> np.ndarray:
    """A frame image → ``(H, W, 3) uint8`` RGB; unreadable or corrupt files are CorruptFileErrors."""
    return decode_image(fs.read_input(uri), uri)


def annotated_image_ids(gt_json: str) -> set[str]:
    doc = load_json(gt_json)
    if "annotations" not in doc:
        raise FormatMismatchError(gt_json, "missing top-level key 'annotations'")
    return {str(a["image_id"]) for a in doc["annotations"]}


def tracker_frames(frames: list[PerFrameImage], images: dict[str, str], perframe_dir: str,
                   known_categories: set[int], errors: list[str]) -> Iterator[TrackerFrame]:
    """The frames of one video as the tracker takes them: image and per-frame prediction read and
    checked; a bad frame goes to ``errors`` and is left out."""
    for item in frames:
        where = f"video {item.video_id} frame {item.frame_index}"
        try:
            if str(item.image_id) not in images:
                raise InputError(where, f"no image named {item.image_id}* (.png/.jpg) in --images")
            rgb = read_rgb(images[str(item.image_id)])
            png_uri = fs.join(perframe_dir, item.file_name)
            panoptic = PanopticFrame(read_panoptic_png(png_uri), list(item.segments))
            validate_frame(panoptic, png_uri, known_categories, rgb.shape[:2])
        except TubeflowError as exc:
            errors.append(f"{where}: {exc}")
            continue
        yield TrackerFrame(item.frame_index, panoptic, rgb, image_id=item.image_id)


def track_video(frames: list[PerFrameImage], images: dict[str, str], perframe_dir: str, tracker: VideoTracker,
                flow: DisFlow, known_categories: set[int], errors: list[str]) -> Iterator[tuple[TrackerFrame, PanopticFrame]]:
    """Yield (frame, tracked PanopticFrame) for the frames of one video through the one frame loop
    (:func:`operators.association.frame_loop.track_frames`); bad frames go to ``errors``."""
    def refused(frame: TrackerFrame, exc: TubeflowError) -> None:
        errors.append(f"video {tracker.video_id} frame {frame.frame_index}: {exc}")

    yield from track_frames(tracker, tracker_frames(frames, images, perframe_dir, known_categories, errors), flow,
                            on_error=refused)


def run(args: argparse.Namespace) -> int:
    from jobs.label import tracker_config_from_option

    config = tracker_config_from_option(args.config, "--config") if args.config else TrackerConfig()
    if args.tracker:
        config = replace(config, method=args.tracker)
    if config.uses_network:  # a bad weights file is one error before any video starts
        from operators.association.learned import load_model, weights_path

        load_model(weights_path(config))
    videos, categories = read_perframe(args.perframe_json)
    known = {c.id for c in categories}
    config = _with_things(config, categories)
    images = index_images(args.images, [str(f.image_id) for frames in videos.values() for f in frames])
    keep = annotated_image_ids(args.only_annotated) if args.only_annotated else None
    flow = DisFlow(args.flow_preset)
    errors: list[str] = []
    # everything is written under a staging prefix of this run and moved into --out only when the
    # whole job went through: a job that fails (or is killed) leaves no partial output behind
    staging = fs.join(args.out, STAGING_DIR, f"track-{uuid.uuid4().hex[:12]}")
    try:
        tracked_count, written = _track_into(staging, videos, images, args, config, flow, known, keep, categories,
                                             errors)
        publish_staged(staging, args.out, last=("pred.json",))
    finally:
        remove_tree(staging)
        remove_tree_if_empty(fs.join(args.out, STAGING_DIR))
    for line in errors:
        print(f"tubeflow track: error: {line}", file=sys.stderr)
    print(f"tracked {tracked_count} frames of {len(videos)} videos, wrote {written} into {args.out}"
          + (f" ({len(errors)} frames skipped)" if errors else ""))
    return 1 if errors else 0


def _track_into(out: str, videos, images, args, config, flow, known, keep, categories, errors) -> tuple[int, int]:
    tracked_count = written = 0
    with PredictionWriter(out) as writer:
        for video_id, frames in videos.items():
            tracker = make_tracker(video_id, config)
            batches = []
            for item, tracked in track_video(frames, images, args.perframe_dir, tracker, flow, known, errors):
                tracked_count += 1
                if keep is None or str(item.image_id) in keep:
                    writer.add(item.image_id, tracked)
                    batches.append(segments_table.frame_to_batch(tracked, video_id, item.frame_index,
                                                                 str(item.image_id), categories))
            if batches:  # one Parquet file per video, written when the video is done
                segments_table.write_segments_table(fs.join(out, SEGMENTS_DIR), batches)
                written += len(batches)
    return tracked_count, written


def _with_things(config: TrackerConfig, categories: list[Category]) -> TrackerConfig:
    """Thing categories come from the predictions' JSON when it lists categories."""
    things = tuple(c.id for c in categories if c.isthing)
    return config if things == config.thing_category_ids else replace(config, thing_category_ids=things)

