"""`ray job submit` entry point: `cg-ray tune ARGS...` on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml \
        -- python tune.py ARGS...        (make submit JOB=tune ... does this and waits)

The job's driver finds the cluster through RAY_ADDRESS, which Ray sets for submitted jobs.
"""

import sys

from cg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
