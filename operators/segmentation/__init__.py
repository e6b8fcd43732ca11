"""Per-frame panoptic segmentation: the built-in bottom-up network (``model``), its batched
post-processing (``postprocess``), safe model loading (``loading``), the output contracts of
hosted models (``contracts``), what the driver reads of a model without torch (``spec``) and
the model host used by the pipelines (``host``). Nothing is imported here: importing a
submodule that needs no torch (``spec``) must not load torch."""
