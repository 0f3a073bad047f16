"""What waiting trials wait for, in the autoscaler's words, and how long a run waits (driver side).

While trials wait (their placement groups pending), `Watcher` prints what for, with the
autoscaler's own words (its status, as `ray status` reads it: autoscaler v2, which `ray up` starts
since Ray 2.50, else the v1 monitor's), and ends the wait after `max_wait_s` with that reason.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

from orchestrator.engine.capacity import NodeType

FAILED_RECENT_S = 300.0  # a failed launch this recent still explains a wait (the autoscaler retries meanwhile)


def autoscaler_report() -> dict:
    """The autoscaler's status as `ray status` reads it, in one shape for both autoscalers (v1's:
    pending_launches {type: n}, pending_nodes [[ip, type, state]], failed_nodes, active_nodes {type: n},
    node_availability_summary, error); {} where no autoscaler reports. Autoscaler v2 (what `ray up`
    starts since Ray 2.50) writes no v1 status key: its status comes from the GCS (v2_report)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            return v2_report()
    except Exception:  # Ray's internals, not ours: a status read must never break a run
        pass
    return _v1_report()


def v2_report() -> dict:
    """Autoscaler v2's ClusterStatus (ray.autoscaler.v2.sdk.get_cluster_status), in v1's shape: a failed
    launch's details become the node type's unavailable_node_information (what _reason quotes)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    report: dict = {
        "active_nodes": _count(n.ray_node_type_name for n in [*status.active_nodes, *status.idle_nodes]),
        "pending_launches": {r.ray_node_type_name: r.count for r in status.pending_launches},
        "pending_nodes": [[n.ip_address or n.instance_id, n.ray_node_type_name, n.details or "pending"]
                          for n in status.pending_nodes],
    }
    # launches that failed lately (v2 keeps its history; a node that died is no reason to wait)
    recent = [r for r in status.failed_launches if (r.failed_ts_s or r.request_ts_s or 0) >= time.time() - FAILED_RECENT_S]
    failed = {r.ray_node_type_name: r for r in sorted(recent, key=lambda r: r.failed_ts_s or 0)}
    if failed:  # the latest failure per type; a launch retried since is pending again (and said first)
        report["node_availability_summary"] = {"node_availabilities": {
            name: {"unavailable_node_information": {"category": "LaunchFailed",
                                                    "description": (r.details or _launch_error(name)).strip()}}
            for name, r in failed.items()}}
    return report


def _launch_error(node_type: str) -> str:
    """Why v2's launches of `node_type` fail: its status says only that they did; the node provider's
    error (e.g. AWS's InsufficientInstanceCapacity) is in the head's monitor.log, which a driver on the
    head (`ray job submit`, `ray exec`: the usual place) can read."""
    import re

    fallback = "launch failed (the node provider's error is in the head's logs/monitor.log)"
    try:
        import ray

        path = Path(ray._private.worker._global_node.get_logs_dir_path()) / "monitor.log"
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 256 * 1024))  # the tail: the log grows for the cluster's life
            text = fh.read().decode(errors="replace")
    except Exception:
        return fallback
    found = re.findall(rf"Failed to launch \d+ nodes? of type {re.escape(node_type)}: (.+)", text)
    return found[-1].strip() if found else fallback


def _count(names) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _v1_report() -> dict:
    """The v1 monitor's status (GCS key __autoscaling_status), plus its last error."""
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
        kind = (lambda name: "GPU " if name in gpu_types else "CPU ") if types else (lambda name: "")  # noqa: E731
        parts = [f"{n} {kind(name)}node{'s' if n > 1 else ''} ({name})" for name, n in sorted(counts.items())]
        return f"waiting for {', '.join(parts)}: {_reason(report, sorted(counts)[0])}"
    if report:
        return f"{pending_groups} trial(s) waiting for resources: {_reason(report, None)}"
    return f"{pending_groups} trial(s) waiting for resources held by running trials"


def job_groups() -> list | None:
    """This job's placement groups not yet removed (Tune's trials, their Train worker groups), as the
    GCS's protobufs: the table read and parsed once per poll, for every use of it (pending groups,
    leaks to release, what this run holds). None: Ray is not up here (unknown)."""
    import ray
    from ray.core.generated import gcs_pb2

    from orchestrator.engine import reclaim

    if not ray.is_initialized():
        return None
    job = ray.get_runtime_context().get_job_id()
    return [g for g in reclaim.group_table()
            if g.creator_job_id.hex() == job and g.state != gcs_pb2.PlacementGroupTableData.REMOVED]


def pending_groups(groups: list | None) -> dict[str, object]:
    """Placement groups among `groups` not yet placed, by id."""
    from ray.core.generated import gcs_pb2

    waiting = (gcs_pb2.PlacementGroupTableData.PENDING, gcs_pb2.PlacementGroupTableData.RESCHEDULING)
    return {g.placement_group_id.hex(): g for g in groups or () if g.state in waiting}


def awaits_nodes(report: dict) -> bool:
    """Does the autoscaler report nodes on their way, or failing to come (quota, capacity)?"""
    availability = (report.get("node_availability_summary") or {}).get("node_availabilities") or {}
    return bool(report.get("pending_launches") or report.get("pending_nodes") or report.get("failed_nodes")
                or report.get("error") or any((a or {}).get("unavailable_node_information") for a in availability.values()))


class Watcher:
    """A thread that says what this run's pending trials wait for, and gives up after `max_wait_s`
    (0: never): `on_give_up(reason)` is then called. Every poll it also gives back what ended Train
    trials left reserved (reclaim.py), so that waiting trials can be placed.

    Two waits count: time while this run's placement groups are pending *and* the autoscaler reports
    nodes launching or failing to launch; and, with no node coming (a Ray that never grows, or one at
    its largest), time while this run's groups are pending and nothing of this run holds a CPU or GPU:
    what they wait for is held by others (other jobs, or leaks), and no trial of this run will free it.
    Trials queued behind this run's running ones never end a run, and any trial result restarts the
    clock."""

    def __init__(self, say: Callable[[str], None], max_wait_s: float, types: list[NodeType] | None,
                 on_give_up: Callable[[str], None], poll_s: float = 1.0, repeat_s: float = 30.0,
                 on_waited: Callable[[float], None] | None = None) -> None:
        self.say, self.max_wait_s, self.types, self.on_give_up = say, max_wait_s, types, on_give_up
        self.on_waited = on_waited  # told the run's total seconds of waiting for nodes, each poll that waits
        self.waited_s, self._polled_at = 0.0, time.monotonic()
        self.poll_s, self.repeat_s = poll_s, repeat_s
        self._stop = threading.Event()
        self._waiting_since: float | None = None
        self._before: set[str] = set()
        self._said, self._said_at = "", 0.0
        self._thread = threading.Thread(target=self._loop, name="orchestrator-wait-watcher", daemon=True)

    def __enter__(self) -> "Watcher":
        try:
            self._before = set(pending_groups(job_groups()))  # an earlier study's of this run: not ours to explain
        except Exception:
            self._before = set()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        _reclaim(self.say, settle_s=5.0)  # what the last ended trials left, once their actors are gone

    def progress(self) -> None:
        """A trial reported: the run is moving, whatever else waits."""
        self._waiting_since = None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                groups = job_groups()
                _reclaim(self.say, groups=groups)
                pending = {pg: v for pg, v in pending_groups(groups).items() if pg not in self._before}
                report = autoscaler_report()
            except Exception:  # Ray shutting down
                return
            if awaits_nodes(report):  # nodes are coming (or failing to): the clock runs while ours wait on them
                message = describe_wait(report, self.types, len(pending))
            elif pending and not _ours_hold_resources(groups):  # no node coming, and what they need is held by others
                message = f"{len(pending)} trial(s) waiting for resources that no trial of this run holds: {held_by()}"
            else:  # no wait, or trials queue behind this run's running ones
                self._waiting_since, self._said = None, ""
                self._count_wait(time.monotonic(), False)
                continue
            if self._wait(message, bool(pending)):
                return

    def _count_wait(self, now: float, ours_pending: bool) -> None:
        """The run's total wait: the time since the previous poll, where this one finds its trials waiting."""
        since, self._polled_at = min(now - self._polled_at, 2 * self.poll_s), now
        if ours_pending:
            self.waited_s += since
            if self.on_waited is not None:
                self.on_waited(self.waited_s)

    def _wait(self, message: str, ours_pending: bool) -> bool:
        """Say what the wait is for (when it changes, and every repeat_s); True when given up."""
        now = time.monotonic()
        self._count_wait(now, ours_pending)
        self._waiting_since = (self._waiting_since or now) if ours_pending else None
        waited = now - self._waiting_since if self._waiting_since else 0.0
        if message != self._said or now - self._said_at >= self.repeat_s:
            self.say(f"{message} ({waited:.0f} s)")
            self._said, self._said_at = message, now
        if self.max_wait_s and waited > self.max_wait_s:
            self.on_give_up(f"gave up after waiting {waited:.0f} s (max_wait_s={self.max_wait_s:g}): {message}; raise "
                            "max_wait_s, or check the cluster's quota, node types and what else runs on it")
            return True
        return False


def _reclaim(say: Callable[[str], None], settle_s: float = 0.0, groups: list | None = None) -> None:
    """Release what ended trials left reserved (reclaim.py; among `groups` when given: this poll's
    table), saying so; with settle_s, keep looking that long (a trial Tune just stopped takes a
    moment to die)."""
    from orchestrator.engine import reclaim

    deadline = time.monotonic() + settle_s
    while True:
        try:
            released = reclaim.release_orphans(groups)
            groups = None  # a second look reads the table again
        except Exception:  # Ray shutting down, or not up (unit tests of the watcher)
            return
        if released:
            say(released.describe())
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def _ours_hold_resources(groups: list | None) -> bool:
    """Does a placed group of this job (`groups`, job_groups) hold CPUs or GPUs (a running trial or
    worker group)? Unknown (None): assume the run is moving."""
    from ray.core.generated import gcs_pb2

    if groups is None:
        return True
    return any(g.state == gcs_pb2.PlacementGroupTableData.CREATED
               and any(b.unit_resources.get("CPU", 0) or b.unit_resources.get("GPU", 0) for b in g.bundles)
               for g in groups)


def held_by() -> str:
    """What holds this Ray's CPUs and GPUs, in a few words: placement groups (by job) and the rest."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    parts = []
    for name in ("CPU", "GPU"):
        if total.get(name):
            parts.append(f"{total[name] - free.get(name, 0):g} of {total[name]:g} {name} in use")
    try:
        from orchestrator.engine import reclaim
        from ray.core.generated import gcs_pb2

        job = ray.get_runtime_context().get_job_id()
        others = [g for g in reclaim.group_table() if g.state == gcs_pb2.PlacementGroupTableData.CREATED
                  and g.creator_job_id.hex() != job]
        if others:
            parts.append(f"{len(others)} placement group(s) of other jobs ({', '.join(sorted({g.creator_job_id.hex() for g in others}))})")
    except Exception:
        pass
    return ", ".join(parts) or "unknown"
