"""The CityGuessr network: backbone -> heads (four linear, or the graph head) -> SCA -> FFN_s
(scenes), FFN_t (text)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cg_ray.config import Config
from cg_ray.model.backbones import Backbone, build_backbone
from cg_ray.model.heads import LinearHeads, build_head
from cg_ray.model.sca import SelfCrossAttention, mlp
from cg_ray.taxonomy import LEVELS


@dataclass
class GeoOutput:
    """What the network returns, whatever its backbone or switches."""

    logits: dict[str, torch.Tensor]
    """Per level (B, n_level)."""
    scene_logits: torch.Tensor | None = None
    """(B, n_scenes) from FFN_s, when SCA is on."""
    text_embedding: torch.Tensor | None = None
    """(B, text_dim) from FFN_t, when TLA is on."""


class Normalize(nn.Module):
    """uint8 clips (B, T, H, W, 3) -> float (B, T, 3, H, W), scaled to [0,1] and standardized.

    Living inside the model, it runs on the device and identically in training, evaluation and
    prediction.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video.permute(0, 1, 4, 2, 3).float().div_(255.0)
        return (x - self.mean) / self.std


class CityGuessrNet(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        num_classes: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        sca: SelfCrossAttention | None = None,
        ffn_scene: nn.Module | None = None,
        ffn_text: nn.Module | None = None,
        heads: nn.Module | None = None,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        # (B, D) -> {level: (B, n_level)}; the paper's four linear heads unless given.
        self.heads = heads if heads is not None else LinearHeads(backbone.feature_dim, num_classes)
        self.sca, self.ffn_scene, self.ffn_text = sca, ffn_scene, ffn_text

    def forward(self, video: torch.Tensor) -> GeoOutput:
        """video: (B, T, H, W, 3) uint8, or (B, V, T, H, W, 3): V views of each clip (the
        forward and reversed views of data.sampling=bidirectional), fused by clip_feature."""
        feature = self.clip_feature(video)
        logits = self.heads(feature)
        if self.sca is None:
            return GeoOutput(logits)
        attended = self.sca(torch.cat([logits[level] for level in LEVELS], dim=-1))
        return GeoOutput(
            logits,
            scene_logits=self.ffn_scene(attended) if self.ffn_scene is not None else None,
            text_embedding=self.ffn_text(attended) if self.ffn_text is not None else None,
        )

    def clip_feature(self, video: torch.Tensor) -> torch.Tensor:
        """(B, D) backbone feature of each clip. With V views per clip every view goes through
        the backbone (as a batch of B * V clips) and the clip's feature is the mean of its V
        view features: the fusion of bidirectional sampling, before the heads."""
        if video.dim() == 5:
            return self.backbone(self.normalize(video))
        b, v = video.shape[:2]
        features = self.backbone(self.normalize(video.flatten(0, 1)))
        return features.view(b, v, -1).mean(dim=1)


def build_model(
    cfg: Config,
    num_classes: Sequence[int],
    text_dim: int = 512,
    backbone_arch: dict | None = None,
    parents: Mapping[str, Sequence[int]] | None = None,
    text_tables: Mapping[str, object] | None = None,
) -> CityGuessrNet:
    """The network a config describes, for a taxonomy with `num_classes` per level.

    `parents` (Taxonomy.parents) is needed by the graph head; `text_tables` (per level
    (n_level, D) label text features), when given and model.graph.text_init is on, give the
    graph head's node embeddings their start values.

    TLA attends over PV' from the SCA attention, so it builds the attention even when the scene
    loss is off; with both off the network is the plain VideoMAE + four heads baseline.
    """
    m = cfg.model
    backbone = build_backbone(m.backbone, cfg.data.num_frames, cfg.data.image_size, backbone_arch)
    d = sum(num_classes)
    sca = SelfCrossAttention(m.sca.embed_dim, m.sca.heads) if (m.sca.enabled or m.tla.enabled) else None
    ffn_scene = mlp([d, *m.sca.scene_widths, m.sca.num_scenes]) if m.sca.enabled else None
    ffn_text = mlp([d, *m.tla.widths, text_dim]) if m.tla.enabled else None
    text = None
    if m.head == "graph" and m.graph.text_init and text_tables:
        text = {level: torch.as_tensor(text_tables[level]) for level in LEVELS}
    heads = build_head(
        m.head,
        backbone.feature_dim,
        num_classes,
        parents=parents,
        dim=m.graph.dim,
        layers=m.graph.layers,
        heads=m.graph.heads,
        text=text,
    )
    return CityGuessrNet(backbone, num_classes, m.mean, m.std, sca, ffn_scene, ffn_text, heads)
