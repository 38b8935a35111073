"""Self-Cross Attention (paper Sec. 4.3).

The four hierarchy logit vectors are concatenated into PV (d = d1+d2+d3+d4). As in the official
code, every scalar of PV is a token: it is projected 1 -> E for the query, key and value, H-head
attention runs over the d tokens (self attention within a level, cross attention between levels),
and a projection E -> 1 gives back the attended d-vector PV'.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SelfCrossAttention(nn.Module):
    def __init__(self, embed_dim: int = 6, heads: int = 2):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(1, embed_dim)
        self.k = nn.Linear(1, embed_dim)
        self.v = nn.Linear(1, embed_dim)
        self.out = nn.Linear(embed_dim, 1)

    def forward(self, pv: torch.Tensor) -> torch.Tensor:
        """pv: (B, d) concatenated logits -> PV' (B, d)."""
        batch, d = pv.shape
        tokens = pv.unsqueeze(-1)  # (B, d, 1)

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, d, E) -> (B, H, d, E/H)
            return x.view(batch, d, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(tokens)), split(self.k(tokens)), split(self.v(tokens))
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(E/H)) v
        attended = attended.transpose(1, 2).reshape(batch, d, -1)
        return self.out(attended).squeeze(-1)


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers through `widths` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
