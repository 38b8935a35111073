"""What a run or a trial needs from the cluster, and whether the cluster can host it: the nodes
alive now, plus the node types its autoscaler can launch.

    cluster_view()      live nodes + launchable node types (the GCS cluster config, this
                        cluster's autoscaling config file, or $CG_RAY_NODE_TYPES)
    resolve_use_gpu()   train.use_gpu auto -> GPUs when a live node or a launchable type has one
    Need                the bundles a run holds (one per training worker) and its data CPUs
    check()             a UserError at once for what no node could ever host; else a Verdict
    PlacementWatch      while placement groups wait for the autoscaler: "waiting for 1 node
                        with 1 GPU, 8 CPUs: 0 of 2 trials placed, 3 min"

Ray's own cluster config (`ray._private.state.state.get_cluster_config()`) is filled in by
autoscalers that report it; Ray's open-source autoscaler does not (Ray 2.60), so on a cluster
started with `ray start --head --autoscaling-config=FILE` (the cluster launcher, Ray's local
fake_multinode provider) the node types come from that FILE, which this cluster's monitor process
names on its command line on the head. On KubeRay the autoscaler runs in its own container: the
manifests name the worker groups in $CG_RAY_NODE_TYPES (JSON, the launcher's shape: {"gpu":
{"resources": {"CPU": 8, "GPU": 1}, "max_workers": 4}}). An autoscaler whose node types are
unknown is waited for, never refused.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field

from cg_ray.errors import UserError

NODE_TYPES_ENV = "CG_RAY_NODE_TYPES"
WAIT_REPORT_ENV = "CG_RAY_WAIT_REPORT_S"  # seconds between "waiting for ..." lines (default 60)
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts it on the head
KEYS = ("CPU", "GPU")


@dataclass
class NodeType:
    """A kind of node the autoscaler can launch: its resources and how many at most."""

    name: str
    resources: dict[str, float]
    max_workers: int


@dataclass
class ClusterView:
    """The nodes alive now and the node types the autoscaler can add (empty without one)."""

    live: list[dict[str, float]]
    types: list[NodeType] = field(default_factory=list)
    autoscaler: bool = False
    source: str = "live nodes"

    def launchable(self) -> list[NodeType]:
        return [t for t in self.types if t.max_workers > 0]

    def capacity(self) -> dict[str, float]:
        """Resources of the cluster at its largest: live nodes plus every type at its max
        (minus the live nodes that look like that type)."""
        total = {k: sum(n.get(k, 0.0) for n in self.live) for k in KEYS}
        for t in self.launchable():
            alike = sum(1 for n in self.live if all(n.get(k, 0.0) == t.resources.get(k, 0.0) for k in KEYS))
            for k in KEYS:
                total[k] += max(t.max_workers - alike, 0) * t.resources.get(k, 0.0)
        return total

    def describe(self) -> str:
        live = f"{len(self.live)} live node(s) with {fmt_resources(_sum(self.live))}"
        if not self.types:
            return live + (", and an autoscaler whose node types are unknown" if self.autoscaler else "")
        types = "; ".join(
            f"{t.name}: {fmt_resources(t.resources)}, up to {t.max_workers}" for t in self.types
        )
        return f"{live}; node types ({self.source}): {types}"


def _sum(nodes: list[dict]) -> dict[str, float]:
    return {k: sum(n.get(k, 0.0) for n in nodes) for k in KEYS}


def fmt_resources(res: dict) -> str:
    """'1 GPU, 8 CPUs'."""
    gpus, cpus = res.get("GPU", 0), res.get("CPU", 0)
    parts = [f"{gpus:g} GPU{'s' if gpus != 1 else ''}"] if gpus else []
    return ", ".join(parts + [f"{cpus:g} CPU{'s' if cpus != 1 else ''}"])


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)


# -- where node types come from ---------------------------------------------------------------


def types_from_config(config: dict) -> list[NodeType]:
    """Worker node types of an autoscaling config (the launcher's YAML shape). The head type
    is left out: the head is a live node."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    default_max = int(config.get("max_workers", 0) or 0)
    out = []
    for name, spec in types.items():
        if name == head:
            continue
        resources = {
            k: float(v) for k, v in (spec.get("resources") or {}).items() if isinstance(v, (int, float))
        }
        out.append(NodeType(name, resources, int(spec.get("max_workers", default_max))))
    return out


def _types_from_gcs() -> list[NodeType]:
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an older GCS without the key, or no connection
        return []
    if config is None:
        return []
    return [
        NodeType(
            g.name,
            {k: float(v) for k, v in g.resources.items()},
            g.max_count if g.max_count >= 0 else 1 << 30,
        )
        for g in config.node_group_configs
    ]


def _monitor_config_path(gcs_address: str) -> str | None:
    """The --autoscaling-config of this cluster's autoscaler (its monitor process runs on the
    head, where a submitted job's driver runs too)."""
    import psutil

    port = gcs_address.rsplit(":", 1)[-1]
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not any(part.endswith("monitor.py") for part in cmd):
            continue
        args = dict(part[2:].split("=", 1) for part in cmd if part.startswith("--") and "=" in part)
        if args.get("gcs-address", "").rsplit(":", 1)[-1] == port and args.get("autoscaling-config"):
            return args["autoscaling-config"]
    return None


def _load_config(path: str) -> dict:
    import yaml

    with open(os.path.expanduser(path)) as f:
        return yaml.safe_load(f) or {}  # the fake provider's file is JSON, a YAML subset


def _has_autoscaler() -> bool:
    """An autoscaler whose node types were not found runs: Ray's v2 autoscaler marks itself in
    the GCS; KubeRay's pods carry RAY_USAGE_STATS_KUBERAY_IN_USE. (v1's status report in the GCS
    tells nothing: a plain local Ray's monitor runs a read-only autoscaler that writes one too.)"""
    if os.environ.get("RAY_USAGE_STATS_KUBERAY_IN_USE") == "1":
        return True
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return is_autoscaler_v2(fetch_from_server=True)
    except Exception:
        return False


def cluster_view() -> ClusterView:
    """The connected cluster (ray.init done): its live nodes, and the node types its
    autoscaler can launch when they can be known."""
    import ray

    live = [{k: float(n["Resources"].get(k, 0.0)) for k in KEYS} for n in ray.nodes() if n.get("Alive")]
    types = _types_from_gcs()
    if types:
        return ClusterView(live, types, True, "the GCS cluster config")
    path = _monitor_config_path(ray.get_runtime_context().gcs_address)
    if path is None and _has_autoscaler() and os.path.exists(os.path.expanduser(LAUNCHER_CONFIG)):
        path = LAUNCHER_CONFIG
    if path:
        try:
            return ClusterView(live, types_from_config(_load_config(path)), True, path)
        except (OSError, ValueError) as exc:
            print(f"cannot read the autoscaling config {path} ({exc}); using the live nodes", flush=True)
    if os.environ.get(NODE_TYPES_ENV):
        return ClusterView(live, declared_types(os.environ[NODE_TYPES_ENV]), True, f"${NODE_TYPES_ENV}")
    return ClusterView(live, [], _has_autoscaler())


def declared_types(text: str) -> list[NodeType]:
    """$CG_RAY_NODE_TYPES: the launcher's available_node_types as JSON."""
    example = '{"gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 4}}'
    try:
        declared = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"${NODE_TYPES_ENV} is not JSON ({exc}): give it as {example}") from None
    if not isinstance(declared, dict) or not all(isinstance(v, dict) for v in declared.values()):
        raise UserError(
            f"${NODE_TYPES_ENV} must map node type names to their resources and max_workers, e.g. {example}"
        )
    return types_from_config({"available_node_types": declared})


