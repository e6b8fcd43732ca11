"""What the synthetic corpus generator is asked for: :class:`SynthConfig` and the scenarios.

A scenario is a named set of knobs that turns up one failure mode the VPS papers name
(VPSNet, Kim et al. CVPR 2020; STEP, Weber et al. NeurIPS 2021): heavy *occlusion*,
*similar* appearance with different identity, *small* objects, non-rigid *deformation*.
The knobs are plain numbers so a test can check that each one does what it claims.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from operators.errors import InputError

#: video and frame numbers are written as 4 digits (Cityscapes-VPS naming ``VVVV_FFFF_…``)
MAX_VIDEOS = 9999
MAX_FRAMES = 9999
MIN_HEIGHT, MIN_WIDTH = 32, 64
#: GT ids are 1000 · (category + 1) + k: the 1000th instance of a class would take the next class's ids
MAX_THINGS = 999


@dataclass(frozen=True)
class ScenarioKnobs:
    """The scene parameters a scenario sets.

    * ``things``: moving thing instances per video (plus a rider's bicycle and the crowd).
    * ``depth_range``: metres from the camera where things start; near → large, occluding.
    * ``crossing_share``: fraction of things that cross the road (they pass in front of
      and behind each other, which is what makes occlusion).
    * ``same_appearance``: every instance of a class gets the same colour and texture,
      so only motion and position tell identities apart.
    * ``articulation``: amplitude (radians) of limb swing of persons and riders.
    * ``breathing``: amplitude of the anisotropic scale oscillation of every thing
      (a non-rigid shape change whose flow is still exact: it is affine per frame).
    """

    things: int = 8
    depth_range: tuple[float, float] = (8.0, 45.0)
    crossing_share: float = 0.35
    same_appearance: bool = False
    articulation: float = 0.35
    breathing: float = 0.0


SCENARIOS: dict[str, ScenarioKnobs] = {
    "default": ScenarioKnobs(),
    "occlusion": ScenarioKnobs(things=24, depth_range=(5.0, 16.0), crossing_share=0.8),
    "similar": ScenarioKnobs(things=10, crossing_share=0.0, same_appearance=True),
    "small": ScenarioKnobs(things=16, depth_range=(40.0, 120.0)),
    "deform": ScenarioKnobs(articulation=0.8, breathing=0.18),
}


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic corpus: ``videos`` videos of ``frames`` frames of ``height`` × ``width``.

    Everything is a function of ``seed`` (and the video index), so the same config gives
    byte-identical frames, GT and flow. ``annotate_every``: frames with
    ``frame_index % annotate_every == 0`` go into the benchmark GT (``gt/``); every frame
    goes into ``gt_all/``. ``crowd`` adds a group of persons labelled as one ``iscrowd=1``
    segment, ``void`` the ego-vehicle hood and unlabelled clutter (VOID, id 0).
    ``things`` overrides the scenario's number of moving things.

    Hard footage (driving logs labelled at a few frames per second, look-alike cars):

    * ``speed``: the scene moves ``speed`` × as far between two frames as at ``fps`` (a frame
      rate reduced by that factor: 3.0 is a 10 fps drive labelled at 3.3 fps). The mp4s keep
      ``fps``; motion, articulation and the GT flow follow the reduced rate. The ego speed
      stays capped (the backdrop zooms at most ~1.7× over a video), so the things gain most.
    * ``look_alikes``: every instance of a class looks the same (the ``similar`` scenario's
      appearance on any scenario), so only motion and position tell identities apart.
    """

    videos: int = 2
    frames: int = 10
    height: int = 128
    width: int = 256
    seed: int = 0
    annotate_every: int = 5
    scenario: str = "default"
    fps: float = 10.0
    crowd: bool = True
    void: bool = True
    things: int | None = None
    speed: float = 1.0
    look_alikes: bool = False

    def __post_init__(self) -> None:
        def bad(field_name: str, problem: str) -> InputError:
            return InputError(f"synth config {field_name}", problem)

        for name, low, high in (("videos", 1, MAX_VIDEOS), ("frames", 1, MAX_FRAMES),
                                ("height", MIN_HEIGHT, None), ("width", MIN_WIDTH, None), ("annotate_every", 1, None),
                                ("seed", 0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, f"must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                limit = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise bad(name, f"must be {limit}, got {value}")
        if self.scenario not in SCENARIOS:
            raise bad("scenario", f"unknown scenario {self.scenario!r}; choose one of {sorted(SCENARIOS)}")
        if not self.fps > 0:
            raise bad("fps", f"must be positive, got {self.fps}")
        if isinstance(self.speed, bool) or not isinstance(self.speed, (int, float)) or not 0 < self.speed <= 100:
            raise bad("speed", f"must be a number in (0, 100], got {self.speed!r}")
        if self.things is not None and (isinstance(self.things, bool) or not isinstance(self.things, int)
                                        or not 0 <= self.things <= MAX_THINGS):
            raise bad("things", f"must be an integer between 0 and {MAX_THINGS}, got {self.things!r}")

    @property
    def knobs(self) -> ScenarioKnobs:
        knobs = SCENARIOS[self.scenario]
        if self.things is not None:
            knobs = replace(knobs, things=self.things)
        return replace(knobs, same_appearance=True) if self.look_alikes else knobs

    @property
    def motion_fps(self) -> float:
        """The frame rate the scene's motion is sampled at: ``fps / speed``."""
        return self.fps / self.speed

    def video_id(self, video_index: int) -> str:
        return f"{video_index:04d}"

    def image_id(self, video_index: int, frame_index: int) -> str:
        return f"{video_index:04d}_{frame_index:04d}_synth"

    def to_json(self) -> dict:
        return asdict(self)


def frame_png_name(image_id: str) -> str:
    """File name of a synthetic frame image (Cityscapes naming), for mp4 and log corpora alike."""
    return f"{image_id}_leftImg8bit.png"
