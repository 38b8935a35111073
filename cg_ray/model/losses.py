"""The training objective (paper Eq. 1-4): four cross-entropies, soft-scene CE and TLA."""

from __future__ import annotations

from typing import Optional

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


def text_targets(tables: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                 levels: str) -> torch.Tensor:
    """TLA target per clip: the city's text vector ('city') or the mean of its four levels'
    vectors ('all', the paper's best). tables[level]: (n_level, D); labels[level]: (B,) ids."""
    use = ("city",) if levels == "city" else LEVELS
    return torch.stack([tables[level][labels[level]] for level in use]).mean(dim=0)


def compute_losses(out: GeoOutput, labels: dict[str, torch.Tensor], weights: LossConfig,
                   scenes: Optional[torch.Tensor] = None,
                   text_target: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Each weighted term and their sum under 'loss'. labels[level]: (B,) int64 ids."""
    terms = {level: F.cross_entropy(out.logits[level].float(), labels[level]) * getattr(weights, level)
             for level in LEVELS}
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
