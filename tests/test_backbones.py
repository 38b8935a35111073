import pytest
import torch

from cg_ray.config import BackboneConfig, config_from_dict
from cg_ray.errors import UserError
from cg_ray.model.backbones import BACKBONES, FrameEncoder, build_backbone
from cg_ray.model.net import build_model

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=8, tubelet_size=2)


def tiny(name: str, **extra) -> BackboneConfig:
    return BackboneConfig(name=name, **{**TINY, **extra})


def test_the_paper_backbones_are_registered():
    assert {"videomae", "vit", "mae", "timesformer"} <= set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_trains_and_reloads_through_the_pretrained_path(name, tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(tiny(name), 4, 32)
    video = torch.randn(2, 4, 3, 32, 32)
    feature = backbone(video)
    assert feature.shape == (2, backbone.feature_dim) and torch.isfinite(feature).all()
    feature.pow(2).sum().backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    backbone.eval()
    with torch.no_grad():
        expected = backbone(video)
    # The same code path as a hub id: a folder written by save_pretrained. Its architecture
    # comes from the folder, whatever the config's from-scratch fields say.
    backbone.encoder.save_pretrained(tmp_path / name)
    loaded = build_backbone(BackboneConfig(name=name, pretrained=str(tmp_path / name)), 4, 32)
    # And the way checkpoints rebuild it: arch() without weights, then the state dict.
    rebuilt = build_backbone(BackboneConfig(name=name), 4, 32, arch=backbone.arch())
    rebuilt.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(video), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rebuilt.eval()(video), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_the_full_network(name):
    cfg = config_from_dict(
        {},
        ["data.num_frames=4", "data.image_size=32"]
        + [f"model.backbone.{k}={v}" for k, v in TINY.items()]
        + [f"model.backbone.name={name}"],
    )
    out = build_model(cfg, [5, 4, 3, 2], text_dim=8)(
        torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    )
    assert out.logits["city"].shape == (2, 5) and out.scene_logits.shape == (2, 16)


def test_frame_selection_sees_the_chosen_frame():
    torch.manual_seed(0)
    video = torch.randn(3, 5, 3, 32, 32)
    outputs = {}
    for frame in ("first", "middle", "last", "random"):
        torch.manual_seed(0)
        encoder = build_backbone(tiny("vit", frame=frame), 5, 32).eval()
        with torch.no_grad():
            outputs[frame] = encoder(video)
            # The frame it names, and only that frame, decides the feature.
            index = {"first": 0, "middle": 2, "last": 4, "random": 2}[frame]
            alone = video[:, index : index + 1].expand(-1, 5, -1, -1, -1)
            torch.testing.assert_close(encoder(alone), outputs[frame])
    assert not torch.allclose(outputs["first"], outputs["last"])
    picker = FrameEncoder(build_backbone(tiny("vit"), 5, 32).encoder, "random").train()
    torch.manual_seed(0)
    picks = torch.stack([picker.frame_index(64, 5, "cpu") for _ in range(4)])
    assert len(set(picks.flatten().tolist())) == 5  # training draws every frame


def test_bad_frame_choice_is_refused():
    with pytest.raises(UserError, match="model.backbone.frame='centre': must be one of"):
        config_from_dict({}, ["model.backbone.frame=centre"])


def test_pretrained_timesformer_is_fitted_to_the_data_frames_and_size(tmp_path):
    torch.manual_seed(0)
    source = build_backbone(tiny("timesformer"), 4, 32)
    source.encoder.save_pretrained(tmp_path / "ts")
    fitted = build_backbone(BackboneConfig(name="timesformer", pretrained=str(tmp_path / "ts")), 8, 48)
    emb = fitted.encoder.embeddings
    assert emb.time_embeddings.shape == (1, 8, 32) and emb.position_embeddings.shape == (1, 37, 32)
    torch.testing.assert_close(
        emb.time_embeddings[0, [0, -1]], source.encoder.embeddings.time_embeddings[0, [0, -1]]
    )
    video = torch.randn(1, 8, 3, 48, 48)
    rebuilt = build_backbone(BackboneConfig(name="timesformer"), 8, 48, arch=fitted.arch())
    rebuilt.load_state_dict(fitted.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(video), fitted.eval()(video))


def test_pretrained_folder_that_is_not_a_model_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load ViTMAE weights from"):
        build_backbone(BackboneConfig(name="mae", pretrained=str(tmp_path / "empty")), 4, 32)
