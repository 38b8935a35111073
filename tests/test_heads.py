"""The heads registry: linear heads, the GATv2 graph head over the label tree, and the
parent-child consistency loss."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cg_ray.config import config_from_dict
from cg_ray.errors import UserError
from cg_ray.model.heads import GATv2Layer, GraphHead, build_head, tree_edges
from cg_ray.model.losses import compute_losses, consistency_loss
from cg_ray.model.net import build_model
from cg_ray.taxonomy import LEVELS

MAPPINGS = Path("/work/shared/data/official_hierarchy_mappings.json")
TINY = [
    "data.num_frames=4",
    "data.image_size=32",
    "model.backbone.hidden_size=32",
    "model.backbone.num_layers=1",
    "model.backbone.num_heads=2",
    "model.backbone.intermediate_size=64",
    "model.backbone.patch_size=8",
]
SMALL_PARENTS = {"city": [0, 0, 1, 2, 3], "state": [0, 1, 2, 2], "country": [0, 0, 1]}
SMALL_SIZES = [5, 4, 3, 2]


def cityguessr_tree():
    """The CityGuessr68k tree (166/157/91/6) from the authors' published id maps; a copy of
    its shape when the shared file is absent."""
    if MAPPINGS.exists():
        maps = json.loads(MAPPINGS.read_text())
        parents = {level: [m[str(i)] for i in range(len(m))] for level, m in zip(LEVELS, maps)}
    else:  # same sizes, a deterministic tree
        parents = {
            "city": [i * 157 // 166 for i in range(166)],
            "state": [i * 91 // 157 for i in range(157)],
            "country": [i * 6 // 91 for i in range(91)],
        }
    sizes = [
        len(parents["city"]),
        len(parents["state"]),
        len(parents["country"]),
        max(parents["country"]) + 1,
    ]
    return sizes, parents


def test_tree_edges_link_both_ways_and_loop_every_node():
    edges = tree_edges([3, 2, 1, 1], {"city": [0, 0, 1], "state": [0, 0], "country": [0]})
    pairs = set(map(tuple, edges.T.tolist()))
    # nodes: cities 0-2, states 3-4, country 5, continent 6
    assert {(0, 3), (3, 0), (2, 4), (4, 2), (3, 5), (5, 3), (4, 5), (5, 6), (6, 5)} <= pairs
    assert all((n, n) in pairs for n in range(7))
    assert edges.shape[1] == 2 * (3 + 2 + 1) + 7


def test_gatv2_layer_matches_a_per_node_loop():
    torch.manual_seed(0)
    layer = GATv2Layer(8, 2)
    edges = tree_edges([3, 2, 1, 1], {"city": [0, 0, 1], "state": [0, 0], "country": [0]})
    h = torch.randn(2, 7, 8)
    xs, xd = layer.src(h).view(2, 7, 2, 4), layer.dst(h).view(2, 7, 2, 4)
    agg = torch.zeros(2, 7, 2, 4)
    for i in range(7):
        js = edges[0][edges[1] == i]
        score = (F.leaky_relu(xd[:, i : i + 1] + xs[:, js], 0.2) * layer.att).sum(-1)
        agg[:, i] = (score.softmax(dim=1).unsqueeze(-1) * xs[:, js]).sum(1)
    expected = layer.norm(h + F.elu(layer.out(agg.reshape(2, 7, 8))))
    torch.testing.assert_close(layer(h, edges), expected)


def test_graph_head_forward_backward_on_cityguessr68k_sizes():
    sizes, parents = cityguessr_tree()
    assert sizes == [166, 157, 91, 6]
    torch.manual_seed(0)
    cfg = config_from_dict({}, TINY + ["model.head=graph"])
    model = build_model(cfg, sizes, text_dim=8, parents=parents)
    assert isinstance(model.heads, GraphHead)
    out = model(torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8))
    assert [out.logits[level].shape for level in LEVELS] == [(2, n) for n in sizes]
    labels = {level: torch.tensor([0, n - 1]) for level, n in zip(LEVELS, sizes)}
    scenes = torch.full((2, 16), 1 / 16)
    losses = compute_losses(
        out,
        labels,
        cfg.loss,
        scenes,
        torch.randn(2, 8),
        parents={k: torch.tensor(v) for k, v in parents.items()},
    )
    losses["loss"].backward()
    for name, p in model.heads.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_clip_feature_conditions_the_graph_and_each_level_reads_its_own_nodes():
    torch.manual_seed(0)
    head = build_head("graph", 16, SMALL_SIZES, parents=SMALL_PARENTS, dim=8, heads=2)
    a, b = torch.randn(1, 16), torch.randn(1, 16)
    assert not torch.allclose(head(a)["city"], head(b)["city"])
    # Raising one city's bias moves only that city's logit.
    before = head(a)
    with torch.no_grad():
        head.bias[1] += 3.0
    after = head(a)
    delta = after["city"] - before["city"]
    assert torch.allclose(delta, torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0]]))
    assert all(torch.equal(after[level], before[level]) for level in LEVELS[1:])


def test_graph_head_starts_from_text_features_when_given():
    text = {level: torch.randn(n, 12) for level, n in zip(LEVELS, SMALL_SIZES)}
    a = GraphHead(16, SMALL_SIZES, SMALL_PARENTS, dim=8, heads=2, text=text)
    b = GraphHead(16, SMALL_SIZES, SMALL_PARENTS, dim=8, heads=2, text=text)
    torch.testing.assert_close(a.node, b.node)  # a fixed projection of the same features
    # Labels with the same text start at the same point.
    same = dict(text, city=torch.cat([text["city"][:1], text["city"][:1], text["city"][2:]]))
    c = GraphHead(16, SMALL_SIZES, SMALL_PARENTS, dim=8, heads=2, text=same)
    torch.testing.assert_close(c.node[0], c.node[1])
    with pytest.raises(UserError, match="cg-ray text"):
        GraphHead(16, SMALL_SIZES, SMALL_PARENTS, dim=8, heads=2, text=dict(text, city=torch.randn(4, 12)))


def test_graph_head_needs_the_tree_and_an_unknown_head_is_named():
    with pytest.raises(UserError, match="parent links"):
        build_head("graph", 16, SMALL_SIZES)
    with pytest.raises(UserError, match="unknown model.head 'mlp'"):
        build_head("mlp", 16, SMALL_SIZES)


def test_linear_head_keeps_the_checkpoint_names_of_the_paper_heads():
    model = build_model(config_from_dict({}, TINY), SMALL_SIZES, text_dim=8)
    names = {n for n in model.state_dict() if n.startswith("heads.")}
    assert names == {f"heads.{level}.{w}" for level in LEVELS for w in ("weight", "bias")}


def _consistent_logits(city_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits whose softmax at every level is the sum of its children's city probabilities."""
    probs = {"city": city_probs}
    for child, parent in zip(LEVELS[:-1], LEVELS[1:]):
        n = max(SMALL_PARENTS[child]) + 1
        index = torch.tensor(SMALL_PARENTS[child]).expand_as(probs[child])
        probs[parent] = torch.zeros(probs[child].shape[0], n).scatter_add(1, index, probs[child])
    return {level: p.log() for level, p in probs.items()}


