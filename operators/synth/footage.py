"""Hard footage for association: low frame rate, runs of missed detections, spurious blobs,
class flips, look-alikes — the synthetic sets trackers are compared on.

A :class:`HardFootage` is one difficulty level: the generator's knobs (:class:`SynthConfig`'s
``speed`` and ``look_alikes``) plus the perturbation's (:class:`NoiseConfig`'s runs of misses,
flips and spurious segments). :func:`footage_frames` renders one video of it: every frame's
RGB, GT (true ids), GT flow and the per-frame prediction every tracker is given (true masks
with boundary noise, misses, flips and spurious blobs, ids scrambled every frame)::

    level = HARD_LEVELS["3x"]
    cfg = level.synth_config(seed=101)
    for frame in footage_frames(level, cfg, video_index=0):
        frame.prediction, frame.gt, frame.rgb, frame.flow

Trackers built on these sets (the benchmark's peers, a learned tracker) get the same frames
for the same ``(level, seed, video_index)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from operators.formats.categories import CITYSCAPES_THING_IDS
from operators.formats.panoptic import PanopticFrame
from operators.synth.config import SynthConfig
from operators.synth.perturb import NoiseConfig, VideoPerturbation
from operators.synth.render import generate_video


@dataclass(frozen=True)
class HardFootage:
    """One difficulty level of hard footage.

    * ``speed``: frame-rate reduction (the scene moves ``speed`` × as far per frame);
    * ``miss_run_prob`` / ``miss_run_max``: per frame, the chance that a visible object starts
      a run of missed detections, and the longest run (frames);
    * ``drop_prob``: single-frame misses on top of the runs;
    * ``class_flip_prob``: a segment takes a confusable class (car/truck/bus, person/rider,
      motorcycle/bicycle) for one frame;
    * ``spurious_per_frame`` / ``spurious_size``: false thing blobs per frame (Poisson mean) and
      their side as a fraction of the frame height;
    * ``look_alikes``: every instance of a class looks the same;
    * ``things``, ``scenario``: the scene (moving things per video, the generator's scenario).
    """

    speed: float
    miss_run_max: int
    miss_run_prob: float = 0.03
    drop_prob: float = 0.03
    class_flip_prob: float = 0.05
    spurious_per_frame: float = 0.3
    spurious_size: float = 0.03
    boundary_px: int = 2
    look_alikes: bool = True
    things: int = 12
    scenario: str = "default"

    def synth_config(self, seed: int, videos: int = 6, frames: int = 31, height: int = 256, width: int = 512,
                     annotate_every: int = 5) -> SynthConfig:
        """The corpus of this level (defaults: the benchmark's 6 videos of 31 frames at 256×512)."""
        return SynthConfig(videos=videos, frames=frames, height=height, width=width, seed=seed,
                           annotate_every=annotate_every, scenario=self.scenario, things=self.things,
                           speed=self.speed, look_alikes=self.look_alikes)

    def noise(self) -> NoiseConfig:
        return NoiseConfig(boundary_px=self.boundary_px, drop_prob=self.drop_prob,
                           spurious_per_frame=self.spurious_per_frame, spurious_size=self.spurious_size,
                           class_flip_prob=self.class_flip_prob, miss_run_prob=self.miss_run_prob,
                           miss_run_max=self.miss_run_max)


#: The benchmark's two levels: 3× speed with misses up to 8 frames, 6× speed with misses up to 12.
HARD_LEVELS: dict[str, HardFootage] = {
    "3x": HardFootage(speed=3.0, miss_run_max=8),
    "6x": HardFootage(speed=6.0, miss_run_max=12),
}


@dataclass
class FootageFrame:
    """One frame of a hard-footage video: ``rgb`` ``(H, W, 3) uint8``; ``gt`` with true ids;
    ``prediction``: the per-frame segments a tracker is given; ``flow``: GT flow t → t−1
    ``(H, W, 2) float32`` (None on frame 0)."""

    frame_index: int
    rgb: np.ndarray
    gt: PanopticFrame
    prediction: PanopticFrame
    flow: np.ndarray | None


def footage_frames(level: HardFootage, cfg: SynthConfig, video_index: int,
                   things: tuple[int, ...] = CITYSCAPES_THING_IDS) -> Iterator[FootageFrame]:
    """The frames of video ``video_index`` of ``cfg`` with their perturbed predictions.

    The perturbation draws from its own stream seeded by ``(cfg.seed, video_index)``, so the
    same arguments give the same predictions, whichever tracker consumes them.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, video_index, 0x5EED]))
    perturb = VideoPerturbation(rng, set(things), level.noise())
    for frame in generate_video(cfg, video_index):
        yield FootageFrame(frame.frame_index, frame.rgb, frame.panoptic, perturb(frame.panoptic), frame.flow)
