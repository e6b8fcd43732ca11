"""Category definitions: the 19 Cityscapes(-VPS) classes, ids 0–18, things 11–18, and a
model's own class set read from a COCO-panoptic style categories JSON.

A model's classes are an ordered list: the model's class index ``i`` (semantic channel i, class
logit column i, a finished map's ``category_id`` i) is the ``i``-th entry, whose ``id`` is what
the outputs carry. The built-in model's list is :data:`CITYSCAPES_CATEGORIES`, where index = id.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

from operators.errors import CorruptFileError, FormatMismatchError


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "supercategory": "thing" if self.isthing else "stuff",
                "isthing": int(self.isthing), "color": list(self.color)}

    @classmethod
    def from_json(cls, record: dict) -> "Category":
        return cls(int(record["id"]), str(record.get("name", record["id"])), bool(record.get("isthing", 0)),
                   tuple(record.get("color", (0, 0, 0))))


# Cityscapes-VPS uses the 19 Cityscapes train classes with contiguous ids 0..18.
CITYSCAPES_CATEGORIES: tuple[Category, ...] = tuple(Category(i, name, i >= 11, color) for i, (name, color) in enumerate([
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)), ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
]))

CATEGORY_BY_NAME = {c.name: c for c in CITYSCAPES_CATEGORIES}
CITYSCAPES_THING_IDS: tuple[int, ...] = tuple(c.id for c in CITYSCAPES_CATEGORIES if c.isthing)  # 11–18

# Groups of thing classes that may share one instance center in the built-in post-processing
# (operators.segmentation.postprocess): one center's pixels of different groups become
# different instances. Small things that stand together — a rider on its bicycle, a pedestrian
# before a car, a car queued behind a bus — often get one peak of a stride-4 center heatmap;
# the groups return them apart. Cityscapes files its things under two categories, "human" and
# "vehicle"; splitting "vehicle" further by shape — cars; large vehicles (truck, bus, train),
# whose pixels the semantic head confuses among themselves; two-wheelers — measured better on
# both synthetic seeds (model card: held-out PQ 56.5 → 57.6 with flip augmentation).
CITYSCAPES_THING_GROUPS: tuple[tuple[int, ...], ...] = tuple(
    tuple(CATEGORY_BY_NAME[n].id for n in names)
    for names in (("person", "rider"), ("car",), ("truck", "bus", "train"), ("motorcycle", "bicycle")))


# Thing classes a per-frame segmenter flips between from one frame to the next (one object, two
# labels): person/rider, car/truck/bus, motorcycle/bicycle. The tracker lets a track match across
# them and takes its class from its history; the synthetic perturbation flips within them.
CONFUSABLE_THINGS: tuple[tuple[int, ...], ...] = tuple(
    tuple(CATEGORY_BY_NAME[n].id for n in names)
    for names in (("person", "rider"), ("car", "truck", "bus"), ("motorcycle", "bicycle")))


def categories_by_id(categories=CITYSCAPES_CATEGORIES) -> dict[int, Category]:
    return {c.id: c for c in categories}


def thing_ids_of(categories: Sequence[Category]) -> tuple[int, ...]:
    """The category ids of the thing classes, in list order."""
    return tuple(c.id for c in categories if c.isthing)


def default_colour(category_id: int) -> tuple[int, int, int]:
    """A stable colour for a category whose JSON gives none (a function of the id alone)."""
    h = zlib.crc32(b"category" + int(category_id).to_bytes(8, "little"))
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


# Stuff segments leave the tracker as ``category_id + 1`` and thing tracks start at 1000
# (operators.association.config.TrackerConfig.first_track_id): ids must stay below 998.
MAX_CATEGORY_ID = 997


def categories_from_json(document: object, where: str) -> tuple[Category, ...]:
    """A model's class list from a COCO-panoptic style document: a list of ``{"id", "name",
    "isthing"[, "color"]}`` records, or a dict with such a list under ``"categories"``.

    Raises :class:`FormatMismatchError` naming ``where`` for a malformed record, a repeated id
    or an id outside 0–997 (the tracker writes stuff as id + 1 below its first track id 1000).
    """
    records = document.get("categories") if isinstance(document, dict) else document
    if not isinstance(records, list) or not records:
        raise FormatMismatchError(where, "categories JSON must be a non-empty list of {id, name, isthing} records "
                                         "(or a dict with one under 'categories')")
    out = []
    for record in records:
        if not isinstance(record, dict) or "id" not in record or "isthing" not in record:
            raise FormatMismatchError(where, f"category record {record!r} lacks 'id' or 'isthing'")
        try:
            category_id = int(record["id"])
            colour = record.get("color")
            colour = tuple(int(v) for v in colour) if colour is not None else default_colour(category_id)
            if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
                raise ValueError(f"color {record.get('color')!r} is not three values in 0-255")
            isthing = record["isthing"]
            if isthing not in (0, 1, True, False):
                raise ValueError(f"isthing {isthing!r} is not 0/1")
            out.append(Category(category_id, str(record.get("name", category_id)), bool(isthing), colour))
        except (TypeError, ValueError) as exc:
            raise FormatMismatchError(where, f"malformed category record {record!r}: {exc}") from None
        if not 0 <= category_id <= MAX_CATEGORY_ID:
            raise FormatMismatchError(where, f"category id {category_id} outside 0-{MAX_CATEGORY_ID}")
    ids = [c.id for c in out]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise FormatMismatchError(where, f"category ids {repeated} are listed more than once")
    return tuple(out)


def read_categories(uri: str) -> tuple[Category, ...]:
    """:func:`categories_from_json` of the JSON file at ``uri`` (any fsspec URI)."""
    from operators import fs

    try:
        document = json.loads(fs.read_bytes(uri))
    except FileNotFoundError:
        raise FormatMismatchError(uri, "categories file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(uri, f"not valid JSON ({exc})") from None
    return categories_from_json(document, uri)


def categories_to_json(categories: Sequence[Category]) -> list[dict]:
    """The list form :func:`categories_from_json` reads (colours included)."""
    return [c.to_json() for c in categories]


def check_against_gt(model: Sequence[Category], gt: Mapping[int, Category] | Sequence[Category],
                     model_name: str) -> None:
    """The model's classes must be classes of the GT it is evaluated against, thing or stuff
    alike (else a metric would meet categories it cannot score). Raises
    :class:`FormatMismatchError` naming the model and the classes that differ."""
    by_id = gt if isinstance(gt, Mapping) else {c.id: c for c in gt}
    missing = [c.id for c in model if c.id not in by_id]
    differ = [c.id for c in model if c.id in by_id and by_id[c.id].isthing != c.isthing]
    if missing or differ:
        parts = ([f"category ids {missing[:10]} are not in the GT's categories"] if missing else []) + \
                ([f"categories {differ[:10]} are things in one and stuff in the other"] if differ else [])
        raise FormatMismatchError(model_name, "the model's categories do not fit the GT: " + "; ".join(parts))
