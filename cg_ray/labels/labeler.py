"""The two steps of scene labelling that run on the cluster: decode a clip's frames, label them.

`SceneLabeler.clip_labels` is the boundary that matters: frames of clips in, 16-d soft labels
and majority ids out. Where the frames come from (raw clips decoded here, or packed shards) is
the caller's business.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from cg_ray.data.decode import ClipError, decode_clip
from cg_ray.labels.hierarchy import NUM_SCENES, clip_label, frame_categories
from cg_ray.labels.places import MEAN, STD, PlacesWeights, places_model
from cg_ray.storage_errors import StorageError, StorageUnavailable


def decode_clips(batch: dict[str, np.ndarray], *, num_frames: int, image_size: int) -> dict[str, np.ndarray]:
    """Manifest rows (clip_id, source, frames as JSON or "") -> video (B, T, S, S, 3) uint8 and
    error ("" for a decoded clip, else why it could not be)."""
    n = len(batch["clip_id"])
    video = np.zeros((n, num_frames, image_size, image_size, 3), dtype=np.uint8)
    errors = [""] * n
    for i, (source, frames) in enumerate(zip(batch["source"], batch["frames"])):
        names = json.loads(frames) if frames else None
        try:
            video[i] = decode_clip(str(source), num_frames, image_size, frames=names)
        except (StorageError, StorageUnavailable):
            raise  # the store's fault, not the clip's: retried, then the job stops
        except ClipError as exc:
            errors[i] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop the job
            errors[i] = f"cannot read clip '{source}': {type(exc).__name__}: {exc}"
    return {
        "clip_id": np.asarray(batch["clip_id"]).astype(str),
        "video": video,
        "error": np.asarray(errors, dtype=object),
    }


class SceneLabeler:
    """A Places365 CNN and the hierarchy weights; callable on Ray Data batches (an actor)."""

    def __init__(self, state_ref, arch: str, num_classes: int, weights: np.ndarray, use_gpu: bool = False):
        import ray

        data = state_ref[0] if isinstance(state_ref[0], bytes) else ray.get(state_ref[0])
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # one actor per CPU: threads would only contend
        self.model = places_model(PlacesWeights(arch, state, num_classes)).to(self.device)
        self.weights = torch.tensor(np.array(weights, dtype=np.float32), device=self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def frame_categories(self, frames: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 frames -> (N,) int64 top level-2 category per frame."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = (x.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
        probs = torch.softmax(self.model(x).float(), dim=-1)
        return frame_categories(probs, self.weights).cpu().numpy()

    def clip_labels(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, S, S, 3) uint8 -> ((B, 16) float32 soft labels, (B,) int32 majority ids)."""
        b, t = videos.shape[:2]
        categories = self.frame_categories(videos.reshape(b * t, *videos.shape[2:])).reshape(b, t)
        labels = [clip_label(row) for row in categories]
        return (
            np.stack([soft for soft, _ in labels]).astype(np.float32),
            np.array([majority for _, majority in labels], dtype=np.int32),
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["clip_id"])
        errors = np.asarray(batch["error"], dtype=object)
        ok = np.array([not e for e in errors], dtype=bool)
        soft = np.zeros((n, NUM_SCENES), dtype=np.float32)
        majority = np.full(n, -1, dtype=np.int32)
        if ok.any():
            soft[ok], majority[ok] = self.clip_labels(np.asarray(batch["video"])[ok])
        return {"clip_id": batch["clip_id"], "scene_soft": soft, "scene_majority": majority, "error": errors}
