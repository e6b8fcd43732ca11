"""RAFT optical flow (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical
Flow", ECCV 2020), architecture as published, in torch.

* Feature encoder ``g`` and context encoder ``h`` (Sec. 3.1): stride-8 residual CNNs
  (bottleneck blocks in RAFT-small), instance norm for features, batch norm (none in
  RAFT-small) for context. The context output splits into the GRU's initial hidden state
  (tanh) and its context input (ReLU).
* 4-level correlation pyramid (Sec. 3.2): all-pairs dot products ``C(x, y) = ⟨g(I₁)_x,
  g(I₂)_y⟩ / √D``, average-pooled over the second frame's dimensions by 1, 2, 4, 8; looked up
  in a (2r+1)² window (r = 4, RAFT-small r = 3) around the current correspondence.
* Update operator (Sec. 3.3): a motion encoder of correlation + flow, then a ConvGRU
  (separable 1×5 / 5×1 in RAFT-large, Eq. 5), then a flow head giving Δf.
* Convex upsampling (Sec. 3.3): each full-resolution flow vector is a convex combination
  of its 3×3 coarse neighbours with softmax weights predicted from the hidden state
  (RAFT-small uses bilinear upsampling instead).

Module names follow torchvision's implementation so its checkpoints (``raft_large_*.pth``,
``raft_small_*.pth``) load directly with :func:`load_raft_checkpoint`; so does the order of
the correlation-window channels, which trained weights depend on.

Flow convention: ``RAFT(image1, image2)`` estimates f with ``image1(x) ≈ image2(x + f(x))``;
:class:`RaftFlow` calls it as ``(current, previous)`` which gives tubeflow's *current →
previous* flow.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError, InputError

VARIANTS = ("large", "small")


def conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, norm: str | None = None,
                  activation: bool = True) -> nn.Sequential:
    """conv → [norm] → [ReLU], indexed 0, 1, 2 like torchvision's Conv2dNormActivation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=True)]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(cout))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    if activation:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str | None, stride: int = 1):
        super().__init__()
        self.convnormrelu1 = conv_norm_act(cin, cout, 3, stride, norm)
        self.convnormrelu2 = conv_norm_act(cout, cout, 3, 1, norm)
        self.downsample = nn.Identity() if stride == 1 else conv_norm_act(cin, cout, 1, stride, norm, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.downsample(x) + self.convnormrelu2(self.convnormrelu1(x)))


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str | None, stride: int = 1):
        super().__init__()
        self.convnormrelu1 = conv_norm_act(cin, cout // 4, 1, 1, norm)
        self.convnormrelu2 = conv_norm_act(cout // 4, cout // 4, 3, stride, norm)
        self.convnormrelu3 = conv_norm_act(cout // 4, cout, 1, 1, norm)
        self.downsample = nn.Identity() if stride == 1 else conv_norm_act(cin, cout, 1, stride, norm, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.downsample(x) + self.convnormrelu3(self.convnormrelu2(self.convnormrelu1(x))))


class FeatureEncoder(nn.Module):
    """7×7 stride-2 stem, three pairs of blocks (strides 1, 2, 2), 1×1 output conv: stride 8."""

    def __init__(self, block: type, layers: tuple[int, int, int, int, int], norm: str | None):
        super().__init__()
        self.convnormrelu = conv_norm_act(3, layers[0], 7, 2, norm)
        self.layer1 = nn.Sequential(block(layers[0], layers[1], norm, 1), block(layers[1], layers[1], norm, 1))
        self.layer2 = nn.Sequential(block(layers[1], layers[2], norm, 2), block(layers[2], layers[2], norm, 1))
        self.layer3 = nn.Sequential(block(layers[2], layers[3], norm, 2), block(layers[3], layers[3], norm, 1))
        self.conv = nn.Conv2d(layers[3], layers[4], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class CorrelationPyramid:
    """All-pairs correlation volume and its pooled levels (Sec. 3.2); no parameters."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int, radius: int):
        batch, channels, height, width = fmap1.shape
        corr = torch.matmul(fmap1.flatten(2).transpose(1, 2), fmap2.flatten(2)) / channels ** 0.5
        corr = corr.reshape(batch * height * width, 1, height, width)  # one 2-D map per pixel of frame 1
        self.levels = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.levels.append(corr)
        self.radius = radius

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """``coords (B, 2, h, w)`` (x, y) in frame-2 pixels → ``(B, levels·(2r+1)², h, w)``."""
        batch, _, height, width = coords.shape
        side = 2 * self.radius + 1
        steps = torch.linspace(-self.radius, self.radius, side, device=coords.device, dtype=coords.dtype)
        # Window offset (steps[a], steps[b]) added to (x, y): the first window axis moves x. Published
        # checkpoints were trained with this channel order, so it must stay.
        delta = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).view(1, side, side, 2)
        centers = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
        features = []
        for level, corr in enumerate(self.levels):
            points = centers / 2 ** level + delta
            size = torch.tensor([corr.shape[-1] - 1, corr.shape[-2] - 1], device=coords.device, dtype=coords.dtype)
            grid = 2 * points / size.clamp_min(1) - 1  # align_corners=True normalisation
            sampled = F.grid_sample(corr, grid.to(corr.dtype), mode="bilinear", align_corners=True)
            features.append(sampled.view(batch, height, width, -1))
        return torch.cat(features, dim=-1).permute(0, 3, 1, 2).contiguous()


class MotionEncoder(nn.Module):
    def __init__(self, corr_channels: int, corr_layers: tuple[int, ...], flow_layers: tuple[int, int], out: int):
        super().__init__()
        self.convcorr1 = conv_norm_act(corr_channels, corr_layers[0], 1)
        self.convcorr2 = conv_norm_act(corr_layers[0], corr_layers[1], 3) if len(corr_layers) == 2 else nn.Identity()
        self.convflow1 = conv_norm_act(2, flow_layers[0], 7)
        self.convflow2 = conv_norm_act(flow_layers[0], flow_layers[1], 3)
        self.conv = conv_norm_act(corr_layers[-1] + flow_layers[1], out - 2, 3)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        corr = self.convcorr2(self.convcorr1(corr))
        encoded = self.convflow2(self.convflow1(flow))
        return torch.cat([self.conv(torch.cat([corr, encoded], dim=1)), flow], dim=1)


class ConvGRU(nn.Module):
    """Eq. 5: z = σ(conv([h, x])), r = σ(conv([h, x])), q = tanh(conv([r⊙h, x])), h ← (1−z)h + zq."""

    def __init__(self, input_size: int, hidden: int, kernel, padding):
        super().__init__()
        self.convz = nn.Conv2d(hidden + input_size, hidden, kernel, padding=padding)
        self.convr = nn.Conv2d(hidden + input_size, hidden, kernel, padding=padding)
        self.convq = nn.Conv2d(hidden + input_size, hidden, kernel, padding=padding)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.convz(hx)), torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class RecurrentBlock(nn.Module):
    def __init__(self, input_size: int, hidden: int, kernels: tuple, paddings: tuple):
        super().__init__()
        self.convgru1 = ConvGRU(input_size, hidden, kernels[0], paddings[0])
        self.convgru2 = ConvGRU(input_size, hidden, kernels[1], paddings[1]) if len(kernels) == 2 else None

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.convgru1(h, x)
        return self.convgru2(h, x) if self.convgru2 is not None else h


class FlowHead(nn.Module):
    def __init__(self, cin: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    def __init__(self, motion_encoder: MotionEncoder, recurrent_block: RecurrentBlock, flow_head: FlowHead):
        super().__init__()
        self.motion_encoder, self.recurrent_block, self.flow_head = motion_encoder, recurrent_block, flow_head

    def forward(self, hidden, context, corr, flow):
        hidden = self.recurrent_block(hidden, torch.cat([context, self.motion_encoder(flow, corr)], dim=1))
        return hidden, self.flow_head(hidden)


class MaskPredictor(nn.Module):
    """Convex-upsampling weights: 8·8·9 logits per coarse pixel, scaled by 0.25 as published."""

    def __init__(self, cin: int, hidden: int = 256):
        super().__init__()
        self.convrelu = conv_norm_act(cin, hidden, 3)
        self.conv = nn.Conv2d(hidden, 8 * 8 * 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.conv(self.convrelu(x))


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor | None, factor: int = 8) -> torch.Tensor:
    """``flow (B, 2, h, w)`` at 1/8 → ``(B, 2, 8h, 8w)``: softmax-weighted 3×3 neighbours (Sec. 3.3),
    or bilinear when ``mask`` is None. Flow values scale by ``factor`` with the grid."""
    batch, _, height, width = flow.shape
    if mask is None:
        return factor * F.interpolate(flow, size=(factor * height, factor * width), mode="bilinear", align_corners=True)
    weights = mask.view(batch, 1, 9, factor, factor, height, width).softmax(dim=2)
    neighbours = F.unfold(factor * flow, 3, padding=1).view(batch, 2, 9, 1, 1, height, width)
    up = (weights * neighbours).sum(dim=2)  # (B, 2, f, f, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2, factor * height, factor * width)


class RAFT(nn.Module):
    """RAFT-large (``variant="large"``, 5.26 M parameters) or RAFT-small (0.99 M)."""

    def __init__(self, variant: str = "large"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown RAFT variant {variant!r}; choose one of {VARIANTS}")
        self.variant = variant
        if variant == "large":
            self.feature_encoder = FeatureEncoder(ResidualBlock, (64, 64, 96, 128, 256), "instance")
            self.context_encoder = FeatureEncoder(ResidualBlock, (64, 64, 96, 128, 256), "batch")
            self.levels, self.radius, self.hidden = 4, 4, 128
            motion = MotionEncoder(4 * 81, (256, 192), (128, 64), 128)
            recurrent = RecurrentBlock(128 + 128, 128, ((1, 5), (5, 1)), ((0, 2), (2, 0)))
            self.update_block = UpdateBlock(motion, recurrent, FlowHead(128, 256))
            self.mask_predictor = MaskPredictor(128)
        else:
            self.feature_encoder = FeatureEncoder(BottleneckBlock, (32, 32, 64, 96, 128), "instance")
            self.context_encoder = FeatureEncoder(BottleneckBlock, (32, 32, 64, 96, 160), None)
            self.levels, self.radius, self.hidden = 4, 3, 96
            motion = MotionEncoder(4 * 49, (96,), (64, 32), 82)
            recurrent = RecurrentBlock(82 + 64, 96, (3,), (1,))
            self.update_block = UpdateBlock(motion, recurrent, FlowHead(96, 128))
            self.mask_predictor = None

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iterations: int = 12) -> list[torch.Tensor]:
        """``image1, image2 (B, 3, H, W)`` in [−1, 1], H and W multiples of 8 →
        the flow after each update, ``(B, 2, H, W)`` (x, y)."""
        batch, _, height, width = image1.shape
        fmap1, fmap2 = self.feature_encoder(torch.cat([image1, image2], dim=0)).float().chunk(2, dim=0)
        pyramid = CorrelationPyramid(fmap1, fmap2, self.levels, self.radius)
        hidden, context = _split_context(self.context_encoder(image1), self.hidden)
        ys, xs = torch.meshgrid(torch.arange(height // 8, device=image1.device),
                                torch.arange(width // 8, device=image1.device), indexing="ij")
        coords0 = torch.stack([xs, ys]).float().expand(batch, -1, -1, -1)
        coords1 = coords0.clone()
        predictions = []
        for _ in range(iterations):
            coords1 = coords1.detach()  # as published: no gradient through the lookup coordinates
            corr = pyramid.lookup(coords1)
            hidden, delta = self.update_block(hidden, context, corr, coords1 - coords0)
            coords1 = coords1 + delta.float()
            mask = None if self.mask_predictor is None else self.mask_predictor(hidden)
            predictions.append(convex_upsample(coords1 - coords0, None if mask is None else mask.float()))
        return predictions


def _split_context(context_out: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context-encoder output → (initial hidden state = tanh, context features = ReLU) (Sec. 3.1)."""
    h, c = context_out.split([hidden, context_out.shape[1] - hidden], dim=1)
    return torch.tanh(h), F.relu(c)


def _state_dict_of(record: object) -> dict:
    """The state dict inside a checkpoint: the dict itself, or under 'state_dict' / 'model'."""
    if isinstance(record, dict):
        for key in ("state_dict", "model"):
            if isinstance(record.get(key), dict):
                record = record[key]
                break
    if not isinstance(record, dict) or not all(isinstance(v, torch.Tensor) for v in record.values()):
        raise TypeError("no state dict of tensors")
    # nn.DataParallel checkpoints prefix every key with "module."
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in record.items()}


def load_raft_checkpoint(uri: str, variant: str | None = None) -> RAFT:
    """A :class:`RAFT` with torchvision-format weights from any fsspec URI (eval mode).

    ``variant`` ("large"/"small") is inferred from the stem's width when None. Read with
    ``torch.load(weights_only=True)``. Raises :class:`InputError` (missing file),
    :class:`CorruptFileError` (unreadable) or :class:`FormatMismatchError` (keys or shapes
    that do not fit the architecture), each naming the file.
    """
    try:
        data = fs.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(uri, "RAFT checkpoint not found") from None
    try:
        state = _state_dict_of(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as exc:  # unpickling errors come in many types; all mean "not a checkpoint"
        raise CorruptFileError(uri, f"not a readable RAFT state dict ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    stem = state.get("feature_encoder.convnormrelu.0.weight")
    if variant is None:
        variant = {64: "large", 32: "small"}.get(int(stem.shape[0]) if stem is not None else -1)
        if variant is None:
            raise FormatMismatchError(uri, "not a torchvision-format RAFT checkpoint (no feature_encoder.convnormrelu "
                                           "stem of width 64 or 32)")
    model = RAFT(variant)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise FormatMismatchError(uri, f"checkpoint does not fit RAFT-{variant}: missing {missing[:4]}, "
                                       f"unexpected {unexpected[:4]}, wrong shapes {wrong[:4]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()


class RaftFlow:
    """``RaftFlow(checkpoint)(current, previous)`` → ``(H, W, 2) float32`` flow current → previous.

    Same contract as :class:`operators.flow.dis.DisFlow`. ``iterations``: GRU updates (12 as
    published for evaluation; fewer is faster and coarser). Runs on CUDA when the process was
    given a GPU (see :mod:`operators.device`), with autocast there.
    """

    name = "raft"

    def __init__(self, checkpoint: str, variant: str | None = None, iterations: int = 12, device: str = "auto",
                 precision: str = "auto"):
        from operators.device import select_placement

        if iterations < 1:
            raise ValueError("iterations must be ≥ 1")
        self.checkpoint, self.iterations = checkpoint, iterations
        self.placement = select_placement(device, precision)
        self.model = load_raft_checkpoint(checkpoint, variant).to(self.placement.device)

    @torch.inference_mode()
    def __call__(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        for name, frame in (("current", current), ("previous", previous)):
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
                raise FormatMismatchError(f"RAFT {self.checkpoint}", f"{name} frame must be (H, W, 3) uint8, got {got}")
        if current.shape != previous.shape:
            raise ValueError(f"frames differ in shape: {current.shape} vs {previous.shape}")
        height, width = current.shape[:2]
        pair = self.placement.to_device(np.stack([current, previous])).permute(0, 3, 1, 2).float()
        pair = pair * (2.0 / 255.0) - 1.0
        # Pad to multiples of 8 by replication, split evenly between the sides (as RAFT's InputPadder).
        pad_h, pad_w = -height % 8, -width % 8
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        pair = F.pad(pair, pads, mode="replicate")
        with self.placement.autocast():
            flow = self.model(pair[:1], pair[1:], self.iterations)[-1]
        flow = flow[0, :, pads[2]:pads[2] + height, pads[0]:pads[0] + width]
        return flow.permute(1, 2, 0).float().cpu().numpy().astype(np.float32)
