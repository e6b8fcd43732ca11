"""Training the built-in model on the synthetic corpus (plain torch; Ray Train wraps it in
``jobs/train.py``).

Each step draws pairs of frames (t, t + gap) of one synthetic video — the pair layout the
SiamTrack losses need — applies the same random crop and horizontal flip to both, and
minimises :func:`operators.training.losses.total_loss` with AdamW under the "poly"
learning-rate schedule of DeepLab / Panoptic-DeepLab, ``lr · (1 − step/steps)^0.9``.
Targets are computed once per frame at load time and cropped per sample, so instance
centers are those of the whole object, as in Panoptic-DeepLab.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from operators.device import Placement
from operators.training.losses import LossWeights, total_loss
from operators.segmentation.model import SIZE_DIVISOR, PanopticNet, PanopticNetConfig
from operators.training.targets import SMALL_INSTANCE_AREA, TARGET_KEYS, PanopticTargets, frame_targets

TRAIN_SCENARIOS = ("default", "occlusion", "similar", "small", "deform")
# fp16 is left out on purpose: it needs loss scaling, bf16 does not.
TRAIN_PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """What ``tubeflow train`` trains on and how. ``crop`` (h, w) must be multiples of 32."""

    # Many short videos: 400 scenes of 4 frames see far more layouts, objects and colours than
    # 15 videos of 12 frames (the held-out gap of earlier weights was generalisation, not fit).
    videos_per_scenario: int = 80
    frames: int = 4
    height: int = 256
    width: int = 512
    seed: int = 1000  # held-out evaluation corpora use other seeds
    scenarios: tuple[str, ...] = TRAIN_SCENARIOS
    # 7500 steps: the recipe end to end in ≤ 30 min on the project's 2-core VMs (26.6 min in
    # session 7, 0.195 s per step under Ray). 11000 steps (sessions 4–6) scored 1.3–1.7 PQ more
    # with the same inference (tuning 64.7 vs 63.4, held-out 65.3 vs 63.6) but took 37–39 min
    # there; `--steps 11000` where time allows (model card: operators/segmentation/weights/MODEL_CARD.md).
    steps: int = 7500
    batch_pairs: int = 2
    # Whole 256×512 frames: an object's center is always in view, so its offsets can be
    # learned (128×256 crops cut most vehicles); same pixels per step as 4 pairs of crops.
    crop: tuple[int, int] = (256, 512)
    lr: float = 3e-3
    warmup: int = 0  # linear warm-up steps before the poly decay
    photometric: float = 0.0  # colour jitter strength (0 = off), see photometric_jitter
    weight_decay: float = 1e-4
    max_gap: int = 3
    # Panoptic-DeepLab's σ is 8 px at 1024×2048; our frames are 4× smaller and half of the things
    # are under ~15 px across, so σ 8 blurs neighbouring centers into one peak (on GT heads the
    # post-processing reaches PQ-things 89.7 with σ 8, 93.7 with σ 4; seed 555000).
    sigma: float = 4.0
    # "small" for LossWeights.small_instance (pixels): Panoptic-DeepLab's 64² px at 1024×2048 is
    # 16² px at 256×512, the same share of the frame
    small_instance_area: int = SMALL_INSTANCE_AREA // 16
    log_every: int = 25
    # Mixed precision of the forward pass: "bf16" autocast (convolutions in bfloat16, weights,
    # optimiser and losses in fp32; no loss scaling needed, bf16 has fp32's range) or "fp32".
    # On this CPU (AVX-512 BF16) bf16 with channels-last activations makes a step 1.74× faster
    # than fp32 NCHW (0.116 vs 0.202 s, 2 threads, tests/benchmarks/bench_train.py): more
    # steps fit in the same minutes.
    precision: str = "bf16"
    # NHWC activations, what oneDNN's CPU convolutions (and cuDNN's tensor cores) run fastest
    # (0.173 vs 0.202 s per fp32 step, bench_train.py); False keeps NCHW.
    channels_last: bool = True
    init: str | None = None  # weights URI to continue from (a second stage); None = random init
    model: PanopticNetConfig = field(default_factory=PanopticNetConfig)
    losses: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if any(c % SIZE_DIVISOR for c in self.crop) or self.crop[0] > self.height or self.crop[1] > self.width:
            raise ValueError(f"crop {self.crop} must be multiples of {SIZE_DIVISOR} within {self.height}x{self.width}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAIN_PRECISIONS}, got {self.precision!r}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TrainingFrame:
    """A frame ready for sampling: ``rgb (H, W, 3) uint8`` and its numpy targets."""

    rgb: np.ndarray
    targets: dict[str, np.ndarray]


def load_training_videos(config: TrainConfig, rank: int = 0) -> list[list[TrainingFrame]]:
    """Generate the training corpus in memory (every frame of every video is annotated)."""
    from operators.synth import SynthConfig, generate_video

    thing_ids = set(config.model.thing_ids)
    videos = []
    for s, scenario in enumerate(config.scenarios):
        synth = SynthConfig(videos=config.videos_per_scenario, frames=config.frames, height=config.height,
                            width=config.width, seed=config.seed + 97 * s, scenario=scenario)
        for v in range(config.videos_per_scenario):
            videos.append([TrainingFrame(f.rgb, _compact(frame_targets(f.panoptic, thing_ids, config.sigma,
                                                                      config.small_instance_area)))
                           for f in generate_video(synth, v)])
    return videos


def _compact(targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Smaller dtypes for the in-memory corpus (semantic fits uint8, ids int32)."""
    out = dict(targets)
    out["semantic"] = targets["semantic"].astype(np.uint8)
    out["segment_ids"] = targets["segment_ids"].astype(np.int32)
    out["center_weight"] = targets["center_weight"].astype(np.uint8)
    out["offset_weight"] = targets["offset_weight"].astype(np.uint8)
    out["small_instance"] = targets["small_instance"].astype(np.uint8)
    # fp16 keeps offsets (|o| < 2^11 px) to 1/8 px and the heatmap to 2^-11: ample for an L1/MSE target.
    out["center"] = targets["center"].astype(np.float16)
    out["offset"] = targets["offset"].astype(np.float16)
    return out


