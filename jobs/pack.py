"""`ray job submit` entry point: `cg-ray pack ARGS...` on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml \
        -- python pack.py ARGS...        (make submit JOB=pack ... does this and waits)

The job's driver finds the cluster through RAY_ADDRESS, which Ray sets for submitted jobs.
"""

import sys

from cg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pack", *sys.argv[1:]]))
