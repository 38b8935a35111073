"""The last line of a benchmark's stdout: its figures as one JSON object, whatever Ray prints.

    from result_line import print_result
    print_result({"clips_per_s": 351.0})

Ray prints from other threads and processes: its log monitor forwards what the workers print, and
its exit handlers report what they stop. A JSON line printed while Ray is up can be followed by
Ray's lines, so this shuts Ray down first (with cg_ray's shutdown, which also stops a local Ray's
leftover workers), flushes both streams, then prints the object on one line. `make bench`
(benchmarks/run.py) and anyone's `tail -n 1` read it from there.
"""

from __future__ import annotations

import json
import sys


def print_result(figures: dict) -> None:
    """Shut down Ray if this process started or joined one, then print `figures` as one line."""
    ray = sys.modules.get("ray")  # never imported here: a benchmark without Ray stays without it
    if ray is not None and ray.is_initialized():
        from cg_ray.ray_env import shutdown_ray

        shutdown_ray()
    sys.stderr.flush()
    sys.stdout.flush()
    print(json.dumps(figures, default=str), flush=True)
