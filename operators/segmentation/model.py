"""The built-in panoptic network: a small box-free, bottom-up model in the style of
Panoptic-DeepLab (Cheng et al., CVPR 2020), plus an embedding head for association
(SiamTrack, Woo et al., CVPR 2021).

Panoptic-DeepLab predicts, per pixel, (1) semantic class logits, (2) an instance *center
heatmap* (a 2-D Gaussian of σ = 8 px around each thing's center of mass, Sec. 3.2), and
(3) an *offset* from the pixel to the center of its instance. Grouping thing pixels to
their nearest predicted center then yields instances without boxes (Sec. 3.3,
:mod:`operators.segmentation.postprocess`). We add a fourth head, a per-pixel embedding
whose mask-pooled, L2-normalised average per segment (SiamTrack's MaskPool) is the
segment's appearance descriptor for the tracker.

There is no torchvision here, so the backbone is a small residual CNN written out below:
a cheap stride-4 stem (the synthetic corpus does not need a heavy one), three residual
stages to stride 32 with dilation in the deep stages for a large receptive field (offsets
of big objects reach ~100 px), an image-pooling context branch (the ASPP idea of
DeepLabv3 reduced to one 1×1 and one pooled branch), and a U-Net/FPN-style decoder back
to stride 4 where all heads run (or on to stride 2 with the stem's features: ``head_stride=2``).

Model contract (shared with TorchScript / torch.export artifacts, see ``host.py``):
input ``(B, 3, H, W) float32`` RGB in [0, 1], H and W divisible by 32; output a dict of
``semantic (B, C, h, w)`` logits, ``center (B, 1, h, w)`` heatmap, ``offset (B, 2, h, w)``
(dy, dx) in input pixels, ``embedding (B, D, h, w)`` — each at an integer stride
``H / h = W / w`` (one for all heads, or a finer one for the semantic logits alone).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from operators.formats.categories import CITYSCAPES_CATEGORIES, CITYSCAPES_THING_IDS

OUTPUT_KEYS = ("semantic", "center", "offset", "embedding")
SIZE_DIVISOR = 32  # the backbone's total stride: inputs must be multiples of it


@dataclass(frozen=True)
class PanopticNetConfig:
    """Architecture hyper-parameters; saved next to the weights so a file says what it fits."""

    num_classes: int = len(CITYSCAPES_CATEGORIES)
    thing_ids: tuple[int, ...] = CITYSCAPES_THING_IDS
    widths: tuple[int, int, int, int] = (32, 64, 96, 128)  # channels at stride 4, 8, 16, 32
    decoder_channels: int = 48
    head_channels: int = 32
    embedding_dim: int = 16
    # Stride of the heads: 4 (Panoptic-DeepLab's) or 2, where one more decoder level fuses the
    # stem's stride-2 features so that thin stuff (poles are 2–4 px wide at 256×512) and small
    # things span more than a cell. 4 keeps the architecture of earlier weight files.
    head_stride: int = 4
    fine_channels: int = 32  # channels of the stride-2 level (used when a head runs at stride 2)
    # Stride of the semantic head alone (None: head_stride). 2 with head_stride 4 puts only the
    # semantic logits on the stride-2 level, for thin stuff and small things, while the center,
    # offset and embedding heads stay at stride 4, where their training is cheaper and their
    # offsets trained better (session 3's stride-2 heads). Measured in session 5 (fine_channels
    # 16, 11000 steps): held-out PQ 57.1 against 59.0 for the stride-4 network; not shipped.
    semantic_stride: int | None = None

    def __post_init__(self) -> None:
        if self.head_stride not in (2, 4):
            raise ValueError(f"head_stride must be 2 or 4, got {self.head_stride}")
        if self.semantic_stride not in (None, 2, 4) or (self.semantic_stride or self.head_stride) > self.head_stride:
            raise ValueError(f"semantic_stride must be 2 or 4 and at most head_stride, got {self.semantic_stride}")

    @property
    def fine_level(self) -> bool:
        """Whether the decoder has its stride-2 level (some head runs at stride 2)."""
        return self.head_stride == 2 or self.semantic_stride == 2

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "PanopticNetConfig":
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        return cls(**fields)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Basic residual block (He et al., CVPR 2016): two 3×3 conv-BN, identity shortcut."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels, dilation=dilation)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, dilation, dilation=dilation, bias=False),
                                   nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class Backbone(nn.Module):
    """Stride-2/4/8/16/32 features ``[c2, c4, c8, c16, c32]`` of an RGB batch (c2: the first
    stem convolution, ``widths[0] // 2`` channels)."""

    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        w4, w8, w16, w32 = widths
        self.stem = nn.Sequential(conv_bn_relu(3, w4 // 2, stride=2), conv_bn_relu(w4 // 2, w4, stride=2))
        self.stage4 = ResidualBlock(w4)
        self.stage8 = nn.Sequential(conv_bn_relu(w4, w8, stride=2), ResidualBlock(w8))
        self.stage16 = nn.Sequential(conv_bn_relu(w8, w16, stride=2), ResidualBlock(w16), ResidualBlock(w16, 2))
        self.stage32 = nn.Sequential(conv_bn_relu(w16, w32, stride=2), ResidualBlock(w32, 2), ResidualBlock(w32, 4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.stem[0](x)
        c4 = self.stage4(self.stem[1](c2))
        c8 = self.stage8(c4)
        c16 = self.stage16(c8)
        c32 = self.stage32(c16)
        return [c2, c4, c8, c16, c32]


class ImagePoolingContext(nn.Module):
    """ASPP reduced to its 1×1 branch and its image-pooling branch (DeepLabv3, Sec. 3.3)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.local = conv_bn_relu(cin, cout, kernel=1)
        self.pooled = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(2 * cout, cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([self.local(x), pooled], dim=1))


class Decoder(nn.Module):
    """Top-down path: upsample ×2, add a 1×1 lateral of the skip feature, fuse with a 3×3 conv.
    Returns ``(stride-4 features, stride-2 features or None)``: the stride-2 level
    (``fine_channels``) exists when ``fine_channels``."""

    def __init__(self, widths: tuple[int, int, int, int], channels: int, fine_channels: int = 0):
        super().__init__()
        self.context = ImagePoolingContext(widths[3], channels)
        self.laterals = nn.ModuleList([conv_bn_relu(w, channels, kernel=1) for w in widths[2::-1]])
        self.fuse = nn.ModuleList([conv_bn_relu(channels, channels) for _ in widths[2::-1]])
        self.fine = None
        if fine_channels:
            self.fine = nn.ModuleDict({"reduce": conv_bn_relu(channels, fine_channels, kernel=1),
                                       "lateral": conv_bn_relu(widths[0] // 2, fine_channels, kernel=1),
                                       "fuse": conv_bn_relu(fine_channels, fine_channels)})

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.context(features[4])
        for lateral, fuse, skip in zip(self.laterals, self.fuse, features[3:0:-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(x + lateral(skip))
        if self.fine is None:
            return x, None
        fine = F.interpolate(self.fine["reduce"](x), size=features[0].shape[-2:], mode="bilinear",
                             align_corners=False)
        return x, self.fine["fuse"](fine + self.fine["lateral"](features[0]))


def head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Panoptic-DeepLab's prediction head: a 3×3 conv then a 1×1 projection (Sec. 3.1)."""
    return nn.Sequential(conv_bn_relu(cin, hidden), nn.Conv2d(hidden, cout, 1))


class PanopticNet(nn.Module):
    """Backbone + decoder + four heads at ``config.head_stride`` (the semantic head at
    ``config.semantic_stride`` when set). ``forward(images)`` → dict (see module doc)."""

    def __init__(self, config: PanopticNetConfig | None = None):
        super().__init__()
        self.config = config or PanopticNetConfig()
        cfg = self.config
        self.backbone = Backbone(cfg.widths)
        self.decoder = Decoder(cfg.widths, cfg.decoder_channels, cfg.fine_channels if cfg.fine_level else 0)
        channels = {2: cfg.fine_channels, 4: cfg.decoder_channels}
        semantic_stride = cfg.semantic_stride or cfg.head_stride
        self.semantic_head = head(channels[semantic_stride], cfg.head_channels, cfg.num_classes)
        self.center_head = head(channels[cfg.head_stride], cfg.head_channels, 1)
        self.offset_head = head(channels[cfg.head_stride], cfg.head_channels, 2)
        self.embedding_head = head(channels[cfg.head_stride], cfg.head_channels, cfg.embedding_dim)
        # Offsets are regressed in input pixels (tens of pixels); a larger output scale makes the
        # last layer's initial range closer to the target range and speeds up early training.
        self.offset_scale = 16.0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W) float32`` RGB in [0, 1], H and W multiples of 32."""
        x = (images - 0.45) / 0.25  # roughly zero-mean, unit-variance inputs
        coarse, fine = self.decoder(self.backbone(x))
        at = {4: coarse, 2: fine}
        features = at[self.config.head_stride]
        return {"semantic": self.semantic_head(at[self.config.semantic_stride or self.config.head_stride]),
                "center": self.center_head(features),
                "offset": self.offset_head(features) * self.offset_scale,
                "embedding": self.embedding_head(features)}
