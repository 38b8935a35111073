"""Hierarchical evaluation (paper Eq. 5, Sec. 4.6 and 5.6) and top-k accuracy per level.

Modes:
  flat         each level's own softmax, ranked on its own;
  independent  Eq. 5 product (a label's probability times those of all its ancestors), then
               each level ranked on its own product;
  codependent  the city is the argmax of the city product; state, country and continent are read
               off the taxonomy above it. Top-k lists of coarser levels start with that pick and
               continue down the level's product ranking.
  official     as the authors' evaluate.py: the city is the argmax of the plain city softmax (no
               product) and the coarser picks are read off the taxonomy above it; top-k lists
               are each level's own softmax (so a level's top-5 need not hold its top-1).

With `eval.views` K > 1 a clip is seen as K temporal clips whose softmax outputs are averaged
(average_views) before any of this.
"""

from __future__ import annotations

import numpy as np
import torch

from cg_ray.taxonomy import LEVELS, Taxonomy

MODES = ("flat", "independent", "codependent", "official")
TOPK = (1, 5)


def hierarchical_product(probs: dict[str, torch.Tensor], taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """Eq. 5: P'(label) = P(label) * prod of P(ancestor), for every level. probs[level]: (B, n)."""
    out = {"continent": probs["continent"]}
    for child, parent in reversed(list(zip(LEVELS[:-1], LEVELS[1:]))):
        index = torch.as_tensor(taxonomy.parents[child], device=probs[child].device)
        out[child] = probs[child] * out[parent][:, index]
    return {level: out[level] for level in LEVELS}


def _rank_with_first(scores: torch.Tensor, first: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k ids of `scores` (B, n), with `first` (B,) forced into position 0."""
    masked = scores.clone()
    masked.scatter_(1, first[:, None], float("-inf"))
    rest = masked.topk(min(k, scores.shape[1]) - 1, dim=1).indices
    return torch.cat([first[:, None], rest], dim=1)


def rank(
    probs: dict[str, torch.Tensor], taxonomy: Taxonomy, mode: str, k: int = 5
) -> dict[str, torch.Tensor]:
    """Top-k label ids per level (B, min(k, n_level)), best first, for one evaluation mode."""
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode '{mode}' (known: {', '.join(MODES)})")
    scores = probs if mode in ("flat", "official") else hierarchical_product(probs, taxonomy)
    if mode != "codependent":
        return {lvl: scores[lvl].topk(min(k, scores[lvl].shape[1]), dim=1).indices for lvl in LEVELS}
    city = scores["city"].topk(min(k, scores["city"].shape[1]), dim=1).indices
    out, pick = {"city": city}, city[:, 0]
    for child, parent in zip(LEVELS[:-1], LEVELS[1:]):
        pick = torch.as_tensor(taxonomy.parents[child], device=pick.device)[pick]
        out[parent] = _rank_with_first(scores[parent], pick, k)
    return out


def _map_up(city: torch.Tensor, taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """(B,) city ids -> the ids of each level above them, read off the taxonomy."""
    out, pick = {"city": city}, city
    for child, parent in zip(LEVELS[:-1], LEVELS[1:]):
        pick = torch.as_tensor(taxonomy.parents[child], device=pick.device)[pick]
        out[parent] = pick
    return out


def top1(probs: dict[str, torch.Tensor], taxonomy: Taxonomy, mode: str) -> dict[str, torch.Tensor]:
    """The pick per level (B,) of a mode: the head of rank()'s lists, except in 'official',
    where every level's pick is read off the plain city argmax."""
    if mode == "official":
        return _map_up(probs["city"].argmax(dim=1), taxonomy)
    return {level: ids[:, 0] for level, ids in rank(probs, taxonomy, mode, k=1).items()}


def average_views(probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Multi-view evaluation: softmax outputs of K views per clip, (B, K, n) per level ->
    their mean (B, n), taken before any hierarchical product."""
    return {level: p.mean(dim=1) for level, p in probs.items()}


def view_probs(model, video: torch.Tensor, views: int = 1) -> dict[str, torch.Tensor]:
    """Softmax per level (B, n) float32 of a model on a batch of clips. With views K > 1 the
    video is (B, K, ...): each view goes through the model in turn (memory of one view at a
    time) and the K softmax outputs are averaged."""
    if views == 1:
        out = model(video)
        return {level: torch.softmax(out.logits[level].float(), dim=-1) for level in LEVELS}
    each = [view_probs(model, video[:, k]) for k in range(views)]
    return average_views({level: torch.stack([p[level] for p in each], dim=1) for level in LEVELS})


class Accuracy:
    """Running top-1/top-5 counts per level; `state()` and `merge()` let workers sum them."""

    def __init__(self, taxonomy: Taxonomy, mode: str):
        self.taxonomy, self.mode = taxonomy, mode
        self.counts = np.zeros((len(LEVELS), len(TOPK)), dtype=np.int64)
        self.total = 0

    def update(self, probs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> None:
        ranked = rank(probs, self.taxonomy, self.mode, k=max(TOPK))
        picks = top1(probs, self.taxonomy, self.mode)
        for i, level in enumerate(LEVELS):
            truth = labels[level].to(ranked[level].device)
            hits = ranked[level] == truth[:, None]
            for j, k in enumerate(TOPK):
                hit = (picks[level] == truth) if k == 1 else hits[:, :k].any(dim=1)
                self.counts[i, j] += int(hit.sum())
        self.total += int(labels["city"].shape[0])

    def state(self) -> np.ndarray:
        return np.concatenate([self.counts.ravel(), [self.total]])

    def load_state(self, state: np.ndarray) -> None:
        self.counts = np.asarray(state[:-1], dtype=np.int64).reshape(len(LEVELS), len(TOPK))
        self.total = int(state[-1])

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """`city_top1`, `state_top1`, ..., `continent_top5` in percent."""
        total = max(self.total, 1)
        return {
            f"{prefix}{level}_top{k}": 100.0 * float(self.counts[i, j]) / total
            for i, level in enumerate(LEVELS)
            for j, k in enumerate(TOPK)
        }