class PairSampler:
    """Random pairs of frames of one video with a shared crop and flip."""

    def __init__(self, videos: list[list[TrainingFrame]], config: TrainConfig, seed: int):
        self.videos = [v for v in videos if len(v) >= 2]
        if not self.videos:
            raise ValueError("training needs videos of at least 2 frames")
        self.config = config
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, PanopticTargets]:
        """``images (2P, 3, h, w) float32`` in [0, 1], frames t first then t', and their targets."""
        cfg, rng = self.config, self.rng
        firsts, seconds = [], []
        for _ in range(cfg.batch_pairs):
            video = self.videos[rng.integers(len(self.videos))]
            gap = int(rng.integers(1, min(cfg.max_gap, len(video) - 1) + 1))
            t = int(rng.integers(0, len(video) - gap))
            if rng.random() < 0.5:  # association runs both ways in time
                pair = (video[t], video[t + gap])
            else:
                pair = (video[t + gap], video[t])
            height, width = pair[0].rgb.shape[:2]
            y0 = int(rng.integers(0, height - cfg.crop[0] + 1))
            x0 = int(rng.integers(0, width - cfg.crop[1] + 1))
            flip = bool(rng.random() < 0.5)
            firsts.append(_crop(pair[0], y0, x0, cfg.crop, flip))
            seconds.append(_crop(pair[1], y0, x0, cfg.crop, flip))
        items = firsts + seconds
        images = torch.from_numpy(np.stack([rgb for rgb, _ in items])).permute(0, 3, 1, 2).float() / 255.0
        stacked = {k: torch.from_numpy(np.stack([t[k] for _, t in items])) for k in TARGET_KEYS}
        for key in ("semantic", "segment_ids"):
            stacked[key] = stacked[key].long()
        for key in ("center", "offset", "center_weight", "offset_weight", "small_instance"):
            stacked[key] = stacked[key].float()
        if cfg.photometric > 0:
            images = photometric_jitter(images, cfg.photometric, rng)
        return images, PanopticTargets(*(stacked[k] for k in TARGET_KEYS))


