"""Switches that reproduce the authors' code: the `official` evaluation mode, TLA summed over the
batch, label ids kept from the official files; and multi-view averaging (`eval.views`)."""

import json

import pytest
import torch
from PIL import Image

from cg_ray.config import LossConfig
from cg_ray.data.layouts import prepare
from cg_ray.data.prepared import PreparedDataset
from cg_ray.evaluation import Accuracy, average_views, rank, top1
from cg_ray.model.losses import compute_losses, tla_loss
from cg_ray.model.net import GeoOutput
from cg_ray.taxonomy import LEVELS, Taxonomy

# Three cities: city 0 in state 0, cities 1 and 2 in state 1; one country, one continent.
TAXONOMY = Taxonomy(
    labels={"city": ["A", "B", "C"], "state": ["S0", "S1"], "country": ["X"], "continent": ["K"]},
    parents={"city": [0, 1, 1], "state": [0, 0], "country": [0]},
)


def probs(city, state):
    return {
        "city": torch.tensor([city]),
        "state": torch.tensor([state]),
        "country": torch.tensor([[1.0]]),
        "continent": torch.tensor([[1.0]]),
    }


def test_official_mode_takes_the_plain_city_argmax_where_codependent_takes_the_product():
    # City A leads its own softmax, but its state is unlikely: the Eq. 5 product picks B.
    p = probs([0.45, 0.35, 0.20], [0.1, 0.9])
    assert top1(p, TAXONOMY, "codependent")["city"].tolist() == [1]
    official = top1(p, TAXONOMY, "official")
    assert official["city"].tolist() == [0] and official["state"].tolist() == [0]  # mapped up
    # Top-k lists are each level's own softmax (state S1 first although the pick is S0).
    assert rank(p, TAXONOMY, "official", k=2)["state"].tolist() == [[1, 0]]
    labels = {
        "city": torch.tensor([0]),
        "state": torch.tensor([1]),
        "country": torch.tensor([0]),
        "continent": torch.tensor([0]),
    }
    metrics = {}
    for mode in ("official", "codependent"):
        accuracy = Accuracy(TAXONOMY, mode)
        accuracy.update(p, labels)
        metrics[mode] = accuracy.metrics()
    assert metrics["official"]["city_top1"] == 100.0 and metrics["codependent"]["city_top1"] == 0.0
    # official: state top-1 is the mapped pick (S0, wrong), state top-5 its own list (has S1).
    assert metrics["official"]["state_top1"] == 0.0 and metrics["official"]["state_top5"] == 100.0
    assert metrics["codependent"]["state_top1"] == 100.0


def test_views_are_averaged_before_the_hierarchical_product():
    # Two views of one clip: each alone picks a different city; their mean picks C.
    views = {
        "city": torch.tensor([[[0.6, 0.0, 0.4], [0.0, 0.6, 0.4]]]),
        "state": torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]),
        "country": torch.ones(1, 2, 1),
        "continent": torch.ones(1, 2, 1),
    }
    mean = average_views(views)
    assert torch.allclose(mean["city"], torch.tensor([[0.3, 0.3, 0.4]]))
    assert mean["state"].shape == (1, 2)
    assert top1(mean, TAXONOMY, "codependent")["city"].tolist() == [2]
    # One view: nothing changes.
    single = {level: v[:, :1] for level, v in views.items()}
    assert top1(average_views(single), TAXONOMY, "flat")["city"].tolist() == [0]


def test_tla_reduction_sum_is_the_batch_size_times_the_mean():
    emb, target = torch.randn(12, 8), torch.randn(12, 8)
    mean, total = tla_loss(emb, target), tla_loss(emb, target, reduction="sum")
    assert torch.allclose(total, 12 * mean)
    out = GeoOutput({level: torch.randn(12, 3) for level in LEVELS}, text_embedding=emb)
    labels = {level: torch.zeros(12, dtype=torch.long) for level in LEVELS}
    summed = compute_losses(out, labels, LossConfig(tla_reduction="sum"), text_target=target)
    assert torch.allclose(summed["tla"], total)
    assert torch.allclose(compute_losses(out, labels, LossConfig(), text_target=target)["tla"], mean)


