import numpy as np
import pytest

from cg_ray.errors import UserError
from cg_ray.labels.text import encode_label_names, load_text_tables, save_text_features
from cg_ray.taxonomy import LEVELS


def test_text_features_round_trip(small_taxonomy, tmp_path):
    features = encode_label_names(small_taxonomy, "ViT-B-32", None, seed=0)
    for level in LEVELS:
        assert features[level].shape == (len(small_taxonomy.labels[level]), 512)
        np.testing.assert_allclose(np.linalg.norm(features[level], axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(features["city"][0], features["city"][1])
    save_text_features(str(tmp_path), features, small_taxonomy)
    tables = load_text_tables(str(tmp_path), small_taxonomy)
    for level in LEVELS:
        np.testing.assert_allclose(tables[level], features[level], rtol=1e-6)
    again = encode_label_names(small_taxonomy, "ViT-B-32", None, seed=0)
    np.testing.assert_allclose(again["city"], features["city"], rtol=1e-5, atol=1e-6)


def test_missing_text_features_name_the_command(small_taxonomy, tmp_path):
    with pytest.raises(UserError, match="cg-ray text"):
        load_text_tables(str(tmp_path), small_taxonomy)


def test_template_needs_a_slot(small_taxonomy):
    with pytest.raises(UserError, match="template"):
        encode_label_names(small_taxonomy, "ViT-B-32", None, template="a street")
