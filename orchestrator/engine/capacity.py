"""What the Ray cluster is and can grow to, and what waiting trials wait for (driver side, Ray core).

On an autoscaling cluster the GPU nodes do not exist until a demand starts them, so the resources
Ray reports now say nothing of what a study can use. The autoscaling config does: its node types
(with their resources) and `max_workers`. It is read from `$ORCHESTRATOR_CLUSTER_CONFIG`, else from
`~/ray_bootstrap_config.yaml`, where `ray up` leaves it on the head (only when joining a cluster).

While trials wait (their placement groups pending), `Watcher` prints what for, with the
autoscaler's own words (its status, as `ray status` reads it), and ends the wait after
`max_wait_s` with that reason.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.engine.session import BackendError
from orchestrator.studies.spec import Scaling

CONFIG_ENV = "ORCHESTRATOR_CLUSTER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # `ray up` writes the cluster config here, on the head


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict  # CPU, GPU, custom resources of one node of this type
    max_workers: int  # how many such nodes the autoscaler may start (the head: 1)
    head: bool = False


def cluster_node_types(joined: bool) -> tuple[list[NodeType], int] | None:
    """(node types, the cluster's max_workers) from the autoscaling config; None where there is none."""
    import yaml

    path = os.environ.get(CONFIG_ENV) or (os.path.expanduser(BOOTSTRAP_CONFIG) if joined else "")
    if not path or not Path(path).is_file():
        return None
    raw = yaml.safe_load(Path(path).read_text()) or {}
    head = raw.get("head_node_type")
    types = [NodeType(name, dict(spec.get("resources") or {}), 1 if name == head else int(spec.get("max_workers", 0)),
                      head=name == head)
             for name, spec in (raw.get("available_node_types") or {}).items()]
    return types, int(raw.get("max_workers", sum(t.max_workers for t in types if not t.head)))


def worker_slots(resources: dict, need: dict) -> int:
    """How many workers needing `need` fit in `resources` (one node, or a sum for a bound)."""
    counts = [math.floor(resources.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 0


def max_worker_slots(types: list[NodeType], max_workers: int, need: dict) -> int:
    """Workers the cluster could host at its largest: the head, plus up to `max_workers` worker
    nodes of the types that host the most such workers each."""
    total = sum(worker_slots(t.resources, need) for t in types if t.head)
    per_node = sorted(((worker_slots(t.resources, need), t.max_workers) for t in types if not t.head), reverse=True)
    left = max_workers
    for slots, count in per_node:
        take = min(count, left)
        total, left = total + slots * take, left - take
    return total


def slots_now(need: dict) -> int:
    """Workers the nodes alive now can host (Train may spread one trial's workers over nodes)."""
    import ray

    return sum(worker_slots(node["Resources"], need) for node in ray.nodes() if node.get("Alive"))


def autoscaler_report() -> dict:
    """The autoscaler's status as `ray status` reads it (v1 monitor: GCS key __autoscaling_status),
    plus its last error; {} where no autoscaler reports."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return {}
    try:
        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
        error = (_internal_kv_get("__autoscaling_error") or b"").decode(errors="replace")
    except Exception:  # the key layout is Ray's, not ours: never let a status read break a run
        return {}
    report = dict(status.get("autoscaler_report") or {})
    if error.strip():
        report["error"] = error.strip().splitlines()[-1]
    return report


def _reason(report: dict, node_type: str | None) -> str:
    """The autoscaler's latest word on why nodes are not there yet."""
    availability = (report.get("node_availability_summary") or {}).get("node_availabilities") or {}
    info = (availability.get(node_type) or {}).get("unavailable_node_information") if node_type else None
    if info and info.get("description"):
        return f"{info.get('category', 'unavailable')}: {info['description']}"
    if report.get("error"):
        return report["error"]
    states = sorted({p[2] for p in report.get("pending_nodes") or [] if len(p) > 2 and (not node_type or p[1] == node_type)})
    if states:
        return "nodes " + ", ".join(s.lower() for s in states)
    if (report.get("pending_launches") or {}).get(node_type):
        return "launch requested"
    if report.get("failed_nodes"):
        return f"{len(report['failed_nodes'])} node launches failed"
    return "no node is being launched yet"


def describe_wait(report: dict, types: list[NodeType] | None, pending_groups: int) -> str:
    """`waiting for 2 GPU nodes (gpu.spot.1x): <the autoscaler's words>`, or what else pending trials wait for."""
    gpu_types = {t.name for t in types or () if t.resources.get("GPU")}
    counts: dict[str, int] = dict(report.get("pending_launches") or {})
    for node in report.get("pending_nodes") or []:
        if len(node) > 1:
            counts[node[1]] = counts.get(node[1], 0) + 1
    if counts:
        parts = [f"{n} {'GPU' if name in gpu_types else 'CPU'} node{'s' if n > 1 else ''} ({name})" for name, n in sorted(counts.items())]
        return f"waiting for {', '.join(parts)}: {_reason(report, sorted(counts)[0])}"
    if report:
        return f"{pending_groups} trial(s) waiting for resources: {_reason(report, None)}"
    return f"{pending_groups} trial(s) waiting for resources held by running trials"


def pending_groups() -> dict[str, dict]:
    """Placement groups not yet placed (Tune trials, Train worker groups), by id."""
    from ray.util import placement_group_table

    return {pg_id: pg for pg_id, pg in placement_group_table().items() if pg.get("state") in ("PENDING", "RESCHEDULING")}


def awaits_nodes(report: dict) -> bool:
    """Does the autoscaler report nodes on their way, or failing to come (quota, capacity)?"""
    availability = (report.get("node_availability_summary") or {}).get("node_availabilities") or {}
    return bool(report.get("pending_launches") or report.get("pending_nodes") or report.get("failed_nodes")
                or report.get("error") or any((a or {}).get("unavailable_node_information") for a in availability.values()))


class Watcher:
    """A thread that says what this run's pending trials wait for, and gives up after `max_wait_s`
    (0: never): `on_give_up(reason)` is then called.

    Only the wait for nodes counts: time while this run's placement groups are pending *and* the
    autoscaler reports nodes launching or failing to launch. Trials queued behind running ones (a
    full cluster, or no autoscaler) never end a run, and any trial result restarts the clock."""

    def __init__(self, say: Callable[[str], None], max_wait_s: float, types: list[NodeType] | None,
                 on_give_up: Callable[[str], None], poll_s: float = 1.0, repeat_s: float = 30.0) -> None:
        self.say, self.max_wait_s, self.types, self.on_give_up = say, max_wait_s, types, on_give_up
        self.poll_s, self.repeat_s = poll_s, repeat_s
        self._stop = threading.Event()
        self._waiting_since: float | None = None
        self._before: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="orchestrator-wait-watcher", daemon=True)

    def __enter__(self) -> "Watcher":
        try:
            self._before = set(pending_groups())  # other runs' or jobs' groups are not ours to explain
        except Exception:
            self._before = set()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def progress(self) -> None:
        """A trial reported: the run is moving, whatever else waits."""
        self._waiting_since = None

    def _loop(self) -> None:
        last, last_at = "", 0.0
        while not self._stop.wait(self.poll_s):
            try:
                pending = {pg: v for pg, v in pending_groups().items() if pg not in self._before}
                report = autoscaler_report()
            except Exception:  # Ray shutting down
                return
            now = time.monotonic()
            if not awaits_nodes(report):  # no node on its way: trials at most queue behind running ones
                self._waiting_since, last = None, ""
                continue
            # nodes are coming (or failing to): say so; the clock runs while our trials wait on them
            self._waiting_since = (self._waiting_since or now) if pending else None
            waited = now - self._waiting_since if self._waiting_since else 0.0
            message = describe_wait(report, self.types, len(pending))
            if message != last or now - last_at >= self.repeat_s:
                self.say(f"{message} ({waited:.0f} s)")
                last, last_at = message, now
            if self.max_wait_s and waited > self.max_wait_s:
                self.on_give_up(f"gave up after waiting {waited:.0f} s for nodes (max_wait_s={self.max_wait_s:g}): "
                                f"{message}; raise max_wait_s, or check the cluster's quota and node types")
                return


# ---- how many trials fit, and what one asks for ----------------------------------------------------

CPU_NODE_RESOURCE = "cpu_node"  # declared by CPU-only node types (as many as their CPUs): single-process trials' home


def worker_resources(scaling: Scaling) -> dict[str, float]:
    """What one Train worker (or one single-process trial) asks of a node."""
    return {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})}