def photometric_jitter(images: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Colour augmentation of a pair-ordered batch ``(2P, 3, h, w)`` in [0, 1]: brightness,
    contrast, saturation and per-channel gains drawn per pair in ``1 ± strength`` (± strength/4
    for the gains) and applied alike to both frames of a pair, so a segment's appearance stays
    consistent across the pair for the temporal losses."""
    pairs = images.shape[0] // 2
    factors = torch.from_numpy(rng.uniform(1 - strength, 1 + strength, (pairs, 3)).astype(np.float32))
    gains = torch.from_numpy(rng.uniform(1 - strength / 4, 1 + strength / 4, (pairs, 3)).astype(np.float32))
    factors, gains = factors.repeat(2, 1), gains.repeat(2, 1)  # frame i and i + P share their draw
    x = images * factors[:, 0, None, None, None] * gains[:, :, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factors[:, 1, None, None, None] + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * factors[:, 2, None, None, None] + grey
    return x.clamp(0.0, 1.0)


def _crop(frame: TrainingFrame, y0: int, x0: int, crop: tuple[int, int], flip: bool):
    ys, xs = slice(y0, y0 + crop[0]), slice(x0, x0 + crop[1])
    rgb = frame.rgb[ys, xs]
    targets = {k: v[..., ys, xs] for k, v in frame.targets.items()}
    if flip:  # mirror everything; the x offset changes sign
        rgb = rgb[:, ::-1]
        targets = {k: v[..., ::-1] for k, v in targets.items()}
        targets["offset"] = targets["offset"] * np.array([1.0, -1.0], np.float32)[:, None, None]
    return np.ascontiguousarray(rgb), {k: np.ascontiguousarray(v) for k, v in targets.items()}


def poly_lr(base: float, step: int, steps: int, power: float = 0.9, warmup: int = 0) -> float:
    """DeepLab's "poly" schedule, after a linear warm-up of ``warmup`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (1 - min(step, steps - 1) / steps) ** power


def train_model(model: torch.nn.Module, sampler: PairSampler, config: TrainConfig, device: torch.device,
                report: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Run ``config.steps`` optimisation steps; ``report(step, averaged_losses)`` every
    ``log_every`` steps. Returns the logged history."""
    # NHWC unless config.channels_last is off; the host serves the built-in model NHWC too
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # the hosts' placement record gives the autocast context (a no-op for fp32)
    placement = Placement(device, torch.bfloat16 if config.precision == "bf16" else None, pin_memory=False)
    model.train()
    history, running = [], []
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(config.lr, step, config.steps, warmup=config.warmup)
        images, targets = sampler.sample()
        with placement.autocast():
            outputs = model(images.to(device).contiguous(memory_format=layout))
        # The losses (top-k CE, sums over masks, softmax over segments) in fp32.
        outputs = {name: value.float() for name, value in outputs.items()}
        loss, terms = total_loss(outputs, targets.to(device), config.losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append({"loss": float(loss.detach()), **terms})
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            averaged = {k: float(np.mean([r[k] for r in running])) for k in running[0]}
            averaged["step"] = step + 1
            history.append(averaged)
            running = []
            if report is not None:
                report(step + 1, averaged)
    return history


def new_model(config: TrainConfig, seed: int) -> PanopticNet:
    """A fresh network (seeded), or the network of ``config.init`` to continue training."""
    torch.manual_seed(seed)
    if config.init is None:
        return PanopticNet(config.model)
    from operators.segmentation.loading import load_builtin

    model, _ = load_builtin(config.init)
    if model.config != config.model:
        raise ValueError(f"{config.init}: its architecture differs from the training config's")
    return model.float()
