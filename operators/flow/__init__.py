"""Dense optical flow operators. Contract: ``estimator(current, previous)`` with two
``(H, W, 3) uint8`` RGB frames returns ``(H, W, 2) float32`` flow *current → previous*
(see :mod:`operators.formats.flo`).

Backends (``make_flow(name, **options)``):

* ``dis`` — OpenCV DIS (Kroeger et al., ECCV 2016), CPU, ``preset`` ultrafast/fast/medium;
  the default (:mod:`operators.flow.dis`).
* ``raft`` — RAFT (Teed & Deng, ECCV 2020) in torch, for GPUs; needs a torchvision-format
  ``checkpoint`` path/URI, ``iterations`` configurable (:mod:`operators.flow.raft`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

FlowEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
FLOW_BACKENDS = ("dis", "raft")


def make_flow(name: str = "dis", **options) -> FlowEstimator:
    """A flow estimator by backend name; ``options`` go to its constructor.

    RAFT is imported only when asked for, so the DIS path never imports its model code.
    """
    if name == "dis":
        from operators.flow.dis import DisFlow

        return DisFlow(**options)
    if name == "raft":
        from operators.flow.raft import RaftFlow

        return RaftFlow(**options)
    raise ValueError(f"unknown flow backend {name!r}; choose one of {FLOW_BACKENDS}")