def _need_text(scaling: Scaling) -> str:
    return (f"{scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPU"
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
        if not joined and slots_now(need) < 1:  # a local Ray never grows: Tune would wait forever
            raise _machine_too_small(scaling, "lower cpus_per_worker, set use_gpu=false")
        return need, None
    types, max_workers = known
    if scaling.use_gpu:  # GPU work: GPU nodes are what it needs
        return need, max(1, max_worker_slots(types, max_workers, need))
    cpu_types = [t for t in types if not t.resources.get("GPU")]
    if any(t.resources.get(CPU_NODE_RESOURCE) for t in types):
        need[CPU_NODE_RESOURCE] = scaling.cpus_per_worker
        cpu_types = [t for t in types if t.resources.get(CPU_NODE_RESOURCE)]
    return need, max(1, max_worker_slots(cpu_types, max_workers, need))


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
        fits = max_worker_slots(types, max_workers, need) // scaling.num_workers
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
    if joined:  # the cluster may grow (an autoscaler we cannot see into): let trials queue, and say so
        say(f"the cluster cannot hold one trial yet ({_need_text(scaling)}; it has {resources.get('CPU', 0):g} CPU, "
            f"{resources.get('GPU', 0):g} GPU now): trials wait for nodes (max_wait_s={scaling.max_wait_s:g})")
        return None
    raise _machine_too_small(scaling, "lower num_workers / cpus_per_worker")


def _machine_too_small(scaling: Scaling, what: str) -> BackendError:
    """One line: a local Ray that can never hold one trial."""
    resources = __import__("ray").cluster_resources()
    return BackendError(f"one trial needs {_need_text(scaling)}; this machine has {resources.get('CPU', 0):g} CPU, "
                        f"{resources.get('GPU', 0):g} GPU: {what}, or join a cluster with --address")
