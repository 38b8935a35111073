"""`ray job submit` entry point: `cg-ray serve ARGS...` on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml \
        -- python serve.py --checkpoint models:/cityguessr/1 --host 0.0.0.0 --autoscale 1:4 \
           --gpus-per-replica 1 --max-batch 16        (make submit JOB=serve ARGS="..." does this)

The endpoint lives as long as the job: `ray job stop` ends it (SIGTERM: the application is
deleted cleanly). Set CG_RAY_SERVE_TOKEN on the nodes (a Kubernetes Secret, the instance's
environment) before listening on 0.0.0.0. For a long-lived service managed by Kubernetes, use
cluster/kuberay/rayservice.yaml instead.
"""

import sys

from cg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
