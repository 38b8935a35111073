"""A real autoscaling Ray cluster on this machine for tests: Ray's own autoscaler with its
`fake_multinode` node provider, which launches real raylets on this machine with the resources
each node type declares, and removes them when they idle.

Ray's `ray.cluster_utils.AutoscalingCluster` builds such a config, but its start()/shutdown() run
`ray stop --force` (every Ray on the machine) and its base file is not in the wheel: the config is
written here in the same shape, the head started with `ray start --head --block
--autoscaling-config=FILE --temp-dir=OWN_DIR` (RAY_FAKE_CLUSTER=1, AUTOSCALER_UPDATE_INTERVAL_S=1),
and everything stopped by pid: the head's `ray start` process group, then every process whose
command line names this cluster's folder (the nodes the autoscaler launched run in the head's
session folder)."""

from __future__ import annotations

import json
import os
import time

from ray_cluster import BIN, LocalCluster, free_port, stop

HEAD_TYPE = "ray.head.default"


def fake_config(head: dict, workers: dict, gcs_address: str, idle_minutes: float = 0.1) -> dict:
    """The autoscaling config of a fake_multinode cluster (Ray's fake_multi_node/example.yaml,
    with these node types)."""
    types = {name: {"node_config": {}, "min_workers": 0, **spec} for name, spec in workers.items()}
    types[HEAD_TYPE] = {"resources": head, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "cg-ray-fake",
        "max_workers": sum(spec.get("max_workers", 0) for spec in workers.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class AutoscalingHead(LocalCluster):
    """`with AutoscalingHead({"CPU": 0}, {"worker": {"resources": {"CPU": 2}, "max_workers":
    2}}) as c:` a head with those resources whose autoscaler adds worker nodes on demand;
    c.gcs, c.dashboard, c.env, c.alive_nodes() as for LocalCluster."""

    def __init__(self, head: dict, workers: dict, idle_minutes: float = 0.1, root: str | None = None):
        super().__init__(head_cpus=int(head.get("CPU", 0)), worker_cpus=0, root=root)
        self.head_resources = head
        self.config_path = os.path.join(self.root, "autoscaling.json")
        with open(self.config_path, "w") as f:
            json.dump(fake_config(head, workers, self.gcs, idle_minutes), f)
        self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")

    def _ports_changed(self) -> None:
        with open(self.config_path) as f:
            config = json.load(f)
        config["provider"]["gcs_address"] = self.gcs
        with open(self.config_path, "w") as f:
            json.dump(config, f)

    def _start_nodes(self) -> None:
        port = self.gcs.rsplit(":", 1)[1]
        dash_port = self.dashboard.rsplit(":", 1)[1]
        extra = {k: v for k, v in self.head_resources.items() if k not in ("CPU", "GPU")}
        self._start(
            [
                "--head",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                f"--ray-client-server-port={free_port()}",
                f"--autoscaling-config={self.config_path}",
                f"--num-cpus={self.head_cpus}",
                f"--num-gpus={int(self.head_resources.get('GPU', 0))}",
                *(["--resources", json.dumps(extra)] if extra else []),
            ],
            "head",
            os.path.join(self.root, "head"),
        )
        self.wait_nodes(1)

    def wait_for(self, predicate, timeout: float = 300, every: float = 2) -> float:
        """Poll the alive nodes until predicate(nodes) holds; the seconds it took."""
        start = time.time()
        while time.time() - start < timeout:
            if predicate(self.alive_nodes()):
                return time.time() - start
            time.sleep(every)
        raise TimeoutError(f"cluster condition not met in {timeout} s; see {self.root}/*.log")

    def __exit__(self, *exc) -> None:
        stop(self.procs, self.root)


def python() -> str:
    return os.path.join(BIN, "python")
