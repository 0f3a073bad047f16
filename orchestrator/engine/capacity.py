"""What the Ray cluster is and can grow to, and so how many trials to run at once and what each
asks for (driver side, Ray core; what waiting trials wait for is waiting.py).

On an autoscaling cluster the GPU nodes do not exist until a demand starts them, so the resources
Ray reports now say nothing of what a study can use. The autoscaling config does: its node types
(with their resources) and `max_workers`. It is read from `$ORCHESTRATOR_CLUSTER_CONFIG`, else from
`~/ray_bootstrap_config.yaml`, where `ray up` leaves it on the head (only when joining a cluster); a
KubeRay manifest (cluster-k8s.yaml) gives its groups instead (clusters/kuberay.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.engine.session import BackendError
from orchestrator.studies.spec import Scaling

CONFIG_ENV = "ORCHESTRATOR_CLUSTER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # `ray up` writes the cluster config here, on the head
# "1": the cluster joined never grows (a SLURM allocation, cluster.sbatch): what it holds now is all
FIXED_ENV = "ORCHESTRATOR_FIXED_CLUSTER"


def grows(joined: bool) -> bool:
    """May the cluster gain nodes while a run waits? A joined cluster may (an autoscaler), unless it
    says it is fixed; a local Ray never does."""
    return joined and os.environ.get(FIXED_ENV, "") != "1"


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict  # CPU, GPU, custom resources of one node of this type
    max_workers: int  # how many such nodes the autoscaler may start (the head: 1)
    head: bool = False


def cluster_node_types(joined: bool) -> tuple[list[NodeType], int] | None:
    """(node types, the cluster's max_workers) from the autoscaling config; None where there is none."""
    import yaml

    if not grows(joined) and joined:  # a fixed allocation: its nodes are all there is, whatever a config says
        return None
    path = os.environ.get(CONFIG_ENV) or (os.path.expanduser(BOOTSTRAP_CONFIG) if joined else "")
    if not path or not Path(path).is_file():
        return None
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if isinstance(d, dict)]
    if any(d.get("kind") in ("RayJob", "RayCluster") for d in docs):  # a KubeRay manifest (cluster-k8s.yaml)
        from orchestrator.clusters import kuberay

        return kuberay.node_types(kuberay.ray_resource(docs))
    raw = docs[0] if docs else {}
    head = raw.get("head_node_type")
    types = [NodeType(name, dict(spec.get("resources") or {}), 1 if name == head else int(spec.get("max_workers", 0)),
                      head=name == head)
             for name, spec in (raw.get("available_node_types") or {}).items()]
    return types, int(raw.get("max_workers", sum(t.max_workers for t in types if not t.head)))


def worker_slots(resources: dict, need: dict) -> int:
    """How many workers needing `need` fit in `resources` (one node, or a sum for a bound)."""
    counts = [math.floor(resources.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 0


def max_worker_slots(types: list[NodeType], max_workers: int, need: dict, group: int = 1) -> int:
    """Workers the cluster could host at its largest: the head, plus up to `max_workers` worker
    nodes of the types that host the most such workers each. `group` > 1: workers come in groups that
    must share one node (a STRICT_PACK trial's): a node counts only whole groups."""
    whole = lambda t: worker_slots(t.resources, need) // group * group  # noqa: E731
    total = sum(whole(t) for t in types if t.head)
    per_node = sorted(((whole(t), t.max_workers) for t in types if not t.head), reverse=True)
    left = max_workers
    for slots, count in per_node:
        take = min(count, left)
        total, left = total + slots * take, left - take
    return total


def slots_now(need: dict) -> int:
    """Workers the nodes alive now can host (Train may spread one trial's workers over nodes)."""
    import ray

    return sum(worker_slots(node["Resources"], need) for node in ray.nodes() if node.get("Alive"))


def slots_free(need: dict) -> int:
    """Workers the cluster's free resources can host now (what other runs or jobs hold left out)."""
    import ray

    return worker_slots(ray.available_resources(), need)


# ---- how many trials fit, and what one asks for ----------------------------------------------------

CPU_NODE_RESOURCE = "cpu_node"  # declared by CPU-only node types (as many as their CPUs): single-process trials' home


def worker_resources(scaling: Scaling) -> dict[str, float]:
    """What one Train worker (or one single-process trial) asks of a node."""
    return {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})}


def _need_text(scaling: Scaling) -> str:
    return (f"{scaling.num_workers} worker{'s' * (scaling.num_workers != 1)} x {scaling.cpus_per_worker:g} CPU"
            f"{f' + {scaling.gpus_per_worker:g} GPU' if scaling.use_gpu else ''}")


def single_process_resources(scaling: Scaling, joined: bool) -> tuple[dict[str, float], int | None]:
    """(what one single-process trial asks for, how many to run at once) on this cluster.

    On an autoscaling cluster GPU nodes have CPUs too, and a CPU demand the head and the CPU types
    cannot meet at that moment (Tune briefly asks for one trial more than it runs while it swaps
    trials) made the autoscaler start a GPU node for minimax. Where the node types declare
    `cpu_node` (cluster.yaml: the head and every CPU type, as many as their CPUs; never a GPU
    type) the trials ask for it too, so no GPU node can ever satisfy them; concurrency is what
    those types hold. Node types unknown (a local Ray, a cluster without the config): CPUs only,
    no limit."""
    need = worker_resources(scaling)
    known = cluster_node_types(joined)
    if known is None:
        if not grows(joined) and slots_now(need) < 1:  # a cluster that never grows: Tune would wait forever
            raise _machine_too_small(scaling, "lower cpus_per_worker, set use_gpu=false", joined)
        return need, None
    types, max_workers = known
    if scaling.use_gpu:  # GPU work: GPU nodes are what it needs
        return need, max(1, max_worker_slots(types, max_workers, need))
    cpu_types = [t for t in types if not t.resources.get("GPU")]
    if any(t.resources.get(CPU_NODE_RESOURCE) for t in types):
        need[CPU_NODE_RESOURCE] = scaling.cpus_per_worker
        cpu_types = [t for t in types if t.resources.get(CPU_NODE_RESOURCE)]
    return need, max(1, max_worker_slots(cpu_types, max_workers, need))


