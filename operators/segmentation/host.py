"""The segmentation model host: load a model once, map batches of frames to panoptic segments.

A thin callable class in the style of Ray Data batch inference (``map_batches(
SegmentationHost, fn_constructor_kwargs=…, concurrency=…, num_gpus=…)``); it knows nothing
about Ray. Two backends (and, with the same interface, predictions made elsewhere:
:class:`~operators.segmentation.precomputed.PrecomputedSegmenter`; :func:`open_segmenter`
builds either):

* ``builtin`` — :class:`~operators.segmentation.model.PanopticNet` with the weights shipped in
  ``operators/segmentation/weights/`` (or any weights URI from ``tubeflow train``);
* ``artifact`` — a user's TorchScript or ``torch.export`` (``.pt2``) model speaking one of the
  output contracts of :mod:`operators.segmentation.contracts` — Panoptic-DeepLab's heads
  (``semantic``/``center``/``offset``/``embedding``, as the built-in network), mask
  classification (``pred_logits``/``pred_masks``, Mask2Former's panoptic inference) or a
  finished panoptic map (``panoptic``/``segments``) — detected from its outputs or named
  (``contract=``), checked on every batch so a broken model fails with its name and the input,
  not deep in post-processing. Its input spec and classes come from the JSON files beside it
  (default: RGB in [0, 1] padded to multiples of 32; the 19 Cityscapes classes).

``segment(frames, image_ids)`` maps a list of ``(H, W, 3) uint8`` frames to a list of
:class:`~operators.segmentation.postprocess.FrameSegments`; the Ray wrapper is the label
pipeline's (``pipelines/label/stages.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from operators.errors import FormatMismatchError, InputError
from operators.formats.categories import (CITYSCAPES_CATEGORIES, CITYSCAPES_THING_GROUPS, CITYSCAPES_THING_IDS,
                                          Category, default_colour)
from operators.formats.panoptic import PanopticFrame
from operators.device import Placement, select_placement
from operators.segmentation.contracts import CONTRACTS, ModelSpec, contract_outputs, prepare_input, read_model_spec
from operators.segmentation.loading import load_artifact, load_builtin, validate_outputs
from operators.segmentation.mask_classification import (MaskClassificationConfig, mask_classification_panoptic,
                                                        validate_mask_outputs)
from operators.segmentation.panoptic_map import check_stride, frame_segments, maps_from_outputs
from operators.segmentation.model import SIZE_DIVISOR
from operators.segmentation.precomputed import PrecomputedSegmenter
from operators.segmentation.postprocess import (FrameSegments, PostprocessConfig, average_with_mirror,
                                                average_with_shifted, mask_pool, panoptic_postprocess,
                                                translate_images, upsample_outputs)
from operators.segmentation.refine import refine_semantic
from operators.segmentation.spec import BUILTIN_WEIGHTS, builtin_default

BACKENDS = ("builtin", "artifact")
"""The networks a host runs; ``precomputed`` predictions are served by :class:`PrecomputedSegmenter`."""


def default_batch_size(placement: Placement) -> int:
    """Frames per forward pass when the caller does not say: 8 on a GPU, which needs batches
    to fill it; 1 on the CPU, where batching is slower (built-in model at 512×1024, one
    thread: 270–324 ms/frame at batch 1, 368 at batch 4 — the batch's activations and
    full-resolution post-processing tensors fall out of the caches)."""
    return 8 if placement.device.type == "cuda" else 1


class SegmentationHost:
    """``SegmentationHost(backend, model_uri, …).segment(frames)`` → per-frame panoptic segments + embeddings.

    ``model_uri``: weights (builtin; default the shipped file) or the artifact's URI. ``categories``: the model's classes, class index i = entry i
    (default: an artifact's categories JSON, else the 19 Cityscapes classes, things 11–18; the
    built-in network's from its weights). ``contract``: an artifact's output contract (None:
    detected from its first outputs, then held to); ``mask_classification``: the thresholds of
    the mask-classification inference. ``thing_groups``: thing classes that
    may share an instance (see :func:`panoptic_postprocess`); default
    ``CITYSCAPES_THING_GROUPS`` (human, car, large vehicles, two-wheelers) for the Cityscapes
    classes, none for other classes. ``channels_last`` (default: for the
    built-in network only) gives the network NHWC tensors, which oneDNN's and cuDNN's
    convolutions prefer (built-in forward at 512×1024, one core: 100 ms vs 157 ms from an
    NCHW-contiguous input). Artifacts get NCHW-contiguous input, as the contract's shape
    says: a user's graph may ``view`` its input in a way only that layout allows.
    ``flip`` (test-time augmentation, default: on for the built-in network only) runs the
    network on every frame and on its mirror image and averages the two sets of heads
    (:func:`~operators.segmentation.postprocess.average_with_mirror`): two forward passes per
    frame, ~20 % more host time on CPU, held-out PQ 56.8 → 58.6 with session 6's weights
    b041d594 (model card: operators/segmentation/weights/MODEL_CARD.md). ``shift`` (default: the same) also runs the network on every frame
    moved by half a cell of the heads' grid (2 px for the stride-4 built-in network) and
    averages both sets of heads at full resolution
    (:func:`~operators.segmentation.postprocess.average_with_shifted`): twice the forward
    passes again, for the finer sampling that thin and small segments need: held-out 58.6 →
    59.1, tuning seed 59.0 → 60.3 (model card: operators/segmentation/weights/MODEL_CARD.md). ``refine`` (default: the same) snaps the
    semantic map to the frame's edges before the grouping: the class probabilities, upsampled
    from the heads' stride-4 grid, are guided-filtered with the frame as the guide
    (:func:`~operators.segmentation.refine.refine_semantic`; radius, ε and subsampling in
    ``postprocess``): with b041d594, tuning seed 60.3 → 64.4, held-out 59.1 → 65.3 (model card: operators/segmentation/weights/MODEL_CARD.md).
    """

    def __init__(self, backend: str = "builtin", model_uri: str | None = None, batch_size: int | None = None,
                 device: str = "auto", precision: str = "auto", postprocess: PostprocessConfig = PostprocessConfig(),
                 categories: Sequence[Category] | None = None, contract: str | None = None,
                 mask_classification: MaskClassificationConfig = MaskClassificationConfig(),
                 channels_last: bool | None = None, thing_groups: Sequence[Sequence[int]] | None = None,
                 flip: bool | None = None, shift: bool | None = None, refine: bool | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown segmentation backend {backend!r}; choose one of {BACKENDS}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        if contract not in (None, *CONTRACTS) or (contract not in (None, "panoptic-deeplab") and backend != "artifact"):
            raise ValueError(f"contract {contract!r}: an artifact speaks one of {CONTRACTS}; the built-in network "
                             "panoptic-deeplab")
        self.backend, self.postprocess, self.mask_classification = backend, postprocess, mask_classification
        self.placement: Placement = select_placement(device, precision)
        self.batch_size = batch_size or default_batch_size(self.placement)
        self.model_uri = model_uri or (BUILTIN_WEIGHTS if backend == "builtin" else None)
        if self.model_uri is None:
            raise ValueError(f"backend {backend!r} needs model_uri")
        self.spec = read_model_spec(self.model_uri) if backend == "artifact" else ModelSpec()
        if categories is not None:
            self.spec = ModelSpec(self.spec.input, tuple(categories))
        self.contract = contract if backend == "artifact" else "panoptic-deeplab"
        self._set_classes()
        if backend == "builtin":
            if not Path(self.model_uri).exists() and "://" not in self.model_uri:
                raise InputError(self.model_uri, "built-in weights not found; train them with `tubeflow train`")
            net, self.model_sha256 = load_builtin(self.model_uri)
            if categories is None and (net.config.num_classes, tuple(net.config.thing_ids)) != \
                    (len(CITYSCAPES_CATEGORIES), CITYSCAPES_THING_IDS):
                self.spec = ModelSpec(self.spec.input, tuple(
                    Category(i, f"class {i}", i in net.config.thing_ids, default_colour(i))
                    for i in range(net.config.num_classes)))
                self._set_classes()
            if (net.config.num_classes, tuple(net.config.thing_ids)) != (self.num_classes, self.thing_ids):
                raise ValueError(f"{self.model_uri}: the network has {net.config.num_classes} classes, things "
                                 f"{tuple(net.config.thing_ids)}; the categories given say {self.num_classes}, "
                                 f"things {self.thing_ids}")
            self.model = net
        else:
            self.model, self.model_sha256 = load_artifact(self.model_uri)
        self.thing_groups = self._thing_groups(thing_groups)
        self.channels_last = backend == "builtin" if channels_last is None else channels_last
        self.flip, self.shift = builtin_default(backend, flip), builtin_default(backend, shift)
        self.refine = builtin_default(backend, refine)
        self._check_augmentation()
        self.model = self.model.to(self.placement.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _set_classes(self) -> None:
        """Class indices of the things, class count, and the category id of each class index."""
        self.categories = self.spec.categories
        self.thing_ids = self.spec.thing_indices  # class indices (= category ids for Cityscapes)
        self.num_classes = len(self.categories)
        self._is_thing = torch.tensor([c.isthing for c in self.categories], dtype=torch.bool)

    def _check_augmentation(self) -> None:
        """Flip, shift and refinement act on Panoptic-DeepLab's heads; no other contract has them."""
        asked = [name for name in ("flip", "shift", "refine") if getattr(self, name)]
        if asked and self.contract not in (None, "panoptic-deeplab"):
            raise ValueError(f"model {self.model_uri}: {'/'.join(asked)} act on the panoptic-deeplab contract's "
                             f"heads; this model speaks the {self.contract} contract")

    def _thing_groups(self, groups: Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...]:
        """Default: ``CITYSCAPES_THING_GROUPS`` when the model has the Cityscapes
        classes, else none (one majority vote per center, as in Panoptic-DeepLab)."""
        if groups is None:
            cityscapes = self.num_classes == len(CITYSCAPES_CATEGORIES) and self.thing_ids == CITYSCAPES_THING_IDS
            return CITYSCAPES_THING_GROUPS if cityscapes else ()
        groups = tuple(tuple(int(c) for c in group) for group in groups)
        strays = sorted({c for group in groups for c in group} - set(self.thing_ids))
        if strays:
            raise ValueError(f"thing_groups name classes {strays} that are not thing classes of {self.model_uri}")
        return groups

    # ---- public API ---------------------------------------------------------------------

    def segment(self, frames: list[np.ndarray], image_ids: Sequence[object] | None = None) -> list[FrameSegments]:
        """Segment frames ``(H, W, 3) uint8``; raises an :class:`InputError` naming a bad frame."""
        names = [str(i) for i in image_ids] if image_ids is not None else [f"frame {i}" for i in range(len(frames))]
        for frame, name in zip(frames, names):
            self._check_frame(frame, name)
        results: list[FrameSegments | None] = [None] * len(frames)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, frame in enumerate(frames):
            by_size.setdefault(frame.shape[:2], []).append(index)
        for indices in by_size.values():  # one forward per (size, batch_size) chunk
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                outputs = self._forward(np.stack([frames[i] for i in chunk]), [names[i] for i in chunk])
                for i, result in zip(chunk, outputs):
                    results[i] = result
        return results

    @torch.inference_mode()
    def embed_segments(self, frames: list[np.ndarray], panoptic: list[PanopticFrame]) -> list[np.ndarray]:
        """The network's MaskPool embeddings of *given* segments (e.g. another segmenter's, or
        GT): per frame ``(N, D) float32``, row i for ``panoptic[i].segments[i]``."""
        out = []
        for index, (frame, target) in enumerate(zip(frames, panoptic)):
            self._check_frame(frame, f"frame {index}")
            height, width = frame.shape[:2]
            images = self._padded_images(frame[None])
            where = f"model {self.model_uri} on frame {index}"
            outputs = self._outputs(images, where)
            if self.contract == "panoptic-deeplab":
                embedding = self._heads(images, True, where, outputs)["embedding"]
            elif "embedding" in outputs:
                embedding = check_stride("embedding", outputs["embedding"], tuple(images.shape[-2:]), where, 1)
            else:
                raise InputError(self.model_uri, f"the model's {self.contract} outputs have no 'embedding' to "
                                                 "embed segments with")
            embedding = upsample_outputs({"embedding": embedding}, tuple(images.shape[-2:]))["embedding"]
            ids = torch.from_numpy(target.ids).to(embedding.device)
            seg_ids = torch.tensor([s.id for s in target.segments], device=embedding.device)
            masks = (ids[None] == seg_ids[:, None, None]).float()
            out.append(mask_pool(embedding[:, :, :height, :width], masks[None])[0].float().cpu().numpy())
        return out

    # ---- internals ----------------------------------------------------------------------

    def _padded_images(self, frames: np.ndarray) -> torch.Tensor:
        """``(B, H, W, 3) uint8`` → the model's ``(B, 3, H', W')`` float input on the device, as
        its input spec says (default: RGB in [0, 1], padded bottom/right by replication to
        multiples of 32 as the built-in network needs)."""
        images = prepare_input(self.spec.input, self.placement.to_device(frames))
        # the permuted frames are NHWC in memory already; say which layout the model gets
        return images.contiguous(memory_format=self._memory_format)

    def _outputs(self, images: torch.Tensor, where: str) -> dict[str, torch.Tensor]:
        """The model's outputs for a padded batch under its contract's names; the contract of
        an artifact that names none is taken from its first outputs and held to afterwards."""
        with self.placement.autocast():
            outputs = self.model(images)
        if self.backend == "builtin":
            return outputs
        contract, named = contract_outputs(outputs, self.contract, where)
        if self.contract is None:
            self.contract = contract
            self._check_augmentation()
        return named

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _heads(self, images: torch.Tensor, embedding_required: bool, where: str,
               outputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The heads for a padded batch: :meth:`_network_heads` (from ``outputs`` when the
        network ran already), averaged with those of the batch moved by half a cell of the
        heads' grid when ``self.shift``."""
        heads = self._network_heads(images, embedding_required, where, outputs)
        shift = (images.shape[-2] // heads["center"].shape[-2]) // 2 if self.shift else 0
        if shift == 0:  # off, or heads at full resolution: no cell to look between
            return heads
        moved = translate_images(images, shift).contiguous(memory_format=self._memory_format)
        shifted = self._network_heads(moved, embedding_required, f"{where}, moved by {shift} px")
        return average_with_shifted(heads, shifted, shift, tuple(images.shape[-2:]))

    def _network_heads(self, images: torch.Tensor, embedding_required: bool, where: str,
                       outputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The network's checked heads for a padded batch, averaged with those of its mirror
        image when ``self.flip``."""
        outputs = self._outputs(images, where) if outputs is None else outputs
        heads = validate_outputs(outputs, images, self.num_classes, embedding_required, where)
        if not self.flip:
            return heads
        mirror = images.flip(-1)
        where = f"{where}, mirrored"
        mirrored = validate_outputs(self._outputs(mirror, where), mirror, self.num_classes, embedding_required, where)
        return average_with_mirror(heads, mirrored)

    def _check_frame(self, frame: object, name: str) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            kind = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise FormatMismatchError(name, f"model {self.model_uri}: expected an (H, W, 3) uint8 RGB frame, got {kind}")
        if min(frame.shape[:2]) < SIZE_DIVISOR:
            raise FormatMismatchError(name, f"model {self.model_uri}: frame {frame.shape[1]}x{frame.shape[0]} is "
                                            f"smaller than {SIZE_DIVISOR} pixels")

    @torch.inference_mode()
    def _forward(self, frames: np.ndarray, names: list[str]) -> list[FrameSegments]:
        """``frames (B, H, W, 3) uint8`` → post-processed segments, on the host's device."""
        height, width = frames.shape[1:3]
        images = self._padded_images(frames)
        padded = tuple(images.shape[-2:])
        where = f"model {self.model_uri} on input {names[0]}" + (f" … {names[-1]}" if len(names) > 1 else "") + \
                f" ({len(names)} frames {width}x{height})"
        outputs = self._outputs(images, where)
        if self.contract == "mask-classification":
            named = validate_mask_outputs(outputs, images, self.num_classes, where)
            maps = mask_classification_panoptic(named["pred_logits"], named["pred_masks"], padded, (height, width),
                                                self._is_thing, self.mask_classification)
            return frame_segments(maps, self.spec.category_ids, named.get("embedding"), padded)
        if self.contract == "panoptic-map":
            maps = maps_from_outputs(outputs, padded, (height, width), self.num_classes, where, names)
            embedding = check_stride("embedding", outputs["embedding"], padded, where, len(names)) \
                if "embedding" in outputs else None
            return frame_segments(maps, self.spec.category_ids, embedding, padded)
        heads = self._heads(images, self.backend == "builtin", where, outputs)
        full = upsample_outputs(heads, padded)
        if self.refine:  # on the padded frames, whose sides are multiples of the filter's subsampling
            config = self.postprocess
            full["semantic"] = refine_semantic(full["semantic"], images, config.refine_radius, config.refine_eps,
                                               config.refine_subsample)
        cropped = {k: v[..., :height, :width] for k, v in full.items()}
        if "embedding" not in cropped:  # an artifact without an embedding head: zero-width embeddings
            cropped["embedding"] = cropped["center"][:, :0]
        results = panoptic_postprocess(cropped, (height, width), self.thing_ids, self.postprocess, self.thing_groups)
        if self.spec.category_ids != tuple(range(self.num_classes)):  # class index → the model's category id
            for result in results:
                for segment in result.segments:
                    segment.category_id = self.spec.category_ids[segment.category_id]
        return results


def open_segmenter(backend: str, model_uri: str | None = None, **options) -> "SegmentationHost | PrecomputedSegmenter":
    """The segmenter a pipeline names: a network host (``builtin``, ``artifact``) with its
    options, or ``precomputed`` predictions in the submission layout at ``model_uri``."""
    if backend == "precomputed":
        if not model_uri:
            raise ValueError("precomputed predictions need model_uri (their directory)")
        return PrecomputedSegmenter(model_uri)
    return SegmentationHost(backend, model_uri, **options)