def test_consistency_loss_is_zero_on_a_consistent_distribution_and_positive_otherwise():
    parents = {k: torch.tensor(v) for k, v in SMALL_PARENTS.items()}
    city = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15], [0.5, 0.1, 0.1, 0.2, 0.1]])
    logits = _consistent_logits(city)
    assert float(consistency_loss(logits, parents)) == pytest.approx(0.0, abs=1e-12)
    # Move mass between the two states of country 2: the city -> state term is no longer 0,
    # the state -> country term stays 0.
    logits["state"] = torch.tensor([[0.3, 0.3, 0.35, 0.05], [0.6, 0.1, 0.1, 0.2]]).log()
    broken = consistency_loss(logits, parents)
    # By hand: states from the cities (0.3, 0.3, 0.25, 0.15) and (0.6, 0.1, 0.2, 0.1) differ
    # from these by 0.1 at states 2 and 3: 2 * 0.01 per clip; the countries still match.
    # Sum over parents, mean over the batch: 0.02.
    assert float(broken) == pytest.approx(0.02, abs=1e-6)


def test_consistency_term_enters_the_loss_with_its_weight():
    cfg = config_from_dict(
        {}, TINY + ["model.sca.enabled=false", "model.tla.enabled=false", "loss.consistency=2.0"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, SMALL_SIZES, text_dim=8)
    out = model(torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8))
    labels = {level: torch.zeros(3, dtype=torch.long) for level in LEVELS}
    parents = {k: torch.tensor(v) for k, v in SMALL_PARENTS.items()}
    losses = compute_losses(out, labels, cfg.loss, parents=parents)
    torch.testing.assert_close(losses["consistency"], 2.0 * consistency_loss(out.logits, parents))
    with pytest.raises(ValueError, match="parent"):
        compute_losses(out, labels, cfg.loss)


def test_label_smoothing_changes_the_cross_entropy_as_torch_defines_it():
    cfg = config_from_dict(
        {}, TINY + ["model.sca.enabled=false", "model.tla.enabled=false", "loss.label_smoothing=0.1"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, SMALL_SIZES, text_dim=8)
    out = model(torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8))
    labels = {level: torch.zeros(3, dtype=torch.long) for level in LEVELS}
    losses = compute_losses(out, labels, cfg.loss)
    expected = F.cross_entropy(out.logits["city"], labels["city"], label_smoothing=0.1)
    torch.testing.assert_close(losses["city"], expected)
    assert not torch.allclose(losses["city"], F.cross_entropy(out.logits["city"], labels["city"]))
