"""One video's scene, built deterministically from ``(seed, video_index)``.

Back to front: the sky, the street backdrop (all stuff classes), then — ordered per frame
by depth — the moving things, the crowd and the street's standing objects (poles, signs,
trees, VOID clutter), and last the ego-vehicle hood (VOID).
"""
from __future__ import annotations

import numpy as np

from operators.synth.config import SynthConfig
from operators.synth.layers import Scene, make_camera
from operators.synth.stuff import backdrop, hood, sky, stuff_id
from operators.synth.things import make_things


def build_scene(cfg: SynthConfig, video_index: int) -> Scene:
    """The scene of video ``video_index`` of ``cfg``; the same arguments give the same scene."""
    # Independent streams per concern, so that e.g. adding a thing does not move the street.
    camera_rng, street_rng, thing_rng, texture_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, video_index]).spawn(4))
    h, w, t = cfg.height, cfg.width, cfg.frames
    camera = make_camera(camera_rng, h, w, t, cfg.motion_fps)
    street, road = backdrop(street_rng, camera, h, w, t, cfg.void)
    bodies = [sky(texture_rng, camera, h, w, t)] + street
    things, category_of, iscrowd_of = make_things(thing_rng, camera, cfg.knobs, t, cfg.motion_fps, h, road, cfg.crowd)
    bodies += things
    if cfg.void:
        bodies.append(hood(texture_rng, h, w, t))
    category_of.update({stuff_id(c): c for c in range(11)})
    return Scene(h, w, t, bodies, category_of, iscrowd_of)
