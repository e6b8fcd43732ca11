"""What a labelling run is asked to do: :class:`LabelConfig`, and the hash that says whether
an existing output was made the same way.

Only what changes the *content* of the outputs enters :meth:`LabelConfig.config_hash`
(models and their checksums, flow, tracker settings, sinks, evaluation settings); how the
work is cut and scheduled (chunk size, batch size, concurrency, cluster) does not, because
it must not change the result: chunk boundaries are invisible to the flow (a chunk carries
its predecessor's last frame) and to the association (chunks are consumed in frame order).
"""
from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field

import cv2

from operators import fs
from operators.association import TrackerConfig
from operators.errors import InputError
from operators.segmentation.spec import CONTRACTS

SEGMENTERS = ("builtin", "artifact", "precomputed")
FLOWS = ("dis", "raft")
DEFAULT_IMAGE_ID = "{video_id}_{frame_index:06d}"


@dataclass(frozen=True)
class StageResources:
    """Logical CPUs per task/actor of each stage, the most actors of each pool (None: chosen from the
    cluster), and whether the model actors ask for GPUs.

    Fractions let every stage hold a slot at once on a small machine: with whole CPUs, two
    model actor pools on a 2-CPU machine would hold both CPUs and starve the decode tasks.
    The values differ between neighbouring stages on purpose: Ray Data fuses a task stage into
    the next actor stage when their resources agree, and decode must stay parallel tasks.
    """

    decode_cpus: float = 0.25
    segment_cpus: float = 0.5
    flow_cpus: float = 0.5
    associate_cpus: float = 0.25
    sink_cpus: float = 0.2
    segment_actors: int | None = None
    flow_actors: int | None = None
    association_actors: int | None = None
    window_videos: int | None = None
    """Videos per execution of the Ray Data graph (None: from the cluster's CPUs,
    :func:`pipelines.label.graph.execution_window_size`; 0: a pass in one execution); the
    driver's memory of an execution is bounded by its window."""
    gpus: str = "auto"
    """What the model actors ask Ray for: ``auto``, ``cpu``, ``gpu`` (:mod:`cluster.gpus`)."""
    executor: str = "auto"
    """What runs the stages: ``ray`` (the Ray Data graph), ``local`` (a few processes of this
    machine, no Ray: :mod:`pipelines.label.local`) or ``auto`` (local for a small run without
    ``--address``, :func:`pipelines.label.local.choose_executor`). The outputs are the same."""

    def __post_init__(self) -> None:
        from cluster.gpus import GPU_MODES

        if self.gpus not in GPU_MODES:
            raise ValueError(f"unknown gpus {self.gpus!r}; choose one of {GPU_MODES}")
        from cluster.connect import EXECUTORS

        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose one of {EXECUTORS}")
        if self.window_videos is not None and self.window_videos < 0:
            raise ValueError(f"window_videos must be 0 (a pass in one execution) or more, not {self.window_videos}")


