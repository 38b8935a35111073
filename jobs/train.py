"""`ray job submit` entry point: `cg-ray train ARGS...` on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml \
        -- python train.py ARGS...        (make submit JOB=train ... does this and waits)

The job's driver finds the cluster through RAY_ADDRESS, which Ray sets for submitted jobs.
"""

import sys

from cg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
