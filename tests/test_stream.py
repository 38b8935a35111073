"""The stream of a split as Ray Data gets it (cg_ray.data.stream, cg_ray.data.order): which Ray
tasks it costs, read from Ray's state API (a task's events reach it within about a second)."""

import collections
import time

import pytest

from cg_ray.data.prepared import PreparedDataset
from cg_ray.data.stream import clip_dataset

pytestmark = pytest.mark.slow  # a local Ray, and seconds of waiting for its task events


def tasks_since(since_ms: float) -> collections.Counter:
    """The Ray tasks (not actor tasks) created since `since_ms`, by name."""
    import ray
    from ray.util.state import list_tasks

    tasks = list_tasks(
        address=ray.get_runtime_context().gcs_address,
        filters=[("type", "=", "NORMAL_TASK")],
        limit=10_000,
        raise_on_missing_output=False,
        detail=True,  # with creation times
    )
    return collections.Counter(t.name for t in tasks if (t.creation_time_ms or 0) >= since_ms)


def test_a_split_becomes_a_dataset_without_a_ray_task(ray_session, tiny_dataset):
    """The manifest's rows go to Ray Data as in-memory blocks whose metadata is read in the
    driver: no Ray task per block, as `ray.data.from_arrow` starts (thousands at
    CityGuessr68k's scale; benchmarks/manifest_scale.py). This looks for 5 s."""
    dataset = PreparedDataset.open(tiny_dataset)
    since_ms = time.time() * 1000
    ds = clip_dataset(dataset, "train", dataset.taxonomy, 4, 32, shuffle_seed=0, decode_batch_size=8)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert tasks_since(since_ms) == {}
        time.sleep(0.5)
    assert ds.count() == dataset.splits["train"]  # the rows are all there


def test_an_epoch_shuffles_its_rows_in_one_task_and_decodes_a_block_per_task(ray_session, tiny_dataset):
    """48 training rows in blocks of 16 (decode batches of 1): the epoch's new order comes from
    one shuffle task over all rows, not one per block (Ray Data's random shuffle of n blocks
    exchanges n x n pieces), and decoding still runs a task per block; every clip once."""
    dataset = PreparedDataset.open(tiny_dataset)
    clips = dataset.splits["train"]
    ds = clip_dataset(
        dataset, "train", dataset.taxonomy, 4, 32, shuffle_seed=0, keep_ids=True, decode_batch_size=1
    )
    since_ms = time.time() * 1000
    ids = [i for batch in ds.iter_batches(batch_size=None) for i in batch["clip_id"]]
    assert len(ids) == len(set(ids)) == clips == 48
    blocks = clips // 16
    deadline = time.monotonic() + 10
    while (names := tasks_since(since_ms))["MapBatches(decode_batch)"] < blocks:
        assert time.monotonic() < deadline, names
        time.sleep(0.5)
    time.sleep(2)  # any later event of the epoch
    names = tasks_since(since_ms)
    assert names["map"] == 1, names  # the shuffle's map stage: one task, whatever the blocks
    assert names["MapBatches(decode_batch)"] == blocks, names