@dataclass(frozen=True)
class LabelConfig:
    """Every option of ``tubeflow label``.

    * ``segmenter`` / ``model``: backend of :class:`operators.segmentation.host.SegmentationHost`
      and its weights, artifact or predictions directory (``None``: the shipped weights).
    * ``flow`` / ``flow_options``: a backend of :func:`operators.flow.make_flow`.
    * ``gt_json`` / ``gt_dir``: the ground truth (``--gt``): a Cityscapes-VPS GT JSON with its PNG
      directory, or a segments table (a directory; ``gt_dir`` is then unused); when given, VPQ/STQ
      are computed in the same pass and frames take their image ids from it.
    * ``image_id_format``: image ids of frames the GT does not name (``str.format`` with
      ``video_id`` and ``frame_index``).
    * ``chunk_frames``: frames per chunk; ``batch_size``: frames per model forward pass
      (None: 1 on CPU, 8 on GPU, see :func:`operators.segmentation.host.default_batch_size`).
    * ``flip``: horizontal-flip test-time augmentation of the segmenter (None: the host's
      default, on for the built-in network; two forward passes per frame).
    * ``shift``: half-cell shift test-time augmentation of the segmenter (None: the host's
      default, on for the built-in network; twice the forward passes again).
    * ``review``: ``"mcap"`` writes per log a review MCAP of the labels for Foxglove, per video a
      thumbnail, and ``review/index.html`` (videos worst first); see :mod:`pipelines.review`.
    * ``refine``: guided refinement of the segmenter's semantic map (None: the host's default,
      on for the built-in network).
    * ``contract``: an artifact's output contract (None: detected from its outputs);
      ``object_mask_threshold`` / ``overlap_threshold``: the mask-classification inference's
      (:mod:`operators.segmentation.mask_classification`). The artifact's input spec and
      categories come from the JSON files beside it (:mod:`operators.segmentation.spec`).
    """

    segmenter: str = "builtin"
    model: str | None = None
    flow: str = "dis"
    flow_options: dict = field(default_factory=lambda: {"preset": "medium"})
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    gt_json: str | None = None
    gt_dir: str | None = None
    stride: int = 5
    ks: tuple[int, ...] = (0, 5, 10, 15)
    image_id_format: str = DEFAULT_IMAGE_ID
    chunk_frames: int = 32
    batch_size: int | None = None  # None: the host's default (1 on CPU, 8 on GPU)
    flip: bool | None = None  # None: the host's default (on for the built-in network)
    shift: bool | None = None  # None: the host's default (on for the built-in network)
    refine: bool | None = None  # None: the host's default (on for the built-in network)
    contract: str | None = None  # None: detected from the artifact's outputs
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    write_png: bool = False
    write_overlay: bool = False
    review: str | None = None  # "mcap": review logs for Foxglove + review/index.html (pipelines/review.py)
    device: str = "auto"
    resources: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"unknown segmenter {self.segmenter!r}; choose one of {SEGMENTERS}")
        if self.flow not in FLOWS:
            raise ValueError(f"unknown flow {self.flow!r}; choose one of {FLOWS}")
        if self.chunk_frames < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError("chunk_frames and batch_size must be ≥ 1")
        if self.segmenter != "builtin" and not self.model:
            raise ValueError(f"segmenter {self.segmenter!r} needs --model")
        if self.contract is not None and (self.contract not in CONTRACTS or self.segmenter != "artifact"):
            raise ValueError(f"--contract {self.contract!r}: one of {CONTRACTS}, for --segmenter artifact")
        if not (0 <= self.object_mask_threshold <= 1 and 0 <= self.overlap_threshold <= 1):
            raise ValueError("--object-mask-threshold and --overlap-threshold must be in [0, 1]")
        if self.review not in (None, "mcap"):
            raise ValueError(f"unknown review format {self.review!r}; choose mcap")
        _check_image_id_format(self.image_id_format)
        if self.gt_json and not self.gt_dir:
            object.__setattr__(self, "gt_dir", fs.join(self.gt_json.rsplit("/", 1)[0], "panoptic"))

    @property
    def render(self) -> str:
        """What the sink renders from the frames the run decoded (:data:`pipelines.label.stages.RENDER`):
        ``"overlay"`` every frame (``--overlay``; the thumbnail is its middle frame), ``"thumbnail"``
        the middle frame only (``--review`` without ``--overlay``), ``""`` nothing."""
        return "overlay" if self.write_overlay else "thumbnail" if self.review else ""

    def host_kwargs(self) -> dict:
        """Constructor arguments of the segmentation host."""
        from operators.segmentation.spec import MaskClassificationConfig

        return {"backend": self.segmenter, "model_uri": self.model, "batch_size": self.batch_size,
                "device": self.device, "flip": self.flip, "shift": self.shift,
                "refine": self.refine, "contract": self.contract,
                "mask_classification": MaskClassificationConfig(self.object_mask_threshold, self.overlap_threshold)}

    def model_spec(self):
        """The segmenter's :class:`~operators.segmentation.contracts.ModelSpec` (input spec and
        categories): an artifact's from the JSON files beside it, else the defaults."""
        from operators.segmentation.spec import ModelSpec, read_model_spec

        return read_model_spec(self.model) if self.segmenter == "artifact" else ModelSpec()

    def tracker_for(self, categories) -> TrackerConfig:
        """The tracker's settings for a model with ``categories``: its thing classes carry
        identities (the class gates), unless the tracker config names its own."""
        from dataclasses import replace

        from operators.formats.categories import thing_ids_of

        if self.tracker.thing_category_ids != TrackerConfig().thing_category_ids:
            return self.tracker
        return replace(self.tracker, thing_category_ids=thing_ids_of(categories))

    def model_checksums(self) -> dict[str, str]:
        """SHA-256 of what the models are made of (weights file; predictions' pred.json), read once
        on the driver so the config hash changes when the weights do."""
        from operators.segmentation.spec import BUILTIN_WEIGHTS

        out = {}
        if self.segmenter == "precomputed":
            out["segmenter"] = _sha256_of(fs.join(self.model, "pred.json"))
        else:
            out["segmenter"] = _sha256_of(self.model or BUILTIN_WEIGHTS)
        if self.flow == "raft":
            out["flow"] = _sha256_of(str(self.flow_options.get("checkpoint", "")))
        else:
            out["flow"] = f"opencv-{cv2.__version__}-dis-{self.flow_options.get('preset', 'medium')}"
        if self.tracker.uses_network:
            from operators.association.learned import weights_sha256

            out["tracker"] = weights_sha256(self.tracker)
        return out

    def config_hash(self, model_checksums: dict[str, str]) -> str:
        """SHA-256 (hex, 16 chars) of everything that determines the outputs' content."""
        from operators.segmentation.spec import PostprocessConfig, builtin_default

        doc = {"segmenter": self.segmenter, "segmenter_flip": builtin_default(self.segmenter, self.flip),
               "segmenter_shift": builtin_default(self.segmenter, self.shift),
               "segmenter_refine": builtin_default(self.segmenter, self.refine),
               # what the artifact's outputs mean: its contract, the inference's thresholds, the
               # input it is given and its classes (the model file's checksum is in "models")
               "segmenter_contract": self.contract if self.segmenter == "artifact" else None,
               "segmenter_mask_classification": [self.object_mask_threshold, self.overlap_threshold]
               if self.segmenter == "artifact" else None,
               "segmenter_model": self.model_spec().to_json(),
               # the grouping's thresholds: a release that changes their defaults relabels
               "segmenter_postprocess": asdict(PostprocessConfig()) if self.segmenter != "precomputed" else None,
               "flow": self.flow, "flow_options": self.flow_options,
               "tracker": json.loads(self.tracker_for(self.model_spec().categories).to_json()),
               "models": model_checksums,
               "gt": [self.gt_json, self.gt_dir, self.stride, list(self.ks)], "image_id_format": self.image_id_format,
               "sinks": {"png": self.write_png, "overlay": self.write_overlay, "review": self.review}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["tracker"] = json.loads(self.tracker.to_json())
        return doc


def _check_image_id_format(text: str) -> None:
    """Image ids name PNG files (``pan_pred/<key>.png``): a format that does not tell videos and
    frames apart would give two frames one file, the later overwriting the earlier."""
    try:
        names = {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(text) if name}
        text.format(video_id="v", frame_index=0)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"--image-id-format {text!r} is not a format of video_id and frame_index ({exc!r})") from None
    if not {"video_id", "frame_index"} <= names:
        raise ValueError(f"--image-id-format {text!r} must use both {{video_id}} and {{frame_index}}: else two frames "
                         "get one image id (and one PNG)")


def check_models(config: LabelConfig) -> None:
    """Load what the run's models are made of once, in the driver, before anything starts: a
    garbage ``--model`` (or RAFT checkpoint) is one :class:`InputError` naming the file, not a
    traceback from every model actor after Ray started."""
    if config.segmenter == "precomputed":
        from operators.formats.vps_layout import read_predictions

        read_predictions(config.model)
    elif config.segmenter == "artifact":
        from operators.segmentation.loading import load_artifact

        load_artifact(config.model)
    elif config.model:
        from operators.segmentation.loading import load_builtin

        load_builtin(config.model)
    if config.tracker.uses_network:
        from operators.association.learned import check_weights, weights_path

        check_weights(weights_path(config.tracker))  # against its card, without torch where it has one
    if config.flow == "raft":
        checkpoint = config.flow_options.get("checkpoint")
        if checkpoint:
            from operators.flow.raft import load_raft_checkpoint

            load_raft_checkpoint(str(checkpoint))


def _sha256_of(uri: str) -> str:
    try:
        return hashlib.sha256(fs.read_bytes(uri)).hexdigest()
    except FileNotFoundError:
        raise InputError(uri, "model file not found") from None
