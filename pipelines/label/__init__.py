"""The labelling pipeline: ``label`` a corpus into an output root, committed per video.

Modules: ``driver`` (the run: the door, the lease, what to skip, publishing), ``config``
(:class:`LabelConfig`), ``stages`` (the graph's stages), ``finalize`` (a video's outputs and its
commit), ``faults`` (resuming videos that lost a process), ``outputs`` (run manifest, pred.json,
metrics). The names below load their module on first use, so ``pipelines.label.config`` (the
CLI's parser) does not import the driver.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "label": "driver", "LabelRun": "driver", "summary_table": "driver", "evaluation_settings": "driver",
    "LabelConfig": "config", "StageResources": "config", "check_models": "config",
    "VideoResult": "finalize", "VideoTask": "finalize", "GtFrame": "stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