# -- GPUs ---------------------------------------------------------------------------------------


def resolve_use_gpu(use_gpu: bool | None, view: ClusterView) -> tuple[bool, str]:
    """train.use_gpu: an explicit value stays; auto (None) means GPUs when a live node has one
    or a node type the autoscaler can launch has one. Returns (use_gpu, why)."""
    if use_gpu is not None:
        return use_gpu, f"train.use_gpu={str(use_gpu).lower()}"
    live = sum(n.get("GPU", 0.0) for n in view.live)
    if live:
        return True, f"train.use_gpu=auto: GPUs (live nodes have {live:g})"
    gpu_types = [t for t in view.launchable() if t.resources.get("GPU", 0) > 0]
    if gpu_types:
        t = gpu_types[0]
        return True, (
            f"train.use_gpu=auto: GPUs (none alive yet; node type {t.name} has "
            f"{fmt_resources(t.resources)}, up to {t.max_workers}, from {view.source})"
        )
    return False, "train.use_gpu=auto: CPUs only (no live node and no node type has a GPU)"


# -- needs and verdicts -------------------------------------------------------------------------


@dataclass
class Need:
    """What one unit (a training run, a trial) holds: a bundle per training worker (each on
    one node), whole CPUs for Ray Data's tasks and a sliver for the unit's driver, anywhere."""

    bundles: list[dict[str, float]]
    data_cpus: float
    driver_cpus: float
    what: str  # how the numbers come about, e.g. "2 workers x 1 CPU + 1 CPU for Ray Data"
    unit: str = "run"

    def total(self) -> dict[str, float]:
        total = _sum(self.bundles)
        total["CPU"] += self.data_cpus + self.driver_cpus
        return total


