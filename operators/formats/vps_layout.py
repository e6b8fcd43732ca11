"""The Cityscapes-VPS benchmark layout, read and written unchanged.

* Ground truth: one JSON (``images``, ``annotations``, ``categories``) plus a directory of
  panoptic PNGs named by ``annotations[].file_name``.
* Predictions: ``pred.json`` (``annotations`` with ``image_id``, ``file_name``,
  ``segments_info``) plus ``pan_pred/<file_name>`` (the writer names it ``<image_id>.png``).

Video identity comes from ``images[].video_id`` / ``images[].frame_index`` when present,
else from the Cityscapes-VPS naming ``VVVV_FFFF_…`` (4-digit video, 4-digit frame).
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.formats.categories import Category
from operators.formats.panoptic import PanopticFrame, SegmentInfo, read_panoptic_png, validate_frame, write_panoptic_png
from operators.ids import image_key, png_name

PRED_JSON = "pred.json"
PRED_PNG_DIR = "pan_pred"
_VPS_NAME = re.compile(r"^(\d{4})_(\d{4})_")


@dataclass(frozen=True)
class VpsImage:
    """One frame of a video in a VPS dataset. ``id`` is the JSON image id (kept as written)."""

    id: object
    file_name: str
    width: int
    height: int
    video_id: str
    frame_index: int

    @property
    def key(self) -> str:
        """The image id as a string: JSON ids may be ints or strings, lookups use this."""
        return str(self.id)

    def to_json(self) -> dict:
        return {"id": self.id, "file_name": self.file_name, "width": self.width, "height": self.height,
                "video_id": self.video_id, "frame_index": self.frame_index}


@dataclass
class VpsAnnotation:
    image_id: object
    file_name: str
    segments: list[SegmentInfo]

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "file_name": self.file_name,
                "segments_info": [s.to_json() for s in self.segments]}


def video_identity(record: dict, where: str) -> tuple[str, int]:
    """(video_id, frame_index) of a JSON image record: explicit fields, else ``VVVV_FFFF_`` naming."""
    if "video_id" in record and "frame_index" in record:
        return str(record["video_id"]), int(record["frame_index"])
    for name in (str(record.get("file_name", "")), str(record.get("id", ""))):
        match = _VPS_NAME.match(name.rsplit("/", 1)[-1])
        if match:
            return match.group(1), int(match.group(2))
    raise FormatMismatchError(where, f"image {record.get('id')!r} has no video_id/frame_index and its name "
                                     "does not follow the Cityscapes-VPS pattern VVVV_FFFF_…")


def load_json(uri: str) -> dict:
    data = fs.read_input(uri)
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(uri, f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatMismatchError(uri, f"expected a JSON object at the top level, got {type(doc).__name__}")
    return doc


def annotation_fields(rec: object, where: str) -> tuple[object, str, list]:
    """(image_id, file_name, segments_info) of one ``annotations[]`` record, its segment
    records unchecked (see :func:`segments_from_records`)."""
    try:
        image_id, file_name = rec["image_id"], rec["file_name"]
        segments_info = rec.get("segments_info", [])
        if not isinstance(segments_info, list):
            raise TypeError(f"segments_info is a {type(segments_info).__name__}, not a list")
    except KeyError as exc:
        raise FormatMismatchError(where, f"annotation without {exc}") from None
    except (TypeError, AttributeError) as exc:
        raise FormatMismatchError(where, f"malformed annotation record {rec!r}: {exc}") from None
    return image_id, file_name, segments_info


def segments_from_records(records: Iterable, where: str) -> list[SegmentInfo]:
    return [SegmentInfo.from_json(s, where) for s in records]


def annotation_from_record(rec: object, where: str) -> VpsAnnotation:
    """One ``annotations[]`` record (GT or prediction), checked; raises :class:`FormatMismatchError`."""
    image_id, file_name, segments_info = annotation_fields(rec, where)
    return VpsAnnotation(image_id, file_name, segments_from_records(segments_info, f"{where} (image {image_id})"))


def image_from_record(rec: object, where: str) -> VpsImage:
    """One ``images[]`` record with its video identity; raises :class:`FormatMismatchError`."""
    try:
        video_id, frame_index = video_identity(rec, where)
        return VpsImage(rec["id"], rec.get("file_name", ""), int(rec.get("width", 0)), int(rec.get("height", 0)),
                        video_id, frame_index)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatMismatchError(where, f"malformed image record {rec!r}: {exc!r}") from None


def categories_from_records(records: Iterable, where: str) -> dict[int, Category]:
    try:
        return {int(c["id"]): Category.from_json(c) for c in records}
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatMismatchError(where, f"malformed category record: {exc!r}") from None


def _annotations(records: object, where: str) -> dict[str, VpsAnnotation]:
    """image id (as a string) → its annotation. One annotation per image: a second one
    would silently replace the first (and its PNG) otherwise."""
    if not isinstance(records, list):
        raise FormatMismatchError(where, f"'annotations' must be a list, got {type(records).__name__}")
    out = {}
    for rec in records:
        annotation = annotation_from_record(rec, where)
        if str(annotation.image_id) in out:
            raise FormatMismatchError(where, f"two annotations for image {annotation.image_id!r}")
        out[str(annotation.image_id)] = annotation
    return out


@dataclass
class VpsGroundTruth:
    """A VPS ground truth: images grouped into videos, per-image annotations, categories."""

    json_uri: str
    png_dir: str
    images: list[VpsImage]
    annotations: dict[str, VpsAnnotation]
    categories: dict[int, Category]

    def videos(self) -> dict[str, list[VpsImage]]:
        """video_id → its images in frame order."""
        by_video: dict[str, list[VpsImage]] = {}
        for image in self.images:
            by_video.setdefault(image.video_id, []).append(image)
        return {v: sorted(imgs, key=lambda im: im.frame_index) for v, imgs in sorted(by_video.items())}

    def png_uri(self, image: VpsImage) -> str:
        return fs.join(self.png_dir, self.annotations[image.key].file_name)

    def read_frame(self, image: VpsImage) -> PanopticFrame:
        """The GT frame of ``image``, validated against its segments_info, categories and size."""
        if image.key not in self.annotations:
            raise FormatMismatchError(self.json_uri, f"image {image.id!r} has no annotation")
        uri = self.png_uri(image)
        frame = PanopticFrame(read_panoptic_png(uri), self.annotations[image.key].segments)
        size = (image.height, image.width) if image.height and image.width else None  # both are optional
        validate_frame(frame, uri, self.categories.keys(), size)
        return frame


def read_ground_truth(json_uri: str, png_dir: str) -> VpsGroundTruth:
    """Read a Cityscapes-VPS style GT JSON; PNGs are read lazily by :meth:`VpsGroundTruth.read_frame`."""
    data = load_json(json_uri)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise FormatMismatchError(json_uri, f"missing top-level key {key!r}")
    categories = categories_from_records(data["categories"], json_uri)
    images = [image_from_record(rec, json_uri) for rec in data["images"]]
    seen: dict[tuple[str, int], object] = {}
    for image in images:
        if (image.video_id, image.frame_index) in seen:
            raise FormatMismatchError(json_uri, f"images {seen[(image.video_id, image.frame_index)]!r} and "
                                                f"{image.id!r} are both video {image.video_id} frame {image.frame_index}")
        seen[(image.video_id, image.frame_index)] = image.id
    return VpsGroundTruth(json_uri, png_dir, images, _annotations(data["annotations"], json_uri), categories)


def write_ground_truth(json_uri: str, png_dir: str, frames: Iterable[tuple[VpsImage, PanopticFrame]],
                       categories: Iterable[Category], png_name=lambda im: f"{image_key(im.id)}_gtFine_panoptic.png") -> None:
    """Write a GT JSON plus one PNG per frame. The JSON is written last, so a reader never
    sees a JSON that names PNGs which are not there yet."""
    images, annotations = [], []
    for image, frame in frames:
        name = png_name(image)
        write_panoptic_png(fs.join(png_dir, name), frame.ids)
        images.append(image.to_json())
        annotations.append(VpsAnnotation(image.id, name, frame.segments).to_json())
    doc = {"images": images, "annotations": annotations, "categories": [c.to_json() for c in categories]}
    fs.write_bytes(json_uri, json.dumps(doc).encode())


@dataclass
class VpsPredictions:
    """Predictions in the official submission layout: ``pred.json`` + ``pan_pred/``."""

    pred_dir: str
    annotations: dict[str, VpsAnnotation]

    @property
    def json_uri(self) -> str:
        return fs.join(self.pred_dir, PRED_JSON)

    def has(self, image: VpsImage) -> bool:
        return image.key in self.annotations

    def png_uri(self, image: VpsImage) -> str:
        return fs.join(self.pred_dir, PRED_PNG_DIR, self.annotations[image.key].file_name)

    def read_frame(self, image: VpsImage, known_categories: Iterable[int] | None = None) -> PanopticFrame:
        """The predicted frame of ``image``; ids in the PNG and JSON must agree."""
        if not self.has(image):
            raise InputError(f"video {image.video_id} frame {image.frame_index}",
                             f"no prediction for image {image.id!r} in {self.json_uri}")
        uri = self.png_uri(image)
        frame = PanopticFrame(read_panoptic_png(uri), self.annotations[image.key].segments)
        size = (image.height, image.width) if image.height and image.width else None
        validate_frame(frame, uri, known_categories, size)
        return frame


def read_predictions(pred_dir: str) -> VpsPredictions:
    json_uri = fs.join(pred_dir, PRED_JSON)
    data = load_json(json_uri)
    if "annotations" not in data:
        raise FormatMismatchError(json_uri, "missing top-level key 'annotations'")
    return VpsPredictions(pred_dir, _annotations(data["annotations"], json_uri))


class PredictionWriter:
    """Writes frames into the submission layout; ``close()`` writes ``pred.json`` last.

    PNGs go to ``pan_pred/<key>.png`` (:func:`operators.ids.png_name`) as they come, the JSON only at the end, so a
    crashed run never leaves a ``pred.json`` that points at missing PNGs. The annotation
    records wait in a local spill file, not in memory: a corpus of any size is written
    with constant memory.
    """

    def __init__(self, pred_dir: str):
        self.pred_dir = pred_dir
        self._spill = tempfile.TemporaryFile()
        self.count = 0

    def add(self, image_id: object, frame: PanopticFrame) -> None:
        name = png_name(image_id)
        write_panoptic_png(fs.join(self.pred_dir, PRED_PNG_DIR, name), frame.ids)
        self.add_record(VpsAnnotation(image_id, name, frame.segments).to_json())

    def add_record(self, annotation: dict) -> None:
        """An ``annotations[]`` record whose PNG is already in ``pan_pred/``."""
        self._spill.write((b",\n" if self.count else b"") + json.dumps(annotation).encode())
        self.count += 1

    def close(self) -> None:
        self._spill.seek(0)
        with fs.atomic_write(fs.join(self.pred_dir, PRED_JSON)) as f:
            f.write(b'{"annotations": [')
            shutil.copyfileobj(self._spill, f)
            f.write(b"]}")
        self._spill.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._spill.close()


def iter_video_frames(gt: VpsGroundTruth, video_id: str) -> Iterator[tuple[VpsImage, PanopticFrame]]:
    for image in gt.videos()[video_id]:
        yield image, gt.read_frame(image)
