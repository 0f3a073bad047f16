"""Spot reclaims on the local autoscaling cluster (tests/fake_cluster.py, autoscaler v2), as AWS
makes them: a notice (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`, what
orchestrator/clusters/spot_notice.py runs on a real node), then the node's processes killed; or a
kill with no notice. Used by tests/test_spot.py and bench/bench_spot.py.

A fake node is a raylet on this machine started by the autoscaler; "killing the node" SIGKILLs that
raylet (found by its --node_id) and its descendants (the node's workers): only processes of the
fake cluster this harness drives, never anything else.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fake_cluster import FakeCluster, submit_job

PREEMPTION = "DRAIN_NODE_REASON_PREEMPTION"


def node_processes(node_id: str) -> list[int]:
    """The raylet of a fake node (its --node_id) and its descendants."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "raylet" in cmdline and f"--node_id={node_id}" in cmdline:
            found.append(proc.pid)
            try:
                found += [child.pid for child in proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    return found


def kill_node(node_id: str) -> int:
    """SIGKILL the node's raylet and everything under it, as a reclaimed instance vanishes; returns
    how many processes were signalled."""
    import os

    pids = node_processes(node_id)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def drain(cluster: FakeCluster, node_id: str, deadline_s: int) -> None:
    """A spot notice, as the watcher turns it into a drain."""
    cluster.ray_cli("drain-node", f"--address={cluster.address}", f"--node-id={node_id}", f"--reason={PREEMPTION}",
                    "--reason-message=spot terminate notice (test)", f"--deadline-remaining-seconds={deadline_s}")


def actor_nodes(cluster: FakeCluster, class_name: str) -> list[str]:
    """The node of each live actor of a class (from the State API, through the cluster's dashboard):
    RayTrainWorker (Train workers), ImplicitFunc (Tune's function trials)."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
                         raise_on_missing_output=False, limit=1000)
    return sorted(a.node_id for a in actors)


def train_worker_nodes(cluster: FakeCluster) -> list[str]:
    """Nodes of the live Ray Train workers, the busiest first."""
    from collections import Counter

    return [node for node, _ in Counter(actor_nodes(cluster, "RayTrainWorker")).most_common()]


def preemption_checkpoints(storage: Path, since: float) -> list[Path]:
    """Train checkpoints saved on a notice (their state has a mid-epoch `position`) after `since`,
    once Train has registered them (its checkpoint manager's snapshot names them): one written but
    not yet registered when the node dies is lost, as it would be on AWS (two minutes of notice
    leave time to register; a kill the instant the file lands does not)."""
    import torch

    found = []
    for state in storage.glob("*/checkpoint_*/state.pt"):
        snapshot = state.parent.parent / "checkpoint_manager_snapshot.json"
        try:
            if (state.stat().st_mtime >= since and "position" in torch.load(state, weights_only=True)
                    and state.parent.name in snapshot.read_text()):
                found.append(state)
        except (OSError, RuntimeError, EOFError):  # being written
            pass
    return found


def steps_parts(results: Path, study: str) -> int:
    return sum(1 for p in (results / study / "steps.parquet").glob("*.parquet") if not p.name.startswith("."))


@dataclass
class Reclaims:
    """What a run of reclaims did: per reclaim, the seconds from the kill to the next steps row."""

    recoveries: list[float] = field(default_factory=list)
    notices: int = 0
    kills: int = 0
    runs_noticed: list[int] = field(default_factory=list)  # per notice: the Train runs with workers on the node


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def reclaim_train_nodes(cluster: FakeCluster, results: Path, study: str, notices: list[bool], deadline_s: int = 60,
                        timeout_s: float = 240) -> Reclaims:
    """One reclaim per entry of `notices`: once a steps row has landed since the last reclaim, drain
    the node holding the most running Train workers (where the entry is True), wait for the
    checkpoints the notice causes (one per Train run there), kill the node."""
    done = Reclaims()
    storage = results / "_ray"
    for notice in notices:
        rows = steps_parts(results, study)
        wait_for(lambda: steps_parts(results, study) > rows, timeout_s, "a steps row from the running trial")
        (node, *_) = wait_for(lambda: train_worker_nodes(cluster), timeout_s, "a live Train worker")
        if notice:  # every Train run with a worker there saves a checkpoint
            runs = actor_nodes(cluster, "RayTrainWorker").count(node)
            since = time.time()
            drain(cluster, node, deadline_s)
            wait_for(lambda: len({p.parent.parent for p in preemption_checkpoints(storage, since)}) >= runs, timeout_s,
                     f"the checkpoints the notice causes ({runs} Train run(s) on the node)")
            done.notices += 1
            done.runs_noticed.append(runs)
        rows = steps_parts(results, study)
        killed = time.time()
        assert kill_node(node) > 0, f"no processes found for node {node}"
        done.kills += 1
        wait_for(lambda: steps_parts(results, study) > rows, timeout_s, "the next steps row after the kill")
        done.recoveries.append(time.time() - killed)
    return done


def submit(cluster: FakeCluster, argv: list[str]) -> str:
    """`ray job submit` of an orchestrator command on the cluster (GPU nodes without CUDA: the CPU
    fallback, which the rows record); returns the job id."""
    return submit_job(cluster, [sys.executable, "-m", "orchestrator", *argv], {"ORCHESTRATOR_ALLOW_CPU_FALLBACK": "1"})
