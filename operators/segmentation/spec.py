"""What the driver needs to know of a segmentation model without loading it (no torch here):
the output contracts' names, the input spec and class list read from the JSON files beside an
artifact, where the built-in weights are, which inference options the built-in recipe runs,
and the inference's thresholds (bottom-up grouping, mask classification). The config hash and the command line read these; the
model host (:mod:`operators.segmentation.host`) and its tensor code
(:mod:`operators.segmentation.contracts`) use them.

Beside an artifact ``model.pt`` (any fsspec URI) the host reads, when present:

* ``model.pt.input.json`` — :class:`InputSpec`: channel order, value range, mean/std, padding
  multiple (default: RGB in [0, 1], padded by replication to a multiple of 32);
* ``model.pt.categories.json`` — the model's classes, COCO-panoptic style (``[{"id", "name",
  "isthing"}, …]``), class index i = entry i (default: the 19 Cityscapes classes).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category, categories_to_json, read_categories

BUILTIN_WEIGHTS = str(Path(__file__).parent / "weights" / "panoptic_synth.pt")


def builtin_default(backend: str, asked: bool | None) -> bool:
    """Whether a host runs an inference option of the built-in network's recipe (flip and
    half-cell shift test-time augmentation, guided refinement of the semantic map): as
    ``asked``, and when not told (None) for the built-in network (its shipped PQ is measured
    with them), not for a user's artifact (whose cost we would multiply, and whose outputs we
    would alter, unasked)."""
    return backend == "builtin" if asked is None else bool(asked)


CONTRACTS = ("panoptic-deeplab", "mask-classification", "panoptic-map")
INPUT_SPEC_SUFFIX = ".input.json"
CATEGORIES_SUFFIX = ".categories.json"


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input ``(B, 3, H, W) float32``.

    ``channel_order`` "RGB" or "BGR"; ``value_range`` (lo, hi): pixel value 0 → lo, 255 → hi;
    then ``(x - mean) / std`` per channel (in the model's channel order and value range);
    H and W padded at the bottom/right to multiples of ``padding_multiple``, by replicating
    the edge (``padding_value`` None) or with a constant in the model's input space (e.g. 0.0
    after normalisation, as detectron2's ImageList pads).
    """

    channel_order: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    padding_multiple: int = 32
    padding_value: float | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        for name, size in (("value_range", 2), ("mean", 3), ("std", 3)):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != size or not all(np.isfinite(value)):
                raise ValueError(f"{name} must be {size} finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")
        if isinstance(self.padding_multiple, bool) or int(self.padding_multiple) != self.padding_multiple \
                or self.padding_multiple < 1:
            raise ValueError(f"padding_multiple must be a whole number ≥ 1, got {self.padding_multiple!r}")
        object.__setattr__(self, "padding_multiple", int(self.padding_multiple))
        if self.padding_value is not None:
            object.__setattr__(self, "padding_value", float(self.padding_value))

    @classmethod
    def from_json(cls, document: object, where: str) -> "InputSpec":
        if not isinstance(document, dict):
            raise FormatMismatchError(where, "input spec must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(document) - known)
        if unknown:
            raise FormatMismatchError(where, f"unknown input spec fields {unknown} (known: {sorted(known)})")
        try:
            return cls(**document)
        except (TypeError, ValueError) as exc:
            raise FormatMismatchError(where, f"invalid input spec: {exc}") from None

    def to_json(self) -> dict:
        return asdict(self)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        m = self.padding_multiple
        return -(-height // m) * m, -(-width // m) * m


@dataclass(frozen=True)
class ModelSpec:
    """A hosted model's input spec and class list (the class index i is ``categories[i]``)."""

    input: InputSpec = field(default_factory=InputSpec)
    categories: tuple[Category, ...] = CITYSCAPES_CATEGORIES

    def to_json(self) -> dict:
        return {"input": self.input.to_json(), "categories": categories_to_json(self.categories)}

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.categories)

    @property
    def thing_indices(self) -> tuple[int, ...]:
        """Class indices of the thing classes."""
        return tuple(i for i, c in enumerate(self.categories) if c.isthing)


def read_model_spec(model_uri: str) -> ModelSpec:
    """The :class:`ModelSpec` of an artifact from the JSON files beside it (defaults where absent)."""
    spec_uri, categories_uri = model_uri + INPUT_SPEC_SUFFIX, model_uri + CATEGORIES_SUFFIX
    spec = InputSpec()
    if fs.exists(spec_uri):
        try:
            document = json.loads(fs.read_bytes(spec_uri))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFileError(spec_uri, f"not valid JSON ({exc})") from None
        spec = InputSpec.from_json(document, spec_uri)
    categories = read_categories(categories_uri) if fs.exists(categories_uri) else CITYSCAPES_CATEGORIES
    return ModelSpec(spec, categories)


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of the grouping. Areas and the NMS kernel are in pixels of the output (input)
    resolution.

    Tuned at 256×512 on the tuning seed 555000 (80 frames; never the held-out seed). A wide NMS
    window removes the network's spurious secondary peaks that split objects (session-3
    weights a3f2bd24: kernel 7 → 31, PQ 43.5 → 45.5); the longer-trained weights of session 4
    have higher peaks, and a higher threshold drops their weak spurious ones (0c943383 with the
    human/vehicle groups: threshold 0.05 / 0.1 / 0.2 / 0.3 → PQ 53.4 / 54.0 / 54.2 / 54.3);
    kernels 25–31 are within 0.1 of each other. Session 5, shipped weights 6359633c with flip
    augmentation and the four thing groups: threshold 0.2 / 0.3 / 0.4 / 0.5 / 0.6 at kernel 41
    → PQ 57.5 / 57.9 / 58.6 / 58.3 / 56.4, kernel 31 / 41 / 51 at 0.3 → 57.4 / 57.9 / 57.9
    (model card: operators/segmentation/weights/MODEL_CARD.md). A pixel whose own object has no center still joins an instance — that
    of the nearest center, split off by its class group — so fewer, surer centers pay.
    """

    center_threshold: float = 0.4
    nms_kernel: int = 41
    top_k: int = 64
    stuff_area: int = 64
    # 64 → 32 with the guided refinement (session 7, b041d594: thing_area 16 / 24 / 32 / 48 / 64 →
    # tuning PQ 64.6 / 64.7 / 64.7 / 64.6 / 64.4; shipped ae4d2507: 63.4 at 32, 63.0 at 64): sharper
    # masks make small things worth keeping.
    thing_area: int = 32
    # Guided refinement of the semantic map (``SegmentationHost(refine=)``, ``refine.py``):
    # window radius (pixels of the output), ε of the ridge fit (colours in [0, 1]) and the Fast
    # Guided Filter's subsampling. Session 7, session 6's weights b041d594, flip + shift, tuning seed
    # 555000 (60.3 without): radius 4 / 6 / 8 / 10 (subsample 1, ε 1e-4) → PQ 63.2 / 63.6 / 63.8
    # / 63.2; ε 1e-3 / 1e-4 / 1e-5 (radius 6–8) → 62.8 / 63.6–63.8 / 63.9–64.1; subsample 2 /
    # 4 (radius 8, ε 1e-5) → 64.3 / 63.8 against 64.1 at 1, for a quarter / a sixteenth of the
    # work; radius 6 / 8 / 10 at subsample 2 → 64.4 / 64.3 / 63.7. A grey guide instead of
    # RGB: 60.8 at best (the synthetic corpus's edges are colour edges).
    refine_radius: int = 6
    refine_eps: float = 1e-5
    refine_subsample: int = 2


@dataclass(frozen=True)
class MaskClassificationConfig:
    """Thresholds of the panoptic inference (Mask2Former's defaults for its panoptic models:
    ``OBJECT_MASK_THRESHOLD`` 0.8, ``OVERLAP_THRESHOLD`` 0.8)."""

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        for name in ("object_mask_threshold", "overlap_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
