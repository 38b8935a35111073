import pytest
import torch

from cg_ray.evaluation import Accuracy, hierarchical_product, rank
from cg_ray.taxonomy import LEVELS, Taxonomy

# cities: A, B under state S1; C under S2. S1 -> country K1, S2 -> K2. K1 -> X, K2 -> Y.
TAX = Taxonomy(
    labels={"city": ["A", "B", "C"], "state": ["S1", "S2"], "country": ["K1", "K2"], "continent": ["X", "Y"]},
    parents={"city": [0, 0, 1], "state": [0, 1], "country": [0, 1]},
)


def probs(city, state, country, continent):
    return {lvl: torch.tensor([v]) for lvl, v in zip(LEVELS, (city, state, country, continent))}


def test_product_by_hand():
    p = probs([0.2, 0.3, 0.5], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1])
    prod = hierarchical_product(p, TAX)
    torch.testing.assert_close(prod["continent"], torch.tensor([[0.9, 0.1]]))
    torch.testing.assert_close(prod["country"], torch.tensor([[0.63, 0.03]]))
    torch.testing.assert_close(prod["state"], torch.tensor([[0.6 * 0.63, 0.4 * 0.03]]))
    torch.testing.assert_close(prod["city"], torch.tensor([[0.2 * 0.378, 0.3 * 0.378, 0.5 * 0.012]]))


def test_the_product_changes_the_city():
    p = probs([0.2, 0.3, 0.5], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1])
    assert rank(p, TAX, "flat", k=1)["city"].item() == 2  # C on its own
    assert rank(p, TAX, "independent", k=1)["city"].item() == 1  # B after the product
    assert rank(p, TAX, "codependent", k=1)["city"].item() == 1


def test_independent_and_codependent_differ():
    # City product favours C (under S2), but the state product favours S1.
    p = probs([0.05, 0.05, 0.9], [0.55, 0.45], [0.5, 0.5], [0.5, 0.5])
    prod = hierarchical_product(p, TAX)
    assert prod["city"].argmax().item() == 2 and prod["state"].argmax().item() == 0
    ind = rank(p, TAX, "independent", k=2)
    cod = rank(p, TAX, "codependent", k=2)
    assert ind["state"][0].tolist() == [0, 1]
    assert cod["state"][0].tolist() == [1, 0]  # read off the taxonomy above city C
    assert cod["country"][0, 0].item() == 1 and cod["continent"][0, 0].item() == 1


def test_accuracy_top1_top5_in_percent():
    big = Taxonomy(
        labels={"city": [f"c{i}" for i in range(7)], "state": ["s"], "country": ["k"], "continent": ["x"]},
        parents={"city": [0] * 7, "state": [0], "country": [0]},
    )
    city = torch.tensor([[0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05]] * 4)
    p = {"city": city, "state": torch.ones(4, 1), "country": torch.ones(4, 1), "continent": torch.ones(4, 1)}
    labels = {
        "city": torch.tensor([0, 4, 5, 6]),
        "state": torch.zeros(4, dtype=torch.long),
        "country": torch.zeros(4, dtype=torch.long),
        "continent": torch.zeros(4, dtype=torch.long),
    }
    for mode in ("flat", "independent", "codependent"):
        acc = Accuracy(big, mode)
        acc.update(p, labels)
        m = acc.metrics()
        assert m["city_top1"] == 25.0 and m["city_top5"] == 50.0
        assert m["continent_top1"] == 100.0 and m["continent_top5"] == 100.0
        assert set(m) == {f"{lvl}_top{k}" for lvl in LEVELS for k in (1, 5)}


def test_state_merge_sums_counts():
    a, b = Accuracy(TAX, "flat"), Accuracy(TAX, "flat")
    p = probs([0.2, 0.3, 0.5], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1])
    a.update(p, {lvl: torch.tensor([0]) for lvl in LEVELS})
    b.update(p, {lvl: torch.tensor([2, 1, 1, 1][i : i + 1]) for i, lvl in enumerate(LEVELS)})
    merged = Accuracy(TAX, "flat")
    merged.load_state(a.state() + b.state())
    assert merged.total == 2
    assert merged.metrics()["city_top1"] == 50.0


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        rank(probs([1, 0, 0], [1, 0], [1, 0], [1, 0]), TAX, "best")
