"""What a hosted model takes and returns: the three output contracts, the input spec and the
class set, read from small JSON files beside a model artifact.

Output contracts (:data:`CONTRACTS`), told apart by the outputs' names (a dict) or shapes (a
tuple in the listed order):

* ``panoptic-deeplab`` — ``semantic (B, C, h, w)``, ``center (B, 1, h, w)``, ``offset (B, 2,
  h, w)`` [, ``embedding (B, D, h, w)``]: the built-in network's bottom-up heads
  (:mod:`operators.segmentation.postprocess`);
* ``mask-classification`` — ``pred_logits (B, Q, K+1)``, ``pred_masks (B, Q, h, w)`` [,
  ``embedding``], or Hugging Face's ``class_queries_logits`` / ``masks_queries_logits``:
  MaskFormer, Mask2Former, OneFormer, kMaX-DeepLab (:mod:`operators.segmentation.mask_classification`);
* ``panoptic-map`` — ``panoptic (B, H, W)`` ids and ``segments (B, N, 3)`` rows (id,
  category_id, score) [, ``embedding``]: a model's own post-processing
  (:mod:`operators.segmentation.panoptic_map`).

Beside an artifact ``model.pt`` (any fsspec URI) the host reads, when present:

* ``model.pt.input.json`` — :class:`InputSpec`: channel order, value range, mean/std, padding
  multiple (default: RGB in [0, 1], padded by replication to a multiple of 32);
* ``model.pt.categories.json`` — the model's classes, COCO-panoptic style (``[{"id", "name",
  "isthing"}, …]``), class index i = entry i (default: the 19 Cityscapes classes).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category, categories_to_json, read_categories
from operators.segmentation.mask_classification import OUTPUT_NAMES as MASK_NAMES
from operators.segmentation.model import OUTPUT_KEYS

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

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames (B, H, W, 3) uint8`` on the device → the model's padded ``(B, 3, H', W')``
        float32 input. The default spec gives exactly ``frames / 255`` edge-replicated."""
        height, width = frames.shape[1:3]
        images = frames.permute(0, 3, 1, 2).float().div_(255.0)
        if self.channel_order == "BGR":
            images = images.flip(1)
        low, high = self.value_range
        if (low, high) != (0.0, 1.0):
            images = images * (high - low) + low
        if self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0):
            mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
            images = (images - mean) / std
        padded = self.padded_size(height, width)
        if padded != (height, width):
            pad = (0, padded[1] - width, 0, padded[0] - height)
            images = F.pad(images, pad, mode="replicate") if self.padding_value is None else \
                F.pad(images, pad, mode="constant", value=self.padding_value)
        return images


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


def _describe(outputs: object) -> str:
    if isinstance(outputs, dict):
        return f"a dict with keys {sorted(outputs)}"
    if isinstance(outputs, (tuple, list)):
        shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in outputs]
        return f"a {type(outputs).__name__} of {shapes}"
    return type(outputs).__name__


def _contract_of_dict(outputs: dict) -> tuple[str, dict] | None:
    for logits, masks in MASK_NAMES:
        if logits in outputs and masks in outputs:
            named = {"pred_logits": outputs[logits], "pred_masks": outputs[masks]}
            return "mask-classification", {**named, **({"embedding": outputs["embedding"]}
                                                        if "embedding" in outputs else {})}
    if "panoptic" in outputs and "segments" in outputs:
        return "panoptic-map", {k: outputs[k] for k in ("panoptic", "segments", "embedding") if k in outputs}
    if all(k in outputs for k in OUTPUT_KEYS[:3]):
        return "panoptic-deeplab", outputs
    return None


def _contract_of_sequence(outputs: tuple | list) -> tuple[str, dict] | None:
    """By shapes: Panoptic-DeepLab's 3 or 4 heads; (logits, masks[, embedding]) — or a longer
    tuple led by logits and masks, as Hugging Face models traced with ``torchscript=True``
    return them (the rest is hidden states, left alone); (panoptic, segments[, embedding])."""
    if len(outputs) < 2 or not all(isinstance(v, torch.Tensor) for v in outputs[:2]):
        return None
    first, second = outputs[0], outputs[1]
    if first.dim() == 4 and len(outputs) in (3, 4) and all(isinstance(v, torch.Tensor) for v in outputs):
        return "panoptic-deeplab", dict(zip(OUTPUT_KEYS, outputs))
    extra = {"embedding": outputs[2]} if len(outputs) == 3 and isinstance(outputs[2], torch.Tensor) else {}
    if first.dim() == 3 and first.is_floating_point() and second.dim() == 4:
        return "mask-classification", {"pred_logits": first, "pred_masks": second, **extra}
    if first.dim() == 3 and not first.is_floating_point() and second.dim() == 3 and len(outputs) <= 3:
        return "panoptic-map", {"panoptic": first, "segments": second, **extra}
    return None


def contract_outputs(outputs: object, contract: str | None, where: str) -> tuple[str, dict]:
    """Which contract ``outputs`` speak, and their tensors under the contract's names.

    ``contract``: the one the user named (None: detect). Raises :class:`FormatMismatchError`
    naming ``where`` when the outputs speak none of the contracts, or another than named.
    """
    found = None
    if isinstance(outputs, dict):
        found = _contract_of_dict(outputs)
    elif isinstance(outputs, (tuple, list)):
        found = _contract_of_sequence(outputs)
    if found is None:
        raise FormatMismatchError(where, f"model returned {_describe(outputs)}, which is none of the contracts: "
                                         f"{list(OUTPUT_KEYS[:3])} [+ 'embedding'] (panoptic-deeplab), "
                                         "pred_logits/pred_masks or class_queries_logits/masks_queries_logits "
                                         "(mask-classification), panoptic/segments (panoptic-map)")
    if contract is not None and found[0] != contract:
        raise FormatMismatchError(where, f"model returned {_describe(outputs)}: the {found[0]} contract, "
                                         f"but the {contract} contract was named")
    return found
