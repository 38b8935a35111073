"""Classifier heads behind one registry: clip feature (B, D) -> logits per level.

    linear   four independent linear classifiers (the paper)
    graph    a GATv2 over the label tree (city -> state -> country -> continent), in the spirit
             of GeoGAT (Cui et al. 2026, arXiv 2609.39128; no published code, our own design)

The graph head, exactly:
  nodes     every label of every level (N = n_city + n_state + n_country + n_continent),
            each with a learnable embedding e_n (dim `dim`) plus a learnable level embedding;
            e_n starts from a fixed random projection of the label's text feature when text
            features are given (`model.graph.text_init`), else from N(0, 0.02^2)
  edges     child -> parent and parent -> child for every parent link, plus a self loop
  input     h0[b, n] = e_n + W_c x_b : the clip feature x_b (projected to `dim`) conditions
            every node, so the attention between labels depends on the clip
  layers    `layers` GATv2 layers (Brody et al. 2022), `heads` heads of dim/heads concatenated:
              s_ij = a . LeakyReLU_0.2(W_dst h_i + W_src h_j),  alpha_ij = softmax_{j in N(i)} s_ij
              h_i <- LayerNorm(h_i + ELU(W_o sum_j alpha_ij W_src h_j))
  readout   logit[b, n] = <h_L[b, n], W_q x_b> / sqrt(dim) + bias_n: each label's refined
            node state acts as its classifier vector for this clip; the logits of level l are
            the scores of level l's nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

HeadBuilder = Callable[..., nn.Module]
HEADS: dict[str, HeadBuilder] = {}


def register(name: str):
    def wrap(builder):
        HEADS[name] = builder
        return builder

    return wrap


def build_head(
    name: str,
    feature_dim: int,
    num_classes: Sequence[int],
    *,
    parents: Mapping[str, Sequence[int]] | None = None,
    dim: int = 128,
    layers: int = 2,
    heads: int = 4,
    text: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The head `name` maps (B, feature_dim) to {level: (B, n_level)}."""
    if name not in HEADS:
        raise UserError(f"unknown model.head '{name}' (known: {', '.join(sorted(HEADS))})")
    return HEADS[name](
        feature_dim, list(num_classes), parents=parents, dim=dim, layers=layers, heads=heads, text=text
    )


class LinearHeads(nn.ModuleDict):
    """One linear classifier per level on the clip feature (paper Sec. 4.2). A ModuleDict, so
    its weights keep the names `heads.<level>.weight` of checkpoints written before the registry."""

    def __init__(self, feature_dim: int, num_classes: Sequence[int]):
        super().__init__({level: nn.Linear(feature_dim, n) for level, n in zip(LEVELS, num_classes)})

    def forward(self, feature: torch.Tensor) -> dict[str, torch.Tensor]:
        return {level: head(feature) for level, head in self.items()}


@register("linear")
def _linear(feature_dim, num_classes, **_) -> nn.Module:
    return LinearHeads(feature_dim, num_classes)


# -- the label graph -------------------------------------------------------------------------------