def _official_files(root, cities=12, names=False):
    """Label files of the authors' code for `cities` cities (ids 0..n-1, two per state), one
    3-frame clip each, ids > 9 so that string order and numeric order differ."""
    maps = {
        "city_to_state": {str(c): c // 2 for c in range(cities)},
        "state_to_country": {str(s): s // 3 for s in range((cities + 1) // 2)},
        "country_to_continent": {str(n): 0 for n in range(cities)},
    }
    (root / "hierarchy.json").write_text(json.dumps(maps))
    lines = {"train": [], "val": []}
    for c in range(cities):
        for split in ("train", "val"):
            clip = root / split / f"city{c}" / f"v{c}_{split}"
            clip.mkdir(parents=True)
            for n in range(1, 4):
                Image.new("RGB", (8, 8), (c * 10, 0, 0)).save(clip / f"{n}.png")
            lines[split].append(f"{split}/city{c}/v{c}_{split},{c},{c // 2},{c // 6},0")
    for split, rows in lines.items():
        (root / f"{split}_labels.txt").write_text("\n".join(rows) + "\n")
    if names:
        # Named in an order that is not alphabetical: row i names city id i.
        rows = ["City,State,Country,Continent"]
        rows += [f"Z{cities - c:02d},St{c // 2},Co{c // 6},Earth" for c in range(cities)]
        (root / "labels_list.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("names", [False, True])
def test_official_import_keeps_the_authors_ids_as_class_indices(tmp_path, names):
    source = tmp_path / "src"
    source.mkdir()
    _official_files(source, names=names)
    prepare("cityguessr", str(source), str(tmp_path / "out"))
    taxonomy = PreparedDataset(str(tmp_path / "out")).taxonomy
    if names:
        assert taxonomy.labels["city"] == [f"Z{12 - c:02d}" for c in range(12)]
    else:
        assert taxonomy.labels["city"] == [f"city_{c}" for c in range(12)]  # not city_10 < city_2
        assert taxonomy.labels["state"] == [f"state_{s}" for s in range(6)]
        assert taxonomy.index("city")["city_10"] == 10
    assert taxonomy.parents["city"] == [c // 2 for c in range(12)]
    assert taxonomy.parents["state"] == [s // 3 for s in range(6)]


def tiny_model(extra=()):
    from cg_ray.config import config_from_dict
    from cg_ray.model.net import build_model

    torch.manual_seed(0)
    cfg = config_from_dict(
        {},
        [
            "data.num_frames=4",
            "data.image_size=32",
            "model.tla.enabled=false",
            "model.backbone.num_layers=1",
            "model.backbone.hidden_size=32",
            "model.backbone.num_heads=2",
            "model.backbone.intermediate_size=32",
            *extra,
        ],
    )
    return cfg, build_model(cfg, TAXONOMY.sizes).eval()


def test_bidirectional_views_are_fused_by_the_mean_of_their_backbone_features():
    _, model = tiny_model()
    video = torch.randint(0, 256, (3, 2, 4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        fused = model.clip_feature(video)
        each = [model.clip_feature(video[:, v]) for v in range(2)]
        assert torch.allclose(fused, (each[0] + each[1]) / 2, atol=1e-5)
        assert model(video).logits["city"].shape == (3, 3)


def test_view_probs_average_the_softmax_of_each_view():
    from cg_ray.evaluation import view_probs

    _, model = tiny_model()
    video = torch.randint(0, 256, (2, 3, 4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        mean = view_probs(model, video, views=3)
        each = [torch.softmax(model(video[:, k]).logits["city"], -1) for k in range(3)]
    assert torch.allclose(mean["city"], sum(each) / 3, atol=1e-6)


def test_predictor_takes_the_checkpoints_sampling_and_views(tmp_path):
    import numpy as np

    from cg_ray.data.decode import decode_clip
    from cg_ray.predict.predictor import Predictor, open_checkpoint, predict_inputs
    from cg_ray.train.checkpoint import save_checkpoint

    cfg, model = tiny_model(["data.sampling=bidirectional", "eval.views=2", "eval.mode=official"])
    save_checkpoint(
        str(tmp_path / "ckpt"),
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        epoch=0,
        metrics={},
        config=cfg,
        taxonomy=TAXONOMY,
        text_dim=8,
    )
    loaded, _ = open_checkpoint(str(tmp_path / "ckpt"))
    predictor = Predictor(loaded, "official", top_k=2)
    assert predictor.sampling.leading == (2, 2)  # two views, each a forward + reversed pair
    clip = tmp_path / "clip"
    clip.mkdir()
    for n in range(1, 21):
        Image.new("RGB", (32, 32), (12 * n, 255 - 12 * n, 0)).save(clip / f"{n}.png")
    (outcome,) = predict_inputs(predictor, [str(clip)])
    video = decode_clip(str(clip), 4, 32, sampling=predictor.sampling)
    assert video.shape == (2, 2, 4, 32, 32, 3)
    probs = predictor.probs(video[None])
    city = int(probs["city"][0].argmax())
    assert outcome.prediction["city"] == TAXONOMY.labels["city"][city]
    assert outcome.prediction["state"] == TAXONOMY.labels["state"][TAXONOMY.parents["city"][city]]
    assert np.isclose(
        outcome.prediction["top_k"]["city"][0]["prob"], float(probs["city"][0].max()), atol=1e-5
    )
    assert Predictor(loaded, "official", views=1).sampling.leading == (2,)
