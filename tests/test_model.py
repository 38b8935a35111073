import math

import pytest
import torch

from cg_ray.config import config_from_dict
from cg_ray.model.net import build_model
from cg_ray.model.sca import SelfCrossAttention, mlp

TINY = [
    "data.num_frames=4",
    "data.image_size=32",
    "model.backbone.hidden_size=32",
    "model.backbone.num_layers=1",
    "model.backbone.num_heads=2",
    "model.backbone.intermediate_size=64",
    "model.backbone.patch_size=8",
]
SIZES = [5, 4, 3, 2]


def tiny_model(*extra, text_dim=16):
    torch.manual_seed(0)
    return build_model(config_from_dict({}, TINY + list(extra)), SIZES, text_dim)


def clips(batch=3):
    return torch.randint(0, 256, (batch, 4, 32, 32, 3), dtype=torch.uint8)


def test_sca_shapes_and_it_attends_across_tokens():
    sca = SelfCrossAttention(embed_dim=6, heads=2)
    pv = torch.randn(2, 14)
    out = sca(pv)
    assert out.shape == (2, 14)
    # Changing one token (a continent logit) changes the output at every other token.
    changed = pv.clone()
    changed[:, -1] += 5.0
    delta = (sca(changed) - out).abs()
    assert (delta[:, :-1] > 0).all()


def test_sca_matches_a_hand_written_attention():
    torch.manual_seed(1)
    sca = SelfCrossAttention(embed_dim=4, heads=2)
    pv = torch.randn(1, 5)
    x = pv[0][:, None]
    q, k, v = sca.q(x), sca.k(x), sca.v(x)  # (5, 4)
    heads = []
    for h in range(2):
        qs, ks, vs = (t[:, 2 * h : 2 * h + 2] for t in (q, k, v))
        w = torch.softmax(qs @ ks.T / math.sqrt(2), dim=-1)
        heads.append(w @ vs)
    expected = sca.out(torch.cat(heads, dim=-1)).squeeze(-1)
    torch.testing.assert_close(sca(pv)[0], expected)


def test_mlp_widths():
    net = mlp([420, 256, 128, 64, 32, 16, 16])
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (420, 256),
        (256, 128),
        (128, 64),
        (64, 32),
        (32, 16),
        (16, 16),
    ]
    assert not isinstance(net[-1], torch.nn.ReLU)


def test_full_model_outputs_and_gradients_reach_every_parameter():
    model = tiny_model()
    out = model(clips())
    assert [out.logits[lvl].shape for lvl in ("city", "state", "country", "continent")] == [
        (3, 5),
        (3, 4),
        (3, 3),
        (3, 2),
    ]
    assert out.scene_logits.shape == (3, 16) and out.text_embedding.shape == (3, 16)
    loss = (
        sum(v.sum() for v in out.logits.values())
        + out.scene_logits.pow(2).sum()
        + out.text_embedding.pow(2).sum()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_switches_give_the_videomae_baseline():
    model = tiny_model("model.sca.enabled=false", "model.tla.enabled=false")
    out = model(clips())
    assert model.sca is None and out.scene_logits is None and out.text_embedding is None
    only_tla = tiny_model("model.sca.enabled=false")
    out = only_tla(clips())
    assert out.scene_logits is None and out.text_embedding.shape == (3, 16)


def test_normalization_happens_inside_the_model():
    model = tiny_model()
    video = torch.full((1, 4, 2, 2, 3), 255, dtype=torch.uint8)
    x = model.normalize(video)
    assert x.shape == (1, 4, 3, 2, 2)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, 0, :, 0, 0], expected)


def test_videomae_saved_locally_loads_through_the_pretrained_path(tmp_path):
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(3)
    reference = VideoMAEModel(config)
    reference.save_pretrained(tmp_path / "videomae")
    model = tiny_model(f"model.backbone.pretrained={tmp_path / 'videomae'}")
    loaded = model.backbone.encoder
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    from cg_ray.errors import UserError

    with pytest.raises(UserError, match="expects 4 frames at 32px"):
        build_model(
            config_from_dict(
                {}, TINY + ["data.num_frames=8", f"model.backbone.pretrained={tmp_path / 'videomae'}"]
            ),
            SIZES,
        )
    with pytest.raises(UserError, match="cannot load VideoMAE weights"):
        tiny_model(f"model.backbone.pretrained={tmp_path / 'missing'}")