def tree_edges(num_classes: Sequence[int], parents: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """(2, E) long: (source, target) node pairs of the label tree, nodes numbered level after
    level in LEVELS order; both directions of every parent link, then one self loop per node."""
    offsets = [0]
    for n in num_classes:
        offsets.append(offsets[-1] + n)
    src, dst = [], []
    for k, (child_level, n_child) in enumerate(zip(LEVELS[:-1], num_classes[:-1])):
        links = list(parents[child_level])
        if len(links) != n_child:
            raise UserError(f"graph head: {child_level} has {n_child} classes but {len(links)} parent links")
        for child, parent in enumerate(links):
            c, p = offsets[k] + child, offsets[k + 1] + int(parent)
            src += [c, p]
            dst += [p, c]
    loops = list(range(offsets[-1]))
    return torch.tensor([src + loops, dst + loops], dtype=torch.long)


class GATv2Layer(nn.Module):
    """GATv2 attention over a fixed edge list, batched over clips; written out in torch."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise UserError(f"model.graph.dim={dim} must be divisible by model.graph.heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.src = nn.Linear(dim, dim)
        self.dst = nn.Linear(dim, dim)
        self.att = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """h: (B, N, dim); edges: (2, E) source, target -> (B, N, dim)."""
        b, n, _ = h.shape
        src, dst = edges[0], edges[1]
        xs = self.src(h).view(b, n, self.heads, self.head_dim)
        xd = self.dst(h).view(b, n, self.heads, self.head_dim)
        msg = xs[:, src]  # (B, E, H, hd)
        score = (F.leaky_relu(xd[:, dst] + msg, 0.2) * self.att).sum(-1)  # (B, E, H)
        index = dst.view(1, -1, 1).expand_as(score)
        top = torch.full((b, n, self.heads), float("-inf"), dtype=score.dtype, device=score.device)
        top = top.scatter_reduce(1, index, score, reduce="amax", include_self=True)
        weight = (score - top.gather(1, index)).exp()
        total = torch.zeros_like(top).scatter_add(1, index, weight)
        alpha = weight / total.gather(1, index)  # softmax over each target's incoming edges
        agg = torch.zeros_like(xs).index_add(1, dst, msg * alpha.unsqueeze(-1))
        return self.norm(h + F.elu(self.out(agg.reshape(b, n, -1))))


class GraphHead(nn.Module):
    """GATv2 over the label tree, conditioned on the clip feature (see the module docstring)."""

    no_weight_decay_names = ("node", "level", "bias")
    """Embedding tables and biases: the optimizer's weight decay leaves them alone."""
    edges: torch.Tensor
    level_of: torch.Tensor

    def __init__(
        self,
        feature_dim: int,
        num_classes: Sequence[int],
        parents: Mapping[str, Sequence[int]],
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        text: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.num_classes = list(num_classes)
        self.register_buffer("edges", tree_edges(num_classes, parents), persistent=False)
        self.register_buffer(
            "level_of",
            torch.cat([torch.full((k,), i, dtype=torch.long) for i, k in enumerate(num_classes)]),
            persistent=False,
        )
        total = sum(num_classes)
        self.node = nn.Parameter(torch.randn(total, dim) * 0.02)
        self.level = nn.Parameter(torch.zeros(len(num_classes), dim))
        if text is not None:
            with torch.no_grad():
                self.node.copy_(_text_init(text, num_classes, dim))
        self.condition = nn.Linear(feature_dim, dim)
        self.query = nn.Linear(feature_dim, dim)
        self.bias = nn.Parameter(torch.zeros(total))
        self.layers = nn.ModuleList(GATv2Layer(dim, heads) for _ in range(layers))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, feature: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature: (B, D) -> {level: (B, n_level)}."""
        nodes = self.node + self.level[self.level_of]  # (N, dim)
        h = nodes.unsqueeze(0) + self.condition(feature).unsqueeze(1)  # (B, N, dim)
        for layer in self.layers:
            h = layer(h, self.edges)
        scores = torch.einsum("bnd,bd->bn", h, self.query(feature)) * self.scale + self.bias
        return dict(zip(LEVELS, scores.split(self.num_classes, dim=-1)))


def _text_init(text: Mapping[str, torch.Tensor], num_classes: Sequence[int], dim: int) -> torch.Tensor:
    """(N, dim) start values from the label names' text features: unit vectors through a fixed
    random projection (seed 0), scaled to the 0.02 std of the learned start."""
    rows = torch.cat([torch.as_tensor(text[level], dtype=torch.float32) for level in LEVELS])
    if rows.shape[0] != sum(num_classes):
        raise UserError(
            f"text features cover {rows.shape[0]} labels, the taxonomy {sum(num_classes)}: "
            "run `cg-ray text` again for this dataset"
        )
    projection = torch.randn(rows.shape[1], dim, generator=torch.Generator().manual_seed(0))
    start = F.normalize(rows, dim=-1) @ projection
    return start / start.std().clamp_min(1e-8) * 0.02


@register("graph")
def _graph(feature_dim, num_classes, *, parents=None, dim=128, layers=2, heads=4, text=None) -> nn.Module:
    if parents is None:
        raise UserError(
            "model.head=graph needs the taxonomy's parent links; build the model with the dataset's taxonomy"
        )
    return GraphHead(feature_dim, num_classes, parents, dim, layers, heads, text)
