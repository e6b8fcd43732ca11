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

The input spec and class list an artifact declares are read by :mod:`operators.segmentation.spec`
(no torch there: the driver reads them); this module holds the tensor side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from operators.errors import FormatMismatchError
from operators.segmentation.mask_classification import OUTPUT_NAMES as MASK_NAMES
from operators.segmentation.model import OUTPUT_KEYS
from operators.segmentation.spec import CONTRACTS, InputSpec, ModelSpec, read_model_spec

__all__ = ["CONTRACTS", "InputSpec", "ModelSpec", "contract_outputs", "prepare_input", "read_model_spec"]

def prepare_input(spec: InputSpec, frames: torch.Tensor) -> torch.Tensor:
    """``frames (B, H, W, 3) uint8`` on the device → the model's padded ``(B, 3, H', W')``
    float32 input. The default spec gives exactly ``frames / 255`` edge-replicated."""
    height, width = frames.shape[1:3]
    images = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if spec.channel_order == "BGR":
        images = images.flip(1)
    low, high = spec.value_range
    if (low, high) != (0.0, 1.0):
        images = images * (high - low) + low
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        mean = torch.tensor(spec.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=images.device).view(1, 3, 1, 1)
        images = (images - mean) / std
    padded = spec.padded_size(height, width)
    if padded != (height, width):
        pad = (0, padded[1] - width, 0, padded[0] - height)
        images = F.pad(images, pad, mode="replicate") if spec.padding_value is None else \
            F.pad(images, pad, mode="constant", value=spec.padding_value)
    return images


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
