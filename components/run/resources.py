"""Resource requests checked against the cluster before any stage or cell is submitted.

Ray waits for resources that are busy, and also for resources that can never come: a Train
placement group asking for more workers / CPUs / GPUs than the cluster has is retried without
end, and a task that fits no node blocks `ray.wait` forever. So every request of the run is
checked up front:

- without an autoscaler, against the live nodes: a pre-training worker's bundle
  (`pretrain.cpus_per_worker` CPUs, 1 GPU with `pretrain.use_gpu`) must fit
  `pretrain.num_workers` times, each copy on one node, and a cell's bundle
  (`finetune.cpus_per_cell`, `finetune.gpus_per_cell`) must fit on some node;
- with an autoscaler, against the most it can scale to (per resource, summed over node types,
  as Ray Train checks it).
"""

from __future__ import annotations

from components.config import Config
from components.errors import InputError

EPS = 1e-9


def requests(cfg: Config) -> list[tuple[str, dict[str, float], int]]:
    """(what, one bundle, how many at once) for the pre-training workers and an anytime cell."""
    p, f = cfg.pretrain, cfg.finetune
    worker = {"CPU": float(p.cpus_per_worker), **({"GPU": 1.0} if p.use_gpu else {})}
    cell = {"CPU": float(f.cpus_per_cell), **({"GPU": float(f.gpus_per_cell)} if f.gpus_per_cell > 0 else {})}
    return [("pre-training (pretrain.num_workers x pretrain.cpus_per_worker / use_gpu)", worker, p.num_workers),
            ("an anytime cell (finetune.cpus_per_cell / gpus_per_cell)", cell, 1)]


def placeable(nodes: list[dict[str, float]], bundle: dict[str, float]) -> int:
    """How many copies of `bundle` the `nodes` (each node's total resources) hold, each copy on one node."""
    return sum(int(min((node.get(k, 0.0) + EPS) // v for k, v in bundle.items() if v > 0)) for node in nodes)


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU"))


def check_resources(cfg: Config, nodes: list[dict[str, float]], limits: dict[str, float] | None = None) -> None:
    """InputError naming the request and the cluster when a request can never be met."""
    for what, bundle, count in requests(cfg):
        need = ", ".join(f"{k} {v:g}" for k, v in bundle.items())
        if limits:
            for k, v in bundle.items():
                if v * count > limits.get(k, 0) + EPS:
                    raise InputError(f"{what} needs {count} x {{{need}}} = {k} {v * count:g}, but the autoscaler can "
                                     f"provide at most {k} {limits.get(k, 0):g}; lower the request or raise the "
                                     "cluster's max_workers")
        elif placeable(nodes, bundle) < count:
            shown = "; ".join(_show(n) for n in nodes) or "no live node"
            raise InputError(f"{what} needs {count} x {{{need}}}, each on one node, but the cluster's nodes "
                             f"({shown}) hold only {placeable(nodes, bundle)}; lower the request or add nodes")


def check_cluster(cfg: Config) -> None:
    """`check_resources` against the connected Ray cluster (Ray must be initialised)."""
    import ray
    from ray._private.state import state

    limits = state.get_max_resources_from_cluster_config()   # None unless an autoscaler is configured
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    check_resources(cfg, nodes, limits)
