"""Category definitions: the 19 Cityscapes(-VPS) classes, ids 0–18, things 11–18."""
from __future__ import annotations

from dataclasses import dataclass


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
# both synthetic seeds (README "Models": held-out PQ 56.5 → 57.6 with flip augmentation).
CITYSCAPES_THING_GROUPS: tuple[tuple[int, ...], ...] = tuple(
    tuple(CATEGORY_BY_NAME[n].id for n in names)
    for names in (("person", "rider"), ("car",), ("truck", "bus", "train"), ("motorcycle", "bicycle")))


def categories_by_id(categories=CITYSCAPES_CATEGORIES) -> dict[int, Category]:
    return {c.id: c for c in categories}
