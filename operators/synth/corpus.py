"""Writing a synthetic corpus to disk (any fsspec URI) in the layout every task reads::

    DIR/corpus.json                          config, videos and their image ids (written last)
    DIR/videos/<video_id>.mp4                all frames (OpenCV, mp4v); or, with video_format mcap/bag,
    DIR/logs/log_KKKK.mcap|bag               two videos per log as camera topics (operators/synth/logs.py)
    DIR/frames/<image_id>_leftImg8bit.png    every frame, RGB PNG
    DIR/gt/panoptic_gt.json + gt/panoptic/   annotated frames (frame_index % annotate_every == 0)
    DIR/gt_all/panoptic_gt.json + gt_all/panoptic/   every frame
    DIR/flow/<image_id>.flo                  GT flow frame t → t−1 (t ≥ 1), Middlebury .flo

Both GT directories use the Cityscapes-VPS layout of :mod:`operators.formats.vps_layout`.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator


from operators import fs
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.formats.flo import write_flo
from operators.formats.panoptic import PanopticFrame, SegmentInfo, encode_rgb_png, read_panoptic_png
from operators.formats.vps_layout import VpsImage, write_ground_truth
from operators.synth.config import SynthConfig, frame_png_name
from operators.synth.render import SynthFrame, generate_video
from operators.video.writer import VideoWriter

CORPUS_JSON = "corpus.json"
GT_JSON = "panoptic_gt.json"


def gt_png_name(image: VpsImage) -> str:
    return f"{image.id}_gtFine_panoptic.png"


def _vps_image(cfg: SynthConfig, frame: SynthFrame) -> VpsImage:
    return VpsImage(frame.image_id, frame_png_name(frame.image_id), cfg.width, cfg.height, frame.video_id,
                    frame.frame_index)


def write_corpus(out: str, cfg: SynthConfig, progress: Callable[[str], None] | None = None,
                 video_format: str = "mp4") -> dict:
    """Render every video of ``cfg`` and write the corpus under ``out`` (a path or URI).

    ``video_format`` ``mcap`` or ``bag`` writes the videos as driving logs
    ``logs/log_KKKK.<ext>`` instead of mp4s, two cameras per log
    (:func:`operators.synth.logs.synth_log_frames`); the GT then names each video by its camera
    stream (``log_0000:/camera/front/image_raw/compressed``), as ``tubeflow label`` does.

    Returns the ``corpus.json`` document. ``corpus.json`` and each GT JSON are written after
    the files they name, every file atomically, so an interrupted run never leaves a JSON
    that points at missing or half-written files.
    """
    out = str(out).rstrip("/")
    videos: list[dict] = []

    def every_frame() -> Iterator[tuple[VpsImage, PanopticFrame]]:
        for v in range(cfg.videos):
            video_id = cfg.video_id(v)
            image_ids = []
            with VideoWriter(fs.join(out, "videos", f"{video_id}.mp4"), cfg.fps) as mp4:
                for frame in generate_video(cfg, v):
                    fs.write_bytes(fs.join(out, "frames", frame_png_name(frame.image_id)), encode_rgb_png(frame.rgb))
                    if frame.flow is not None:
                        write_flo(fs.join(out, "flow", f"{frame.image_id}.flo"), frame.flow)
                    mp4.write(frame.rgb)
                    image_ids.append(frame.image_id)
                    yield _vps_image(cfg, frame), frame.panoptic
            videos.append({"video_id": video_id, "mp4": f"videos/{video_id}.mp4", "image_ids": image_ids,
                           "annotated_image_ids": [i for k, i in enumerate(image_ids) if k % cfg.annotate_every == 0]})
            if progress is not None:
                progress(f"video {video_id}: {len(image_ids)} frames")

    if video_format not in ("mp4", "mcap", "bag"):
        raise ValueError(f"unknown video format {video_format!r}; choose mp4, mcap or bag")
    if video_format == "mp4":
        frames = every_frame()
    else:
        from operators.synth.logs import synth_log_frames

        frames = synth_log_frames(out, cfg, video_format, videos, progress)
    all_json, all_png = fs.join(out, "gt_all", GT_JSON), fs.join(out, "gt_all", "panoptic")
    write_ground_truth(all_json, all_png, frames, CITYSCAPES_CATEGORIES, png_name=gt_png_name)

    # The benchmark GT is a subset of gt_all: read those frames back instead of rendering twice.
    all_doc = json.loads(fs.read_bytes(all_json))
    annotated = []
    for image_rec, ann_rec in zip(all_doc["images"], all_doc["annotations"]):
        if image_rec["frame_index"] % cfg.annotate_every == 0:
            annotated.append((VpsImage(**image_rec), ann_rec))

    def annotated_frames() -> Iterator[tuple[VpsImage, PanopticFrame]]:
        for image, ann in annotated:
            ids = read_panoptic_png(fs.join(all_png, ann["file_name"]))
            yield image, PanopticFrame(ids, [SegmentInfo.from_json(s) for s in ann["segments_info"]])

    write_ground_truth(fs.join(out, "gt", GT_JSON), fs.join(out, "gt", "panoptic"), annotated_frames(),
                       CITYSCAPES_CATEGORIES, png_name=gt_png_name)

    doc = {"generator": "tubeflow synth", "config": cfg.to_json(),
           "layout": {"frames": "frames/{image_id}_leftImg8bit.png",
                      **({"videos": "videos/{video_id}.mp4"} if video_format == "mp4" else
                         {"logs": f"logs/log_{{k:04d}}.{video_format}"}),
                      "gt": f"gt/{GT_JSON}", "gt_all": f"gt_all/{GT_JSON}", "flow": "flow/{image_id}.flo"},
           "videos": videos}
    fs.write_bytes(fs.join(out, CORPUS_JSON), json.dumps(doc, indent=1).encode())
    return doc
