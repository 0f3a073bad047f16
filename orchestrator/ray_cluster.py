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
