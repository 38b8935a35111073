"""The training objective (paper Eq. 1-4): four cross-entropies, soft-scene CE and TLA; and,
for the recipes, label smoothing and a parent-child consistency term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cg_ray.config import LossConfig
from cg_ray.model.net import GeoOutput
from cg_ray.taxonomy import LEVELS


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE against a distribution: mean over the batch of -sum_c s_c log softmax(z)_c.

    logits, target: (B, C); each target row sums to 1."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def tla_loss(embedding: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative cosine similarity, averaged over the batch ('mean'), or summed ('sum': the
    authors' code, which weighs TLA B times more). (B, D), (B, D) -> scalar."""
    cosine = F.cosine_similarity(embedding.float(), target.float(), dim=-1)
    return -(cosine.sum() if reduction == "sum" else cosine.mean())


def consistency_loss(logits: dict[str, torch.Tensor], parents: dict[str, torch.Tensor]) -> torch.Tensor:
    """Parent-child consistency: for each adjacent pair of levels, sum over parents of
    (P(parent) - sum of its children's P)^2, with P each level's softmax; summed over the three
    pairs, mean over the batch. Zero exactly when every level's distribution is the sum of the
    level below. logits[level]: (B, n_level); parents[child_level]: (n_child,) parent ids."""
    pairs = []
    for child, parent in zip(LEVELS[:-1], LEVELS[1:]):
        p_child = F.softmax(logits[child].float(), dim=-1)
        p_parent = F.softmax(logits[parent].float(), dim=-1)
        index = parents[child].to(p_child.device).expand_as(p_child)
        summed = torch.zeros_like(p_parent).scatter_add(1, index, p_child)
        pairs.append((p_parent - summed).pow(2).sum(dim=-1).mean())
    return torch.stack(pairs).sum()


def text_targets(
    tables: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], levels: str
) -> torch.Tensor:
    """TLA target per clip: the city's text vector ('city') or the mean of its four levels'
    vectors ('all', the paper's best). tables[level]: (n_level, D); labels[level]: (B,) ids."""
    use = ("city",) if levels == "city" else LEVELS
    return torch.stack([tables[level][labels[level]] for level in use]).mean(dim=0)


def compute_losses(
    out: GeoOutput,
    labels: dict[str, torch.Tensor],
    weights: LossConfig,
    scenes: torch.Tensor | None = None,
    text_target: torch.Tensor | None = None,
    parents: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Each weighted term and their sum under 'loss'. labels[level]: (B,) int64 ids;
    parents[child_level]: (n_child,) parent ids, needed when weights.consistency > 0."""
    smoothing = weights.label_smoothing
    terms = {
        level: F.cross_entropy(out.logits[level].float(), labels[level], label_smoothing=smoothing)
        * getattr(weights, level)
        for level in LEVELS
    }
    if weights.consistency > 0:
        if parents is None:
            raise ValueError("loss.consistency > 0 needs the taxonomy's parent ids")
        terms["consistency"] = consistency_loss(out.logits, parents) * weights.consistency
    if out.scene_logits is not None:
        if scenes is None:
            raise ValueError("the model predicts scenes but the batch has no scene labels")
        terms["scene"] = soft_cross_entropy(out.scene_logits, scenes) * weights.scene
    if out.text_embedding is not None:
        if text_target is None:
            raise ValueError("the model predicts text embeddings but no TLA target was given")
        terms["tla"] = tla_loss(out.text_embedding, text_target, weights.tla_reduction) * weights.tla
    terms["loss"] = sum(terms.values())
    return terms
