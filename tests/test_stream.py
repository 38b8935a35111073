"""The stream of a split as Ray Data gets it (cg_ray.data.stream)."""

import time

import pytest

from cg_ray.data.prepared import PreparedDataset
from cg_ray.data.stream import clip_dataset


@pytest.mark.slow  # a local Ray, and 5 s of looking
def test_a_split_becomes_a_dataset_without_a_ray_task(ray_session, tiny_dataset):
    """The manifest's rows go to Ray Data as in-memory blocks whose metadata is read in the
    driver: no Ray task per block, as `ray.data.from_arrow` starts (thousands at
    CityGuessr68k's scale; benchmarks/manifest_scale.py). Ray reports a task's events within
    about a second; this looks for 5 s."""
    import ray
    from ray.util.state import list_tasks

    dataset = PreparedDataset.open(tiny_dataset)
    since_ms = time.time() * 1000
    ds = clip_dataset(dataset, "train", dataset.taxonomy, 4, 32, shuffle_seed=0, decode_batch_size=8)

    def started() -> list:
        tasks = list_tasks(
            address=ray.get_runtime_context().gcs_address,
            filters=[("type", "=", "NORMAL_TASK")],
            limit=10_000,
            raise_on_missing_output=False,
            detail=True,  # with creation times
        )
        return [t.name for t in tasks if (t.creation_time_ms or 0) >= since_ms]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert started() == []
        time.sleep(0.5)
    assert ds.count() == dataset.splits["train"]  # the rows are all there
