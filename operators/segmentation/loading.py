"""Loading and saving segmentation models from any fsspec URI, safely.

* Built-in weights: ``torch.save({"format": …, "config": {…}, "state_dict": {…}})`` read
  back with ``torch.load(weights_only=True)`` — only tensors and plain containers are
  unpickled, never arbitrary objects. They are stored in fp16 (half the size; the
  network runs in fp32 on CPU, the rounding costs < 0.1 PQ).
* Artifacts: TorchScript (``torch.jit.save``) or ``torch.export`` programs (``.pt2``); both
  are graph formats, not pickles of user classes.
* Every model is identified by the SHA-256 of its file, recorded in the outputs.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass

import torch

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.segmentation.model import OUTPUT_KEYS, PanopticNet, PanopticNetConfig

WEIGHTS_FORMAT = "tubeflow.panoptic-net.v1"


@dataclass(frozen=True)
class ModelFile:
    uri: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def read_model_file(uri: str) -> ModelFile:
    """The bytes of a model file. Raises :class:`InputError` naming ``uri`` when absent."""
    try:
        return ModelFile(str(uri), fs.read_bytes(uri))
    except FileNotFoundError:
        raise InputError(uri, "model file not found") from None


def save_builtin(model: PanopticNet, uri: str, half: bool = True) -> str:
    """Write ``model``'s weights (fp16 by default) with its config; returns the file's SHA-256."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": WEIGHTS_FORMAT, "config": model.config.to_json(), "state_dict": state}, buffer)
    data = buffer.getvalue()
    fs.write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


def load_builtin(uri: str) -> tuple[PanopticNet, str]:
    """The built-in :class:`PanopticNet` from a weights file → (model in eval mode, SHA-256).

    Raises :class:`CorruptFileError` when the file is not a readable weights file and
    :class:`FormatMismatchError` when its tensors do not fit the architecture.
    """
    file = read_model_file(uri)
    try:
        record = torch.load(io.BytesIO(file.data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError) as exc:
        raise CorruptFileError(uri, f"not a readable torch weights file ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(record, dict) or record.get("format") != WEIGHTS_FORMAT:
        raise FormatMismatchError(uri, f"not built-in PanopticNet weights (expected a dict with format "
                                       f"{WEIGHTS_FORMAT!r}; save them with operators.segmentation.loading.save_builtin)")
    try:
        config = PanopticNetConfig.from_json(record["config"])
        model = PanopticNet(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatMismatchError(uri, f"invalid PanopticNet config in weights file: {exc}") from None
    state = record.get("state_dict")
    if not isinstance(state, dict):
        raise FormatMismatchError(uri, "weights file has no state_dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shapes {wrong[:5]}" if wrong else ""]
        raise FormatMismatchError(uri, "weights do not fit the PanopticNet architecture: "
                                       + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval(), file.sha256


def load_artifact(uri: str) -> tuple[torch.nn.Module, str]:
    """A TorchScript or ``torch.export`` (``.pt2``) artifact → (callable module, SHA-256)."""
    file = read_model_file(uri)
    try:
        if str(uri).endswith(".pt2"):
            module = torch.export.load(io.BytesIO(file.data)).module()
        else:
            module = torch.jit.load(io.BytesIO(file.data), map_location="cpu").eval()
    except Exception as exc:  # torch raises a zoo of types for a bad archive; all mean "unreadable"
        raise CorruptFileError(uri, f"cannot load model artifact ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return module, file.sha256


def validate_outputs(outputs: object, images: torch.Tensor, num_classes: int, embedding_required: bool,
                     where: str) -> dict[str, torch.Tensor]:
    """Check a model's outputs against the contract of :mod:`operators.segmentation.model`.

    Accepts a dict with the four keys or a tuple/list in ``OUTPUT_KEYS`` order. Returns the
    dict. Raises :class:`FormatMismatchError` naming ``where`` (model and input).
    """
    if isinstance(outputs, (tuple, list)) and len(outputs) == len(OUTPUT_KEYS):
        outputs = dict(zip(OUTPUT_KEYS, outputs))
    if not isinstance(outputs, dict):
        raise FormatMismatchError(where, f"model returned {type(outputs).__name__}; the contract is a dict "
                                         f"with keys {list(OUTPUT_KEYS)}")
    required = OUTPUT_KEYS if embedding_required or "embedding" in outputs else OUTPUT_KEYS[:3]
    absent = [k for k in required if k not in outputs]
    if absent:
        raise FormatMismatchError(where, f"model outputs lack {absent} (got {sorted(outputs)})")
    batch, _, height, width = images.shape
    channels = {"semantic": num_classes, "center": 1, "offset": 2}
    for key in required:
        value = outputs[key]
        if not isinstance(value, torch.Tensor) or value.dim() != 4 or value.shape[0] != batch:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise FormatMismatchError(where, f"output {key!r} must be a (B={batch}, C, h, w) tensor, got {shape}")
        if key in channels and value.shape[1] != channels[key]:
            raise FormatMismatchError(where, f"output {key!r} has {value.shape[1]} channels, expected {channels[key]}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise FormatMismatchError(where, f"output {key!r} must be finite floating point")
        h, w = value.shape[-2:]
        if height % h or width % w or height // h != width // w:
            raise FormatMismatchError(where, f"output {key!r} of size {(h, w)} is not the input size "
                                             f"{(height, width)} divided by one integer stride")
    # Center, offset and embedding describe instances on one grid (the training losses sample
    # their targets there); only the class map, the semantic logits, may be finer.
    grid = {key: tuple(outputs[key].shape[-2:]) for key in required if key != "semantic"}
    if len(set(grid.values())) > 1:
        raise FormatMismatchError(where, f"outputs differ in spatial size: {grid}; center, offset and embedding "
                                         "must share one stride")
    return {k: outputs[k] for k in required}
