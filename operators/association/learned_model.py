"""The recurrent graph network of the learned tracker (torch; inference and training share it).

Johnander et al., *Learning Video Instance Segmentation with Recurrent Graph Neural Networks*
(GCPR 2021 / IJCV 2022), Sec. 3: per frame, a bipartite graph of the live tracks × the
frame's detections. Node and edge embeddings come from small encoders of hand-computed
features (:mod:`operators.association.learned_features`); ``blocks`` GNN blocks each update

* the edges from their two end nodes (``e ← e + MLP([e, t_i, d_j])``),
* the tracks by *gated aggregation* over their edges
  (``t_i ← t_i + MLP([t_i, Σ_j σ(g(e_ij)) ⊙ m(e_ij, d_j)])``), the detections likewise,

interleaved with a residual block per node type. Heads: edge → match logit, detection →
new-track logit. After the assignment, each track's embedding is carried to the next frame by a
GRU cell (the recurrent update: input = its node embedding, its matched detection's and the
edge's, or zeros when missed), and the track heads (confidence, class) read the updated
embedding — so a track's class and score come from its history, not from one frame.

All tensors are dense: ``(T, D, C)`` edges with a ``(T, D)`` mask; at 40 × 40 this is faster
than sparse scatter on one CPU thread.
"""
from __future__ import annotations

import torch
from torch import nn

TRACK_FEATURES = 17
DETECTION_FEATURES = 13
EDGE_FEATURES = 11


def _mlp(inputs: int, width: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, outputs))


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = _mlp(width, width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _GraphBlock(nn.Module):
    """One GNN block: edge update, gated aggregation into tracks and detections, residual blocks.

    Every edge-level product is one of three ``C × kC`` matrices (the edge update's two, and one
    that gives both directions' gates and messages at once); what comes from a node is projected
    per node and broadcast — at 40 × 40 edges the edge-level matrices are the cost."""

    def __init__(self, width: int):
        super().__init__()
        self.edge_in = nn.Linear(width, width)
        self.edge_t = nn.Linear(width, width, bias=False)
        self.edge_d = nn.Linear(width, width, bias=False)
        self.edge_out = nn.Linear(width, width)
        self.messages = nn.Linear(width, 4 * width)        # gate and message to the track, to the detection
        self.message_from_d = nn.Linear(width, width, bias=False)
        self.message_from_t = nn.Linear(width, width, bias=False)
        self.update_t, self.update_d = _mlp(2 * width, width, width), _mlp(2 * width, width, width)
        self.res_t, self.res_d = _Residual(width), _Residual(width)

    def forward(self, t: torch.Tensor, d: torch.Tensor, e: torch.Tensor, mask: torch.Tensor):
        e = e + self.edge_out(torch.relu(self.edge_in(e) + self.edge_t(t)[:, None] + self.edge_d(d)[None]))
        gate_t, message_t, gate_d, message_d = self.messages(e).chunk(4, -1)
        m = mask[..., None]
        # gated sums, scaled by 1/√(1 + degree) so that a crowded frame does not swamp the node
        to_t = (torch.sigmoid(gate_t) * (message_t + self.message_from_d(d)[None]) * m).sum(1) \
            * torch.rsqrt(1.0 + mask.sum(1))[:, None]
        to_d = (torch.sigmoid(gate_d) * (message_d + self.message_from_t(t)[:, None]) * m).sum(0) \
            * torch.rsqrt(1.0 + mask.sum(0))[:, None]
        t = self.res_t(t + self.update_t(torch.cat([t, to_t], -1)))
        d = self.res_d(d + self.update_d(torch.cat([d, to_d], -1)))
        return t, d, e


class TrackGraphNet(nn.Module):
    """The learned association: graph blocks, match / new-track heads, recurrent track update,
    track confidence and class heads. ``classes``: the thing categories the class head knows
    (in order); ``recurrent=False`` is the ablation without the recurrent update (the track
    embedding starts from zeros every frame)."""

    def __init__(self, classes: tuple[int, ...], width: int = 32, state: int = 32, blocks: int = 2,
                 recurrent: bool = True):
        super().__init__()
        self.classes, self.width, self.state_size, self.recurrent = tuple(classes), width, state, recurrent
        self.encode_t = _mlp(TRACK_FEATURES + state, width, width)
        self.encode_d = _mlp(DETECTION_FEATURES, width, width)
        self.encode_e = _mlp(EDGE_FEATURES, width, width)
        self.blocks = nn.ModuleList(_GraphBlock(width) for _ in range(blocks))
        self.match_head = _mlp(width, width, 1)
        self.new_head = _mlp(width, width, 1)
        self.gru = nn.GRUCell(3 * width + 2, state)
        self.score_head = nn.Linear(state, 1)
        self.class_head = nn.Linear(state, len(self.classes))

    def associate(self, track_features: torch.Tensor, track_state: torch.Tensor, detection_features: torch.Tensor,
                  edge_features: torch.Tensor, mask: torch.Tensor):
        """One frame's graph → (match logits ``(T, D)``, new-track logits ``(D,)``, track
        embeddings ``(T, C)``, detection embeddings ``(D, C)``, edge embeddings ``(T, D, C)``).

        ``track_features (T, 17)``, ``track_state (T, state)``, ``detection_features (D, 13)``,
        ``edge_features (T, D, 11)``, ``mask (T, D)`` float (1 = an edge the gates allow).
        """
        if not self.recurrent:
            track_state = torch.zeros_like(track_state)
        t = self.encode_t(torch.cat([track_features, track_state], -1))
        d = self.encode_d(detection_features)
        e = self.encode_e(edge_features)
        for block in self.blocks:
            t, d, e = block(t, d, e, mask)
        return self.match_head(e)[..., 0], self.new_head(d)[..., 0], t, d, e

    def update_state(self, track_state: torch.Tensor, t: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
                     matched_detection: torch.Tensor, new_detections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrent update after assignment.

        ``matched_detection (T,)`` long: the detection each track took, −1 for none;
        ``new_detections (N,)`` long: detections that start a track. Returns (states of the
        existing tracks ``(T, state)``, states of the new tracks ``(N, state)``).
        """
        n_t, width = t.shape[0], self.width
        zeros = t.new_zeros((n_t, width))
        has = (matched_detection >= 0)
        j = matched_detection.clamp(min=0)
        rows = torch.arange(n_t)
        det_in = torch.where(has[:, None], d[j] if d.shape[0] else zeros, zeros)
        edge_in = torch.where(has[:, None], e[rows, j] if d.shape[0] else zeros, zeros)
        flags = torch.stack([has.float(), torch.zeros(n_t)], -1)
        previous = track_state if self.recurrent else torch.zeros_like(track_state)
        existing = self.gru(torch.cat([t, det_in, edge_in, flags], -1), previous) if n_t else track_state
        n_new = new_detections.shape[0]
        if n_new:
            new_in = torch.cat([t.new_zeros((n_new, width)), d[new_detections], t.new_zeros((n_new, width)),
                                torch.tensor([[1.0, 1.0]]).expand(n_new, 2)], -1)
            created = self.gru(new_in, t.new_zeros((n_new, self.state_size)))
        else:
            created = t.new_zeros((0, self.state_size))
        return existing, created

    def track_heads(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence logits ``(N,)``, class logits ``(N, len(classes))``) of track states."""
        return self.score_head(state)[..., 0], self.class_head(state)

    def describe(self) -> dict:
        return {"classes": list(self.classes), "width": self.width, "state": self.state_size,
                "blocks": len(self.blocks), "recurrent": self.recurrent}
