"""What a new order every epoch costs: Ray Data's random shuffle of a split's blocks against
cg_ray's (one task shuffles all the rows, then they are split into the same blocks).

    .venv/bin/python benchmarks/epoch_order.py [--blocks 200] [--rows-per-block 128] [--epochs 2]

Rows like a manifest's (a path and a label), in blocks of --rows-per-block as training reads
them (16 decode batches of 8), shuffled with a per-epoch seed, then passed through an identity
map_batches in batches of 8 as the decoding stage would take them; each epoch's wall time. Both
orders hold every row once and change every epoch (checked). 425 blocks of 128 rows are
CityGuessr68k's training split at batch 8. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def epochs_of(ds, epochs: int) -> tuple[list[float], list[list[str]]]:
    times, orders = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        orders.append([p for batch in batches for p in batch["path"].to_pylist()])
        times.append(round(time.perf_counter() - start, 2))
    return times, orders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200, help="blocks of the split (default: 200)")
    parser.add_argument("--rows-per-block", type=int, default=128, help="rows per block (default: 128)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each (default: 2)")
    args = parser.parse_args()
    if args.blocks < 1 or args.rows_per_block < 1 or args.epochs < 2:
        parser.error("--blocks and --rows-per-block take 1 or more, --epochs 2 or more")

    import ray.data
    from result_line import print_result

    from cg_ray.data.order import reshuffled
    from cg_ray.ray_env import init_ray

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    step, rows = args.rows_per_block, args.blocks * args.rows_per_block
    table = pa.table(
        {"path": [f"clips/{i:07d}.mp4" for i in range(rows)], "city": [i % 300 for i in range(rows)]}
    )
    seed = ray.data.RandomSeedConfig(0, reseed_after_execution=True)
    variants = {
        "ray_random_shuffle": ray.data.from_blocks(
            [table.slice(i, step) for i in range(0, rows, step)]
        ).random_shuffle(seed=seed),
        "cg_ray_reshuffled": reshuffled(ray.data.from_blocks([table]), 0, args.blocks),
    }
    result: dict = {"blocks": args.blocks, "rows": rows, "epochs": args.epochs}
    for name, ds in variants.items():
        times, orders = epochs_of(
            ds.map_batches(lambda b: b, batch_size=8, batch_format="pyarrow"), args.epochs
        )
        assert all(sorted(order) == sorted(table["path"].to_pylist()) for order in orders), name
        assert all(a != b for a, b in zip(orders, orders[1:])), f"{name}: the same order twice"
        print(f"{name}: epochs {times} s", flush=True)
        result[f"{name}_epoch_s"] = times
        result[f"{name}_epoch_s_median"] = statistics.median(times)
    result["speedup"] = round(
        result["ray_random_shuffle_epoch_s_median"] / result["cg_ray_reshuffled_epoch_s_median"], 2
    )
    print_result(result)


if __name__ == "__main__":
    main()
