import math

import torch

from cg_ray.config import LossConfig
from cg_ray.model.losses import compute_losses, soft_cross_entropy, text_targets, tla_loss
from cg_ray.model.net import GeoOutput


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    target = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert abs(float(soft_cross_entropy(logits, target)) - expected) < 1e-6


def test_tla_is_negative_cosine_averaged_over_the_batch():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    expected = -(1.0 + 1 / math.sqrt(2)) / 2
    assert abs(float(tla_loss(pred, target)) - expected) < 1e-6


def test_text_targets_city_and_all():
    tables = {
        "city": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "state": torch.tensor([[3.0, 3.0]]),
        "country": torch.tensor([[0.0, 4.0]]),
        "continent": torch.tensor([[4.0, 0.0]]),
    }
    labels = {
        "city": torch.tensor([1]),
        "state": torch.tensor([0]),
        "country": torch.tensor([0]),
        "continent": torch.tensor([0]),
    }
    torch.testing.assert_close(text_targets(tables, labels, "city"), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(text_targets(tables, labels, "all"), torch.tensor([[7 / 4, 8 / 4]]))


def test_total_is_the_weighted_sum_by_hand():
    logits = {
        "city": torch.tensor([[2.0, 0.0]]),
        "state": torch.tensor([[0.0, 0.0]]),
        "country": torch.tensor([[0.0, 1.0]]),
        "continent": torch.tensor([[5.0]]),
    }
    labels = {
        "city": torch.tensor([0]),
        "state": torch.tensor([1]),
        "country": torch.tensor([1]),
        "continent": torch.tensor([0]),
    }
    out = GeoOutput(
        logits, scene_logits=torch.tensor([[0.0, 0.0]]), text_embedding=torch.tensor([[1.0, 0.0]])
    )
    weights = LossConfig(city=2.0, scene=0.5, tla=3.0)
    terms = compute_losses(
        out, labels, weights, scenes=torch.tensor([[1.0, 0.0]]), text_target=torch.tensor([[0.0, 1.0]])
    )
    ce_city = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce_state = math.log(2)
    ce_country = -math.log(math.e / (1 + math.e))
    expected = 2 * ce_city + ce_state + ce_country + 0 + 0.5 * math.log(2) + 3 * 0.0
    assert abs(float(terms["city"]) - 2 * ce_city) < 1e-6
    assert abs(float(terms["loss"]) - expected) < 1e-5
    assert set(terms) == {"city", "state", "country", "continent", "scene", "tla", "loss"}
