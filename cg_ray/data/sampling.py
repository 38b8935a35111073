"""Which frames of a clip the model sees: `data.sampling` and `eval.views`, as frame indices.

Every function is pure: (frames available n, frames wanted T, ...) -> int64 indices into the
clip's frames in playing order. The decoders read exactly these frames, whatever the source
(frame folder, video file, packed shard).

    uniform        T frames spread evenly over the whole clip, first and last included
                   (round(linspace(0, n - 1, T))); cg_ray's default.
    official       as the CityGuessr authors' loader: every 5th frame from the first, the first
                   T of them (0, 5, ..., 75 of a 100-frame clip); a clip too short for that
                   repeats its last pick.
    random         the clip cut into T equal segments; training draws one frame per segment
                   (seeded), evaluation takes the segment centres.
    bidirectional  two views of T frames: the uniform sample forward, and the segment centres
                   (offset by half a segment from it) in reverse order. Both go through the
                   backbone; the model fuses their features (cg_ray.model.net).

Multi-view evaluation (`eval.views` K > 1) takes K temporal clips per video, whose probabilities
are averaged: view k of uniform takes each segment's frame at phase k/K, of random (and the
reversed view of bidirectional) at phase (k + 0.5)/K, of official the stride-5 run starting at
frame floor(5k/K). Shapes: (T,) for one view, (2, T) for bidirectional, with a leading (K,) when
K > 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLINGS = ("uniform", "official", "random", "bidirectional")
OFFICIAL_STRIDE = 5


def uniform(n: int, t: int) -> np.ndarray:
    """(T,) indices spread evenly over [0, n - 1], first and last included; a clip shorter than
    T repeats frames."""
    _check(n, t)
    return np.round(np.linspace(0, n - 1, t)).astype(np.int64)


def segment_phase(n: int, t: int, phase: float) -> np.ndarray:
    """(T,) one frame per equal segment (n / T frames each), at `phase` in [0, 1) of each:
    floor((i + phase) * n / T). Phase 0.5 gives the segment centres."""
    _check(n, t)
    return np.minimum(np.floor((np.arange(t) + phase) * n / t), n - 1).astype(np.int64)


def official(n: int, t: int, start: int = 0, stride: int = OFFICIAL_STRIDE) -> np.ndarray:
    """(T,) every `stride`-th frame from `start`, the first T; a short clip repeats its last."""
    _check(n, t)
    picks = np.arange(min(start, n - 1), n, stride, dtype=np.int64)[:t]
    return np.concatenate([picks, np.full(t - len(picks), picks[-1], dtype=np.int64)])


def random_segments(n: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) one frame drawn uniformly from each of T equal segments (a segment shorter than one
    frame holds the frame it starts in)."""
    _check(n, t)
    starts = np.floor(np.arange(t) * n / t).astype(np.int64)
    ends = np.maximum(np.floor(np.arange(1, t + 1) * n / t).astype(np.int64), starts + 1)
    return np.minimum(starts + rng.integers(0, ends - starts), n - 1)


def _check(n: int, t: int) -> None:
    if n <= 0 or t <= 0:
        raise ValueError(f"cannot sample {t} frames from {n}")


@dataclass(frozen=True)
class Sampling:
    """How one dataset samples its clips: the config's `data.sampling`, T, the evaluation's
    `eval.views`, and whether it is the training split (random draws) or not."""

    name: str = "uniform"
    num_frames: int = 16
    views: int = 1
    """K temporal clips per video (evaluation); training always takes one."""
    training: bool = False

    def __post_init__(self):
        if self.name not in SAMPLINGS:
            raise ValueError(f"unknown sampling '{self.name}' (known: {', '.join(SAMPLINGS)})")
        if self.views < 1 or self.num_frames < 1:
            raise ValueError(f"views and num_frames must be >= 1, got {self.views}, {self.num_frames}")

    @property
    def leading(self) -> tuple[int, ...]:
        """The dims before T in a clip's array: (), (2,), (K,) or (K, 2)."""
        return ((self.views,) if self.views > 1 else ()) + ((2,) if self.name == "bidirectional" else ())

    def indices(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Frame indices of a clip of n frames, shaped leading + (T,)."""
        t, k = self.num_frames, self.views
        if self.training and self.name == "random":
            return random_segments(n, t, rng if rng is not None else np.random.default_rng())
        views = [self._view(n, t, i, k) for i in range(k)]
        return np.stack(views) if k > 1 else views[0]

    def _view(self, n: int, t: int, i: int, k: int) -> np.ndarray:
        if self.name == "official":
            return official(n, t, start=(OFFICIAL_STRIDE * i) // k)
        if self.name == "random":
            return segment_phase(n, t, (i + 0.5) / k)
        forward = uniform(n, t) if k == 1 else segment_phase(n, t, i / k)
        if self.name == "uniform":
            return forward
        return np.stack([forward, segment_phase(n, t, (i + 0.5) / k)[::-1]])  # bidirectional

    def pack_frames_needed(self) -> int:
        """Frames per clip a uniform pack must hold to serve this sampling (the loader then
        samples from the packed frames as from a clip of that many frames)."""
        per_segment = {
            "uniform": self.views,
            "random": max(2, self.views),
            "bidirectional": 2 * self.views,
            "official": 1,
        }[self.name]
        return self.num_frames * per_segment

    def pack_kind(self) -> str:
        """The frames a pack must store: 'official' (the official picks themselves) or
        'uniform' (evenly spaced frames, resampled by the loader)."""
        return "official" if self.name == "official" else "uniform"


def pack_indices(kind: str, n: int, frames: int) -> np.ndarray:
    """(F,) the frames `cg-ray pack --frames F --sampling KIND` stores of a clip of n frames."""
    return official(n, frames) if kind == "official" else uniform(n, frames)


def training_sampling(cfg) -> Sampling:
    """The sampling of a config's training split (cfg: cg_ray.config.Config)."""
    return Sampling(cfg.data.sampling, cfg.data.num_frames, training=True)


def eval_sampling(cfg, views: int | None = None) -> Sampling:
    """The sampling of evaluation and prediction: eval.views clips per video, or `views`."""
    return Sampling(cfg.data.sampling, cfg.data.num_frames, views or cfg.eval.views)
