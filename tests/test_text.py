from pathlib import Path

import numpy as np
import pytest
from output import own

from cg_ray.data.prepared import PreparedDataset
from cg_ray.errors import UserError
from cg_ray.labels.text import encode_label_names, save_text_features
from cg_ray.taxonomy import LEVELS


def load_text_tables(path: str, taxonomy) -> dict:
    """The text tables as training reads them: from the prepared dataset at `path` (a bare
    folder is given the manifest and taxonomy that make it one)."""
    folder = Path(path)
    if not (folder / "manifest.parquet").exists():
        (folder / "manifest.parquet").write_bytes(b"")  # only its presence is asked here
        (folder / "taxonomy.json").write_text(taxonomy.to_json())
    return PreparedDataset(path).text_tables


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


def test_pretrained_weights_file_is_loaded_without_a_hub(small_taxonomy, tmp_path, capsys):
    """`cg-ray text --pretrained PATH`: the vectors are those of the saved model, not of a fresh
    random one."""
    import open_clip
    import torch

    from cg_ray.cli import main

    torch.manual_seed(123)
    model = open_clip.create_model("ViT-S-32-alt").eval()
    weights = tmp_path / "clip.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.parquet").write_bytes(b"")  # PreparedDataset wants a manifest
    (tmp_path / "data" / "taxonomy.json").write_text(small_taxonomy.to_json())
    assert (
        main(
            [
                "text",
                str(tmp_path / "data"),
                "--model",
                "ViT-S-32-alt",
                "--pretrained",
                str(weights),
                "--template",
                "a photo of {}",
            ]
        )
        == 0
    )
    tables = load_text_tables(str(tmp_path / "data"), small_taxonomy)
    tokenizer = open_clip.get_tokenizer("ViT-S-32-alt")
    with torch.no_grad():
        expected = model.encode_text(tokenizer([f"a photo of {n}" for n in small_taxonomy.labels["state"]]))
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(tables["state"], expected, atol=1e-5)
    fresh = encode_label_names(small_taxonomy, "ViT-S-32-alt", None, template="a photo of {}")
    assert not np.allclose(fresh["state"], tables["state"], atol=1e-3)
    # Weights of another architecture: one line naming the file.
    assert main(["text", str(tmp_path / "data"), "--model", "ViT-S-32", "--pretrained", str(weights)]) == 2
    err = own(capsys.readouterr().err)
    assert err.startswith("cg-ray text: error: cannot build open_clip 'ViT-S-32'") and str(weights) in err


def test_a_label_the_encoder_cannot_embed_is_named(tmp_path):
    from cg_ray.taxonomy import Taxonomy

    long_name = "_".join(["Llanfairpwllgwyngyll"] * 12)
    taxonomy = Taxonomy.from_rows(
        [
            {"city": long_name, "state": "Anglesey", "country": "Wales", "continent": "Europe"},
            {"city": "Cardiff", "state": "Glamorgan", "country": "Wales", "continent": "Europe"},
        ]
    )
    with pytest.raises(
        UserError, match=f"city label '{long_name}' needs .* tokens.*more than the text encoder's 77"
    ):
        encode_label_names(taxonomy, "ViT-S-32-alt", None)
    blank = Taxonomy.from_rows([{"city": "__", "state": "S", "country": "C", "continent": "E"}])
    with pytest.raises(UserError, match="city label '__' is empty"):
        encode_label_names(blank, "ViT-S-32-alt", None)


def test_tla_targets_are_the_stored_vectors_of_the_clip_labels(small_taxonomy, tmp_path):
    """city: the vector stored for the clip's city; all: the mean of the four vectors stored for
    its city, state, country and continent, looked up by name in text_features.parquet."""
    import pyarrow.parquet as pq
    import torch

    from cg_ray.model.losses import text_targets

    features = encode_label_names(small_taxonomy, "ViT-S-32-alt", None)
    save_text_features(str(tmp_path), features, small_taxonomy)
    stored = {
        (r["level"], r["label"]): np.asarray(r["vector"])
        for r in pq.read_table(tmp_path / "text_features.parquet").to_pylist()
    }
    tables = {k: torch.from_numpy(v) for k, v in load_text_tables(str(tmp_path), small_taxonomy).items()}
    clips = [("Versailles", "IDF", "France", "Europe"), ("Austin", "Texas", "USA", "America")]
    labels = {
        level: torch.tensor([small_taxonomy.index(level)[c[i]] for c in clips])
        for i, level in enumerate(LEVELS)
    }
    city = text_targets(tables, labels, "city").numpy()
    every = text_targets(tables, labels, "all").numpy()
    for row, clip in enumerate(clips):
        np.testing.assert_allclose(city[row], stored[("city", clip[0])], rtol=1e-6)
        by_hand = sum(stored[(level, name)] for level, name in zip(LEVELS, clip)) / 4
        np.testing.assert_allclose(every[row], by_hand, rtol=1e-5, atol=1e-7)
    assert not np.allclose(city, every)
