"""Regenerate cg_ray/geodata/land_mask.npz: a coarse land/sea grid for the offline world map.

Source: the `global-land-mask` package (MIT; the NOAA GLOBE 1 km land mask, public domain),
installed only for this script:  pip install global-land-mask  (it is not a cg_ray dependency).
The 21600 x 43200 mask is reduced to STEP-degree cells (land where most of the cell is land)
and stored bit-packed, so the package ships ~30 KB instead of the 2.5 MB source.

    .venv/bin/python scripts/make_land_mask.py [--step 0.5]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "cg_ray", "geodata", "land_mask.npz")


def coarse_land(ocean: np.ndarray, step_deg: float) -> np.ndarray:
    """(21600, 43200) bool ocean mask (row 0 = 90N, col 0 = 180W) -> (180/step, 360/step) bool land."""
    cell = int(round(step_deg * ocean.shape[0] / 180))
    rows, cols = ocean.shape[0] // cell, ocean.shape[1] // cell
    land = ~ocean[: rows * cell, : cols * cell]
    # Mean over each cell without materializing a float copy of the whole 1 km grid.
    counts = land.reshape(rows, cell, cols, cell).sum(axis=(1, 3), dtype=np.int32)
    return counts * 2 > cell * cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=float, default=0.5, help="cell size in degrees")
    args = parser.parse_args()
    import global_land_mask.globe as globe  # the source data; not needed at run time

    land = coarse_land(globe._mask, args.step)
    np.savez_compressed(
        OUT, bits=np.packbits(land, axis=None), shape=np.array(land.shape), step=np.array(args.step)
    )
    print(f"wrote {os.path.abspath(OUT)}: {land.shape} cells, {land.mean():.1%} land")


if __name__ == "__main__":
    main()
