"""A prepared dataset is opened once: its filesystem is found from the path once, and every part
(manifest, splits, taxonomy, scene labels, text features, packs, the clip stream) is read through
it; each part is read when first asked. Locally and on a real S3 protocol server."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from cg_ray import storage
from cg_ray.data.prepared import PreparedDataset
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

PARTS = ("manifest.parquet", "taxonomy.json", "text_features.parquet")


def _count_filesystems(monkeypatch) -> list[str]:
    """The paths that are turned into a filesystem from now on."""
    opened: list[str] = []
    real = storage.filesystem

    def counting(path):
        opened.append(str(path))
        return real(path)

    monkeypatch.setattr(storage, "filesystem", counting)
    return opened


def _ask_everything(dataset: PreparedDataset) -> None:
    from cg_ray.data.shards import REPORT, packed_files
    from cg_ray.data.stream import clip_dataset

    assert set(dataset.splits) == {"train", "val"}
    assert dataset.taxonomy.labels["city"]
    assert dataset.has_scene_labels("train")
    assert set(dataset.text_tables) == set(LEVELS)
    assert dataset.manifest("val", ["clip_id", "city"]).num_rows == dataset.splits["val"]
    assert dataset.complete_packs(32, REPORT) == []
    assert packed_files(dataset, "train", 8, 32) is None
    clip_dataset(dataset, "val", dataset.taxonomy, 4, 32)  # built, not run


def test_every_part_is_read_through_the_one_filesystem(tiny_dataset, monkeypatch):
    dataset = PreparedDataset(tiny_dataset)
    opened = _count_filesystems(monkeypatch)
    _ask_everything(dataset)
    assert opened == []


def test_the_same_on_an_s3_store(tiny_dataset, s3, monkeypatch):
    import pyarrow.fs as pafs

    bucket = s3()
    fs, root = storage.filesystem(f"{bucket}/data")
    for name in PARTS:
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(Path(tiny_dataset, name).read_bytes())
    dataset = PreparedDataset(f"{bucket}/data/")
    assert isinstance(dataset.fs, pafs.PyFileSystem)  # the retrying handler: the storage policy
    opened = _count_filesystems(monkeypatch)
    _ask_everything(dataset)
    assert opened == []
    assert dataset.taxonomy.to_dict() == PreparedDataset(tiny_dataset).taxonomy.to_dict()


def test_parts_are_read_when_first_asked_and_kept(tiny_dataset, tmp_path):
    copy = tmp_path / "data"
    copy.mkdir()
    for name in PARTS:
        shutil.copy(Path(tiny_dataset, name), copy / name)
    dataset = PreparedDataset(str(copy))
    (copy / "text_features.parquet").unlink()  # not read yet: asking for it now fails
    with pytest.raises(UserError, match=f"cg-ray text {copy}"):
        dataset.text_tables  # noqa: B018
    labels = dataset.taxonomy
    splits = dataset.splits
    (copy / "taxonomy.json").unlink()  # read already: kept
    assert dataset.taxonomy is labels and dataset.splits is splits
    with pytest.raises(UserError, match="no taxonomy.json"):
        PreparedDataset(str(copy)).taxonomy  # noqa: B018


def test_a_folder_that_was_never_prepared_names_the_command(tmp_path):
    with pytest.raises(UserError, match=rf"'{tmp_path}' is not a prepared dataset.*cg-ray prepare SOURCE"):
        PreparedDataset(str(tmp_path))


def test_text_features_missing_a_label_name_it(tiny_dataset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "data"
    copy.mkdir()
    for name in PARTS[:2]:
        shutil.copy(Path(tiny_dataset, name), copy / name)
    table = pq.read_table(Path(tiny_dataset, "text_features.parquet"))
    keep = np.asarray(table["level"].to_pylist()) != "continent"
    pq.write_table(table.filter(pa.array(keep)), copy / "text_features.parquet")
    with pytest.raises(UserError, match="has no vector for continent .*run `cg-ray text"):
        PreparedDataset(str(copy)).text_tables  # noqa: B018