TRIAL_OVERHEAD_S = 0.1  # a single-process Tune trial's own cost (bench_scale.py's no-op trial: ~0.1 s)


def short_trials_slots(need: dict, seconds: list[float | None], scaling: Scaling) -> int | None:
    """Slots to run single-process trials on when the nodes up now finish them all (`seconds`: each
    one's compute on one core) before a new node could boot (`node_boot_s`): the slots free now, so the
    autoscaler is asked for nothing (paper minimax: ~80 trials of ~0.1 s would otherwise ask for 24
    slots, and the CPU nodes boot after the study has ended). None: size to the cluster's largest."""
    if not scaling.node_boot_s or not seconds or any(s is None for s in seconds):
        return None
    up = slots_free(need)
    work = sum(seconds) + TRIAL_OVERHEAD_S * len(seconds)
    return up if up >= 1 and work / up <= scaling.node_boot_s else None


def max_concurrent(scaling: Scaling, joined: bool, say: Callable[[str], None]) -> int | None:
    """How many Train trials to run at once so that they never starve each other: what the cluster
    can hold at its largest (autoscaling: its node types and max_workers), else what it holds now.
    None: unknown (an autoscaler whose config cannot be read): trials queue for nodes."""
    if scaling.max_concurrent_trials:
        return scaling.max_concurrent_trials
    need = worker_resources(scaling)
    known = cluster_node_types(joined)
    if known is not None:
        types, max_workers = known
        # a STRICT_PACK trial's workers share a node: a 1-GPU type holds none of a 2-worker GPU trial
        group = scaling.num_workers if placement_strategy(scaling, joined) == "STRICT_PACK" else 1
        fits = max_worker_slots(types, max_workers, need, group) // scaling.num_workers
        if fits < 1:
            shapes = "; ".join(f"{t.name}: " + ", ".join(f"{v:g} {k}" for k, v in t.resources.items()) for t in types)
            raise BackendError(f"one trial needs {_need_text(scaling)}, and no node type of this cluster can ever "
                               f"provide that ({shapes}; max_workers {max_workers}): lower num_workers / cpus_per_worker "
                               "or add a node type")
        return fits
    fits = slots_now(need) // scaling.num_workers
    if fits >= 1:
        return fits
    resources = __import__("ray").cluster_resources()
    if grows(joined):  # the cluster may grow (an autoscaler we cannot see into): let trials queue, and say so
        say(f"the cluster cannot hold one trial yet ({_need_text(scaling)}; it has {resources.get('CPU', 0):g} CPU, "
            f"{resources.get('GPU', 0):g} GPU now): trials wait for nodes (max_wait_s={scaling.max_wait_s:g})")
        return None
    raise _machine_too_small(scaling, "lower num_workers / cpus_per_worker", joined)


def _machine_too_small(scaling: Scaling, what: str, joined: bool = False) -> BackendError:
    """One line: a local Ray, or a fixed cluster (a SLURM allocation), that can never hold one trial."""
    import ray

    resources, nodes = ray.cluster_resources(), len([n for n in ray.nodes() if n["Alive"]])
    where = (f"this allocation has {nodes} node{'s' * (nodes != 1)} with {resources.get('CPU', 0):g} CPU, "
             f"{resources.get('GPU', 0):g} GPU in all (a node holds at most {_largest_node(scaling)}): {what}, "
             "or ask SLURM for more (--cpus-per-task, --gpus-per-node)") if joined else (
        f"this machine has {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU: {what}, "
        "or join a cluster with --address")
    return BackendError(f"one trial needs {_need_text(scaling)}; {where}")


def _largest_node(scaling: Scaling) -> str:
    """The most workers of `scaling` one alive node can host, as words."""
    import ray

    need = worker_resources(scaling)
    most = max((worker_slots(n["Resources"], need) for n in ray.nodes() if n["Alive"]), default=0)
    return f"{most} such worker{'s' * (most != 1)}"


def placement_strategy(scaling: Scaling, joined: bool) -> str:
    """Train's placement of one trial's workers: STRICT_PACK (all on one node) where a node type of
    this cluster can hold them all, so the autoscaler starts one multi-GPU node for a DDP trial
    instead of satisfying it with several single-GPU ones (DDP over the network, more spot nodes to
    lose); else PACK (as few nodes as fit). One worker, or node types unknown: PACK."""
    if scaling.num_workers == 1:
        return "PACK"
    known = cluster_node_types(joined)
    if known is None:
        return "PACK"
    need = worker_resources(scaling)
    fits = any(worker_slots(t.resources, need) >= scaling.num_workers for t in known[0] if t.max_workers > 0)
    return "STRICT_PACK" if fits else "PACK"
