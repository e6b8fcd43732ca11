"""Every threshold of the online association, in one dataclass with documented defaults.

The defaults were chosen by a small grid search on the synthetic corpus with seed 11
(scrambled GT and noisy segmentation, default and occlusion scenarios); the README's quality
table is measured on another corpus (seed 7), by ``tests/test_association_quality.py``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from operators.association.motion import MotionNoise
from operators.formats.categories import CITYSCAPES_THING_IDS, CONFUSABLE_THINGS

ASSIGNMENT_METHODS = ("hungarian", "mutual")
OVERLAP_MEASURES = ("dice", "iou", "dice_coverage")
TRACKER_METHODS = ("hybrid", "learned", "assisted", "composite")
TRACKER_HELP = ("association: composite (default: the hand-set stages, and the learned network where they are "
                "unsure; loads operators/association/weights/learned_tracker.pt), hybrid (the hand-set stages "
                "alone, no network), learned (the recurrent graph network) or assisted (the hand-set stages on "
                "the network's match probabilities)")
"""The ``--tracker`` option's help in ``tubeflow track``, ``label`` and ``nightly``."""


@dataclass(frozen=True)
class TrackerConfig:
    """Configuration of :class:`operators.association.tracker.VideoTracker`.

    Affinities are all in [0, 1]; the fused affinity of a (track, segment) pair is
    ``(pixel_weight · overlap + instance_weight · appearance) / (pixel_weight + instance_weight)``.
    Setting one weight to 0 gives the single trackers of the ablation (pixel-only:
    HybridTracker's pixel tracker; instance-only: its instance tracker), and
    ``max_lost_frames = 0`` switches the temporal-consistency memory off.
    """

    # --- which categories carry identities -------------------------------------------------
    thing_category_ids: tuple[int, ...] = CITYSCAPES_THING_IDS
    """Categories whose segments get track ids; every other category is stuff (id from the category)."""
    confusable_categories: tuple[tuple[int, ...], ...] = CONFUSABLE_THINGS
    """Groups of thing categories that may match each other (default: person/rider,
    car/truck/bus, motorcycle/bicycle — what segmenters confuse); a track keeps its identity
    through a flip, and its class is the one of most (score-weighted, decayed) votes of its
    matches (``class_memory``). ``()``: classes never mix."""
    confusable_affinity: float = 0.8
    """A (track, segment) pair of two different classes of one group has its affinity scaled by
    this: a same-class candidate of equal evidence wins."""
    confusable_min_appearance: float = 0.9
    """A lost track takes a segment of a confusable class only when the segment looks like the
    track (appearance affinity at least this): a segmenter's class flip keeps the object's
    look, a truck of another colour where a lost car would be is another object. 0 = any."""
    confusable_min_appearance_tracked: float = 0.0
    """The same floor for tracked tracks (their flow-warped mask on the segment). 0 (off) by
    default: on hard footage with class flips (tuning seeds 101–106) 0.9 costs VPQ-Th k=15
    ~0.7 and STQ ~0.2; where segments never flip class (ground-truth-like masks) 0.9 keeps a
    bus's id off the truck that comes out behind it (easy synthetic corpus, seeds 11/12,
    occlusion + similar VPQ-Th k=15 96.6 → 97.1). See the association README."""
    class_memory: float = 0.9
    """Decay per match of a track's class votes; the output class of a matched segment is the
    track's (a one-frame car → truck flip neither breaks the tube nor mislabels it)."""
    thing_score_threshold: float = 0.0
    """Thing segments scored below this are dropped (VOID in the output). A segment without a
    score counts as 1.0 (ground truth, or a segmenter that gives none). Off by default: a
    score's scale belongs to the segmenter, whose own post-processing already chose what to
    emit (the built-in model: its centre threshold and NMS). A fixed 0.3 here, tuned for earlier
    weights, dropped 98 % of the thing segments of the σ-4 weights (median score 0.15):
    on tuning videos (seed 555000, 5 scenarios × 2 videos × 20 frames, 256×512) VPQ /
    VPQ-things were 41.1 / 11.7 at 0 and 0.05, 40.2 / 9.0 at 0.1, 37.9 / 1.4 at 0.3."""

    # --- pixel tracker (HybridTracker): previous segments warped by flow ---------------------
    pixel_weight: float = 0.5
    overlap: str = "dice_coverage"
    """Overlap of a warped previous segment and a current one: ``"dice"`` (HybridTracker),
    ``"iou"``, or ``"dice_coverage"`` (mean of dice and the share of the current segment that
    the warped one covers; robust to sudden partial occlusion, see ``affinity.overlap_matrix``)."""

    # --- instance tracker: appearance -------------------------------------------------------
    instance_weight: float = 0.5
    appearance_prior_std: float = 0.15
    """Prior standard deviation of a track's appearance mean around its first observation
    (descriptor units; colour descriptors lie in [0, 1])."""
    appearance_obs_std: float = 0.08
    """Observation noise of one frame's descriptor (lighting, mask errors) in descriptor units,
    for a segment of at least ``appearance_full_area`` pixels."""
    appearance_full_area: int = 64
    """Below this area the observation variance grows as ``appearance_full_area / area`` (the
    variance of a mean over n pixels goes as 1/n): slivers weigh less in the Bayesian update
    and are judged with a wider likelihood."""
    appearance_process_std: float = 0.02
    """Random-walk drift added to the mean's variance every frame, so old evidence fades and
    the model follows slow appearance change instead of freezing."""
    colour_sample_pixels: int = 1 << 15
    """Descriptors are pooled on a regular subsample of about this many pixels (speed at 2 MP)."""

    # --- gates and assignment ----------------------------------------------------------------
    assignment: str = "hungarian"
    """``"hungarian"`` (HVPS: optimal assignment, pairs below ``min_affinity`` dropped) or
    ``"mutual"`` (HybridTracker: keep (i, j) only if each is the other's best)."""
    min_affinity: float = 0.2
    """A (track, segment) pair with a fused affinity below this is never matched."""

    # --- temporal-consistency memory (lost tracks, re-identification) -----------------------
    max_lost_frames: int = 30
    """A track without a match stays "lost" for up to this many frames, then is removed; 0 = no memory."""
    carry_lost_frames: int = 2
    """A lost track's mask keeps moving with the flow (into pixels no current thing claims) for
    up to this many frames, so the pixel tracker can take it up again after a missed detection;
    0 = off. Needs the memory (``max_lost_frames`` ≥ this)."""
    reid_threshold: float = 0.01
    """Minimum re-identification score (appearance × position likelihood) to revive a lost track."""
    motion_history: int = 5
    """Number of recent matches kept in a track's history (its size is the largest of them)."""

    # --- motion model (Kalman on centroid and size, camera motion out, OC-SORT re-update) -------
    motion_weight: float = 0.3
    """Weight of the motion affinity (likelihood of the segment under the track's predicted
    centroid and size) in the fused affinity of tracked tracks; 0 = off."""
    motion_gate: float = 60.0
    """Squared Mahalanobis distance (3 dimensions) beyond which a tracked track may not take a
    segment unless their flow-warped overlap is at least ``motion_gate_overlap``."""
    motion_gate_overlap: float = 0.5
    motion_position_std: float = 0.05
    """Process noise of the centroid per frame, as a fraction of the object's size."""
    motion_velocity_std: float = 0.5
    """Process noise of the velocity per frame (fraction of size): how fast the uncertainty of
    a lost track grows."""
    motion_observation_std: float = 0.1
    """Noise of a measured centroid, as a fraction of the object's size."""
    motion_size_observation_std: float = 0.3
    """Noise of a measured size (sqrt of the area), as a fraction of it: partial occlusion
    shrinks the visible size from one frame to the next."""
    camera_motion: bool = True
    """Take the camera's motion (a similarity fitted to the background's flow) out of the tracks'
    motion before predicting them."""
    reid_motion_gate: float = 30.0
    """A lost track may take a segment only within this squared Mahalanobis distance of its
    prediction (which widens with the time lost) …"""
    reid_min_appearance: float = 0.3
    """… and with at least this appearance affinity; both, and ``reid_threshold`` on their
    product, must agree."""
    tentative_max_area: float = 0.001
    """A thing segment that no track takes, after a video's first frame, and whose area is at most
    this fraction of the frame starts a *tentative* track: its first frame is not output (VOID),
    and the track is confirmed only when the next frame matches it, else forgotten (never
    lost, never re-identified). Spurious blobs of a segmenter are small and last one frame; a
    real newcomer loses its first frame. 0 = off. 0.001 (131 px at 256×512) on the hard footage's
    tuning seeds 101–106: VPQ-Th k=15 +4.2 (3×) / +4.1 (6×), better on every seed, STQ −0.05 / −0.08;
    easy corpus seeds 11–12 (noisy): VPQ-Th k=15 +0.2 to +5.4 per scenario. See the association README."""
    exit_margin: float = 0.5
    """A track not matched whose predicted centroid lies this many sizes beyond the frame's edge
    has left: it is retired, not offered to a newcomer elsewhere. Negative = off."""

    # --- which tracker ------------------------------------------------------------------------
    method: str = "composite"
    """``"composite"`` (the default: the hybrid's stages where the hand-set tracker is sure, the
    learned network's match probability where it is not — the network decides only among pairs
    whose hand-set affinity passes the stage's floor, the hand-set affinity decides pairs the
    warped masks vouch for, output classes from the track's class votes; loads the shipped
    weights), ``"hybrid"`` (this module's hand-set stages alone, no network), ``"learned"`` (the
    recurrent graph network of :mod:`operators.association.learned`, which reuses the
    observation, motion, appearance and memory settings above and replaces the matching,
    re-identification and track scoring), or ``"assisted"`` (the hybrid's stages, gates,
    thresholds and tentative newcomers with the network's match probability as the affinity of
    every pair, and its track heads' classes). Why the composite is the default: the association
    README's *Composite tracker*."""
    learned_weights: str = ""
    """Weights of the learned tracker (``""``: the shipped ``operators/association/weights/learned_tracker.pt``)."""

    # --- output ids --------------------------------------------------------------------------
    first_track_id: int = 1000
    """Thing track ids are ``first_track_id, first_track_id + 1, …``; stuff (and crowd) segments
    get ``category_id + 1``, so categories must be below ``first_track_id - 1``."""

    def __post_init__(self) -> None:
        if self.assignment not in ASSIGNMENT_METHODS:
            raise ValueError(f"assignment must be one of {ASSIGNMENT_METHODS}, got {self.assignment!r}")
        if self.method not in TRACKER_METHODS:
            raise ValueError(f"method must be one of {TRACKER_METHODS}, got {self.method!r}")
        if self.overlap not in OVERLAP_MEASURES:
            raise ValueError(f"overlap must be one of {OVERLAP_MEASURES}, got {self.overlap!r}")
        if self.pixel_weight < 0 or self.instance_weight < 0 or self.pixel_weight + self.instance_weight <= 0:
            raise ValueError("pixel_weight and instance_weight must be ≥ 0 and not both 0")
        if not 0.0 <= self.confusable_affinity <= 1.0 or not 0.0 <= self.class_memory <= 1.0:
            raise ValueError("confusable_affinity and class_memory must lie in [0, 1]")
        if self.motion_weight < 0 or min(self.motion_position_std, self.motion_velocity_std,
                                         self.motion_observation_std, self.motion_size_observation_std) <= 0:
            raise ValueError("motion_weight must be ≥ 0 and the motion standard deviations positive")
        if self.max_lost_frames < 0:
            raise ValueError("max_lost_frames must be ≥ 0")
        # thresholds above 1 are allowed: they switch a stage off (e.g. reid_threshold=1.01)
        for name in ("thing_score_threshold", "min_affinity", "reid_threshold", "carry_lost_frames",
                     "appearance_full_area", "motion_gate", "reid_motion_gate", "reid_min_appearance",
                     "confusable_min_appearance", "confusable_min_appearance_tracked", "tentative_max_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.motion_history < 1 or self.colour_sample_pixels < 1 or self.first_track_id < 1:
            raise ValueError("motion_history, colour_sample_pixels and first_track_id must be ≥ 1")
        if min(self.appearance_prior_std, self.appearance_obs_std) <= 0 or self.appearance_process_std < 0:
            raise ValueError("appearance standard deviations must be positive")
        if self.thing_category_ids and max(self.thing_category_ids) + 1 >= self.first_track_id:
            raise ValueError("first_track_id must exceed every category id + 1 (stuff ids are category + 1)")
        # frozen dataclass: normalise sequences given as lists (e.g. from JSON) to tuples
        object.__setattr__(self, "thing_category_ids", tuple(int(c) for c in self.thing_category_ids))
        object.__setattr__(self, "confusable_categories",
                           tuple(tuple(int(c) for c in group) for group in self.confusable_categories))

    @property
    def uses_network(self) -> bool:
        """Whether the tracker runs the learned network (its weights are part of the result)."""
        return self.method in ("learned", "assisted", "composite")

    @property
    def motion_noise(self) -> MotionNoise:
        return MotionNoise(self.motion_position_std, self.motion_velocity_std, self.motion_observation_std,
                           size_observation=self.motion_size_observation_std)

    #: fields of earlier versions that the motion model replaced: ignored when a checkpoint's
    #: config is read back, so a run resumes from a checkpoint written before the change
    RETIRED_FIELDS = frozenset({"reid_position_sigma", "reid_min_size"})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrackerConfig":
        """A config from JSON text; raises ``ValueError`` naming the first field that is unknown,
        of the wrong type or out of range (the CLI turns it into one line naming the file)."""
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object of TrackerConfig fields, got {type(record).__name__}")
        record = {k: v for k, v in record.items() if k not in cls.RETIRED_FIELDS}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise ValueError(f"unknown TrackerConfig fields {unknown}; known: {sorted(known)}")
        for name, value in record.items():
            _check_type(name, str(known[name].type), value)
        return cls(**record)


def _check_type(name: str, annotation: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` (from JSON) fits the field's annotation."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def int_tuple(v):
        return isinstance(v, (list, tuple)) and all(is_int(x) for x in v)

    checks = {"float": (lambda v: (is_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number"),
              "int": (is_int, "an integer"), "str": (lambda v: isinstance(v, str), "a string"),
              "bool": (lambda v: isinstance(v, bool), "true or false"),
              "tuple[int, ...]": (int_tuple, "a list of integers"),
              "tuple[tuple[int, ...], ...]": (lambda v: isinstance(v, (list, tuple)) and all(int_tuple(g) for g in v),
                                              "a list of lists of integers")}
    check, wanted = checks.get(annotation, (lambda v: True, ""))
    if not check(value):
        raise ValueError(f"field {name!r} must be {wanted}, got {json.dumps(value)}")