def training_need(
    num_workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    data_cpus: float,
    driver_cpus: float = 0.0,
    unit: str = "run",
) -> Need:
    """The need of a Ray Train run: its workers' bundles, data CPUs and the driver's share."""
    worker = {"CPU": float(cpus_per_worker), "GPU": 1.0 if use_gpu else 0.0}
    what = f"train.num_workers={num_workers} x ({fmt_resources(worker)}) + {data_cpus:g} CPU for Ray Data" + (
        f" + {driver_cpus:g} for the {unit}'s driver" if driver_cpus else ""
    )
    return Need([dict(worker) for _ in range(num_workers)], data_cpus, driver_cpus, what, unit)


@dataclass
class Verdict:
    """How many units the cluster can host now and at its largest; what it must add first."""

    now: int
    at_most: int
    waits_for: str = ""  # e.g. "1 node with 1 GPU, 8 CPUs (type worker.gpu)"


def _units(need: Need, nodes: list[dict[str, float]], limit: int = 1000) -> int:
    """Units that fit on these nodes at once: each unit's bundles first-fit onto nodes, its
    driver's sliver anywhere, and its data CPUs as whole CPUs of what is left (Ray Data's tasks
    take one CPU each: 0.99 free CPUs run none of them, and the pipeline stalls)."""
    free = [dict(n) for n in nodes]
    for count in range(limit):
        trial = [dict(n) for n in free]
        for bundle in [*need.bundles, {"CPU": need.driver_cpus}]:
            node = next((n for n in trial if _fits(bundle, n)), None)
            if node is None:
                return count
            for k, v in bundle.items():
                node[k] = node.get(k, 0.0) - v
        wanted = math.ceil(need.data_cpus - 1e-9)
        for n in trial:
            take = min(math.floor(n.get("CPU", 0.0) + 1e-9), wanted)
            n["CPU"] -= take
            wanted -= take
        if wanted > 0:
            return count
        free = trial
    return limit


def _largest_nodes(view: ClusterView) -> list[dict[str, float]]:
    """Every node the cluster can have at once: live ones plus each type at its max."""
    nodes = [dict(n) for n in view.live]
    for t in view.launchable():
        alike = sum(1 for n in view.live if all(n.get(k, 0.0) == t.resources.get(k, 0.0) for k in KEYS))
        nodes += [
            {k: t.resources.get(k, 0.0) for k in KEYS} for _ in range(min(max(t.max_workers - alike, 0), 64))
        ]
    return nodes


def _waits_for(need: Need, view: ClusterView) -> str:
    """The nodes the autoscaler must add for one unit: the smallest type that hosts a bundle."""
    fitting = [t for t in view.launchable() if all(_fits(b, t.resources) for b in need.bundles[:1])]
    if not fitting:
        return f"{fmt_resources(need.total())} more"
    t = min(fitting, key=lambda t: (t.resources.get("GPU", 0), t.resources.get("CPU", 0)))
    for count in range(1, t.max_workers + 1):
        nodes = [dict(n) for n in view.live] + [dict(t.resources) for _ in range(count)]
        if _units(need, nodes) >= 1:
            return f"{count} node{'s' if count > 1 else ''} with {fmt_resources(t.resources)} (type {t.name})"
    return f"nodes of type {t.name}"


