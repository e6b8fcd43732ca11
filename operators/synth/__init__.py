"""Synthetic driving videos with exact ground truth: panoptic ids, identities, optical flow.

Every other part of tubeflow is tested, demonstrated, benchmarked and trained on this
corpus::

    from operators.synth import SynthConfig, generate_video, write_corpus
    cfg = SynthConfig(videos=2, frames=10, height=128, width=256, seed=0, scenario="default")
    for frame in generate_video(cfg, video_index=0):   # in memory, deterministic
        frame.rgb, frame.panoptic, frame.flow
    write_corpus("DIR or URI", cfg)                     # the on-disk layout (see corpus.py)

Modules: ``config`` (what is asked), ``layers`` (scene model, camera), ``stuff`` (street,
sky, hood), ``sprites`` and ``things`` (moving instances), ``scene`` (one video),
``render`` (frames, GT ids, GT flow), ``corpus`` (files). ``perturb`` turns GT into
imperfect predictions.
"""
from operators.synth.config import SCENARIOS, ScenarioKnobs, SynthConfig
from operators.synth.corpus import write_corpus
from operators.synth.render import SynthFrame, generate_video, render_frame

__all__ = ["SCENARIOS", "ScenarioKnobs", "SynthConfig", "SynthFrame", "generate_video", "render_frame", "write_corpus"]
