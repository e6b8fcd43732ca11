"""Per-frame panoptic segmentation: the built-in bottom-up network (``model``), its batched
post-processing (``postprocess``), safe model loading (``loading``), device placement
(``device``) and the model host used by the pipelines (``host``)."""
from operators.segmentation.host import BUILTIN_WEIGHTS, SegmentationHost
from operators.segmentation.postprocess import FrameSegments, PostprocessConfig

__all__ = ["BUILTIN_WEIGHTS", "FrameSegments", "PostprocessConfig", "SegmentationHost"]