def check(need: Need, view: ClusterView, override: str = "tune.check_resources=false") -> Verdict:
    """A UserError now when no node, live or launchable, could ever host one unit (naming the
    numbers); else how many units fit now and at most."""
    now = _units(need, view.live)
    if view.autoscaler and not view.types:
        return Verdict(
            now,
            max(now, 1 << 20),
            "" if now else f"{fmt_resources(need.total())} from the autoscaler (its node types are unknown)",
        )
    at_most = _units(need, _largest_nodes(view))
    if at_most == 0:
        nodes = view.live + [t.resources for t in view.launchable()]
        bundle = need.bundles[0] if need.bundles else {}
        if bundle and not any(_fits(bundle, n) for n in nodes):
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
            problem = (
                f"no node can host one training worker ({fmt_resources(bundle)}): the largest "
                f"node {'type ' if view.types else ''}has {fmt_resources(biggest)}"
            )
        else:
            problem = (
                f"one {need.unit} needs {fmt_resources(need.total())} ({need.what}) but the "
                f"cluster {'can grow to' if view.types else 'has'} "
                f"{fmt_resources(view.capacity())}"
            )
        raise UserError(
            f"{problem} [{view.describe()}]: lower train.num_workers, "
            f"train.cpus_per_worker or tune.data_cpus, add nodes or node types, or "
            f"set {override} to skip this check"
        )
    return Verdict(now, at_most, "" if now else _waits_for(need, view))


# -- waiting for the autoscaler -----------------------------------------------------------------


class PlacementWatch:
    """While a run's placement groups wait for the autoscaler, print every CG_RAY_WAIT_REPORT_S
    (60) seconds: "waiting for 1 node with 1 GPU, 8 CPUs: 0 of 2 trials placed, 3 min".
    Training worker groups are recognised by their bundles."""

    def __init__(self, need: Need, units: int, waits_for: str, poll_s: float = 2.0):
        self.need, self.units, self.waits_for, self.poll_s = need, units, waits_for, poll_s
        self.report_s = float(os.environ.get(WAIT_REPORT_ENV, "60"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="placement-watch")

    def __enter__(self) -> PlacementWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _groups(self) -> tuple[int, int]:
        """(worker groups placed, worker groups waiting) of this run's shape."""
        from ray.util import placement_group_table

        shape = sorted(tuple(sorted((k, v) for k, v in b.items() if v)) for b in self.need.bundles)
        placed = waiting = 0
        for pg in placement_group_table().values():
            bundles = sorted(
                tuple(sorted((k, v) for k, v in b.items() if v)) for b in pg.get("bundles", {}).values()
            )
            if bundles != shape:
                continue
            placed += pg.get("state") == "CREATED"
            waiting += pg.get("state") == "PENDING"
        return placed, waiting

    def line(self, placed: int, minutes: float) -> str:
        plural = "s" if self.units != 1 else ""
        return (
            f"waiting for {self.waits_for or 'the autoscaler'}: {min(placed, self.units)} "
            f"of {self.units} {self.need.unit}{plural} placed, {minutes:.0f} min"
        )

    def _run(self) -> None:
        started, last = None, None
        while not self._stop.wait(self.poll_s):
            try:
                placed, waiting = self._groups()
            except Exception:
                continue
            if not waiting or placed >= self.units:
                started = last = None
                continue
            now = time.monotonic()
            started = started or now
            if last is None or now - last >= self.report_s:
                print(self.line(placed, (now - started) / 60), flush=True)
                last = now


def pool_resources() -> dict[str, float]:
    """What an inference actor pool (batch predict, scene labelling) may grow into: the cluster
    at its largest when its autoscaler's node types are known (GPU types scaled to zero
    included), else what is alive now."""
    import ray

    view = cluster_view()
    return view.capacity() if view.types else dict(ray.cluster_resources())
