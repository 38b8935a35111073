"""How a run's datasets are split among its workers.

Kept apart from the worker loop: Ray Train's dataset manager actor unpickles this config, and
importing it must not import torch (half a GB and a second of CPU in that actor, every run)."""

from __future__ import annotations

from ray.train import DataConfig


class ValSplitDataConfig(DataConfig):
    """The training split in equal shards (every worker takes the same number of DDP steps),
    the val split in unequal shards so that every clip is evaluated exactly once."""

    def _resolve_execution_options(self, dataset_name: str):
        options = super()._resolve_execution_options(dataset_name)
        # Blocks in a fixed order: with the seeded shuffle, a run is reproducible and a resumed
        # epoch sees the same clips in the same order.
        options.preserve_order = True
        return options

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        # Ray Train V2 calls this once per dataset.
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            if name == "train":
                part = super().configure({name: ds}, world_size, worker_handles, worker_node_ids, **kwargs)
                for i in range(world_size):
                    output[i][name] = part[i][name]
                continue
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[i][name] = split
        return output
