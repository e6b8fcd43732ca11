"""Device placement of model hosts (segmentation and flow).

Ray gives an actor GPUs by setting ``CUDA_VISIBLE_DEVICES`` to the ids it reserved (and,
for an actor with ``num_gpus=0``, to an empty string), so a host placed by Ray sees a GPU
exactly when it was given one. Outside Ray the variable is usually unset and any visible
GPU is used. On a GPU the forward pass runs under autocast — bf16 where the card supports
it (no loss scaling needed, fp32 range), else fp16 — and host→device copies go through
pinned (page-locked) memory so they can overlap with compute.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Placement:
    """Where and how a host runs: ``device``, autocast dtype (None = fp32), pinned transfers."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    pin_memory: bool

    def autocast(self):
        """Context manager for the forward pass (no-op on fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """Copy a host array to the device, through pinned memory on CUDA."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.pin_memory:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


def gpu_assigned(environ: dict[str, str] | None = None) -> bool:
    """True unless ``CUDA_VISIBLE_DEVICES`` is set and lists no device (Ray: ``num_gpus=0``)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return visible is None or visible.strip() not in ("", "-1", "none", "None")


def select_placement(device: str = "auto", precision: str = "auto", cuda_available: bool | None = None,
                     bf16_supported: bool | None = None, environ: dict[str, str] | None = None) -> Placement:
    """Choose the device and precision of a host.

    ``device``: "auto" (CUDA when available *and* assigned, else CPU), "cpu", "cuda", "cuda:N".
    ``precision``: "auto" (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU),
    "fp32", "bf16", "fp16". The ``cuda_available`` / ``bf16_supported`` / ``environ`` arguments
    exist so the decision can be tested on a machine without a GPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if device == "auto":
        chosen = torch.device("cuda" if cuda_available and gpu_assigned(environ) else "cpu")
    else:
        chosen = torch.device(device)
        if chosen.type == "cuda" and not cuda_available:
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if chosen.type != "cuda":
        dtype = {"auto": None, "fp32": None, "bf16": torch.bfloat16, "fp16": None}[precision]
        return Placement(chosen, dtype, pin_memory=False)  # fp16 autocast on CPU is slow and lossy
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    dtype = {"auto": torch.bfloat16 if bf16_supported else torch.float16, "fp32": None,
             "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Placement(chosen, dtype, pin_memory=True)
