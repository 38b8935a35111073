"""Predicting the place of single clips: a video file, a folder of frames, or a URI to either.

open_checkpoint(ref)      path or models:/NAME/VERSION -> LoadedModel
Predictor                 uint8 clips -> city/state/country/continent + top-k with probs
predict_inputs(...)       sources -> one Prediction or one error per source, in order
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cg_ray.data.sampling import eval_sampling
from cg_ray.errors import UserError
from cg_ray.evaluation import MODES, hierarchical_product, rank, top1, view_probs
from cg_ray.taxonomy import LEVELS
from cg_ray.train.checkpoint import LoadedModel, load_model


def open_checkpoint(reference: str, tracking_uri: str | None = None) -> tuple[LoadedModel, str]:
    """(the loaded model, its local checkpoint folder) for a path or a registry reference."""
    from cg_ray.predict.registry import resolve_checkpoint

    path = resolve_checkpoint(reference, tracking_uri)
    return load_model(path), path


def level_scores(probs: dict[str, torch.Tensor], loaded: LoadedModel, mode: str) -> dict[str, torch.Tensor]:
    """What a mode ranks by, per level (B, n_level), rescaled to sum to 1 over the level.

    flat, official: each head's softmax. independent/codependent: the Eq. 5 product of a label
    and its ancestors; the product of four probabilities sums to less than 1, so it is
    renormalized to read as a probability (this keeps the ranking unchanged).
    """
    plain = mode in ("flat", "official")
    scores = probs if plain else hierarchical_product(probs, loaded.taxonomy)
    return {level: s / s.sum(dim=1, keepdim=True).clamp_min(1e-30) for level, s in scores.items()}


class Predictor:
    """A loaded checkpoint that turns decoded clips into named predictions."""

    def __init__(
        self,
        loaded: LoadedModel,
        mode: str = "codependent",
        top_k: int = 5,
        device: str | torch.device = "cpu",
        views: int | None = None,
    ):
        if mode not in MODES:
            raise UserError(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
        if top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {top_k}")
        self.loaded, self.mode, self.top_k = loaded, mode, top_k
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        data = loaded.config.data
        self.num_frames, self.image_size = data.num_frames, data.image_size
        # The checkpoint's data.sampling, and eval.views clips per video unless `views` says.
        if views is not None and views < 1:
            raise UserError(f"--views must be at least 1, got {views}")
        self.sampling = eval_sampling(loaded.config, views)

    @torch.no_grad()
    def probs(self, video: np.ndarray) -> dict[str, torch.Tensor]:
        """(B, *sampling.leading, T, S, S, 3) uint8 (decode_clip with self.sampling) -> softmax
        per level (B, n_level) float32 on the CPU, averaged over the views of each clip."""
        probs = view_probs(self.model, torch.as_tensor(video, device=self.device), self.sampling.views)
        return {level: p.cpu() for level, p in probs.items()}

    def describe(self, probs: dict[str, torch.Tensor]) -> list[dict]:
        """One dict per clip: the pick per level and `top_k` {level: [{label, prob}, ...]}."""
        names = self.loaded.taxonomy.labels
        ids = rank(probs, self.loaded.taxonomy, self.mode, k=self.top_k)
        picks = top1(probs, self.loaded.taxonomy, self.mode)  # 'official': the city's ancestors
        scores = level_scores(probs, self.loaded, self.mode)
        rows = []
        for b in range(next(iter(probs.values())).shape[0]):
            top = {
                level: [
                    {"label": names[level][i], "prob": round(float(scores[level][b, i]), 6)}
                    for i in ids[level][b].tolist()
                ]
                for level in LEVELS
            }
            rows.append({**{level: names[level][int(picks[level][b])] for level in LEVELS}, "top_k": top})
        return rows

    def predict(self, video: np.ndarray) -> list[dict]:
        return self.describe(self.probs(video))


@dataclass
class Outcome:
    """What happened to one input: a prediction dict (JSON shape) or an error message."""

    input: str
    prediction: dict | None = None
    error: str | None = None


def _named(source: str, message: str) -> str:
    return message if source in message else f"{source}: {message}"


def predict_inputs(predictor: Predictor, sources: list[str], batch_size: int = 8) -> list[Outcome]:
    """Decode and predict every source; an unreadable one gets its error, the rest go on."""
    from cg_ray.data.decode import decode_clip

    outcomes = [Outcome(source) for source in sources]
    pending: list[tuple[Outcome, np.ndarray]] = []
    for outcome in outcomes:
        try:
            pending.append(
                (
                    outcome,
                    decode_clip(
                        outcome.input, predictor.num_frames, predictor.image_size, sampling=predictor.sampling
                    ),
                )
            )
        except UserError as exc:  # ClipError, and storage errors such as an unknown URI scheme
            outcome.error = _named(outcome.input, str(exc))
        if len(pending) == batch_size:
            _flush(predictor, pending)
    _flush(predictor, pending)
    return outcomes


def _flush(predictor: Predictor, pending: list[tuple[Outcome, np.ndarray]]) -> None:
    if not pending:
        return
    for (outcome, _), row in zip(pending, predictor.predict(np.stack([v for _, v in pending]))):
        outcome.prediction = {"input": outcome.input, **row}
    pending.clear()


def format_outcome(outcome: Outcome, top_k: int) -> str:
    """A readable block: the input, then one line per level (pick, its prob, the top-k)."""
    lines = [outcome.input]
    for level in LEVELS:
        top = outcome.prediction["top_k"][level]
        others = "  ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in top)
        lines.append(
            f"  {level:<10}{top[0]['label']:<24}{100 * top[0]['prob']:>6.1f}%   top-{top_k}: {others}"
        )
    return "\n".join(lines)
