"""Training of the built-in panoptic network: targets (``targets``), the losses of
Panoptic-DeepLab and SiamTrack (``losses``), the training loop and pair sampler (``loop``)
and the held-out evaluation harness (``evaluation``). Inference code never imports this
package; :mod:`pipelines.train` places the loop on Ray Train."""
