"""A local autoscaling Ray cluster, shaped like cluster.yaml, on Ray's fake multi-node provider.

A head with 1 CPU, no GPU and the `train_driver` resource; a CPU worker type and a GPU worker type
(the GPU is only declared: there is no CUDA here), both starting at 0 nodes. Worker "nodes" are
extra raylets on this machine that the autoscaler starts on demand. What the simulation cannot
show: it runs none of cluster.yaml's setup or start commands, its nodes share one home directory,
one file system and one PID space, and they boot in seconds (an AWS GPU node takes minutes).

Started with `ray start --head` under a temp dir of its own; `stop()` ends only the processes whose
command line names that dir, and their descendants (never `ray stop`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this type
CPU_TYPE, GPU_TYPE = "cpu.spot", "gpu.spot.1x"  # named after cluster.yaml's worker types
# as cluster.yaml: the drivers' resource on the head, `cpu_node` on the head and the CPU type
HEAD_RESOURCES = {"CPU": 1, "train_driver": 64, "cpu_node": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROVIDER = "tests.fake_provider.FailingFakeProvider"  # Ray's fake provider, whose launches can fail
HEAD_INSTANCE_ID = "f" * 51 + "00000"  # the fake provider's id for the head (see FakeCluster.start)


def fake_config(gcs_address: str, cpu_max: int = 2, gpu_max: int = 2, extra_types: dict | None = None) -> dict:
    empty_lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                   "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
                   "rsync_filter")
    return {
        "cluster_name": "orchestrator-fake",
        "max_workers": cpu_max + gpu_max + sum(t.get("max_workers", 0) for t in (extra_types or {}).values()),
        # an external provider: autoscaler v2 (what `ray up` runs) dies at start on `type: fake_multinode`
        "provider": {"type": "external", "module": PROVIDER, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            HEAD_TYPE: {"resources": HEAD_RESOURCES, "node_config": {}, "max_workers": 0},
            CPU_TYPE: {"resources": {"CPU": 2, "cpu_node": 2}, "node_config": {}, "min_workers": 0, "max_workers": cpu_max},
            GPU_TYPE: {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": gpu_max},
            **(extra_types or {}),
        },
        "head_node_type": HEAD_TYPE,
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {}, "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


class FakeCluster:
    """The cluster `ray up` builds, on one machine: autoscaler v2 (as `ray up` starts it since Ray 2.50:
    RAY_enable_autoscaler_v2=1 on the head, which also needs its cloud instance id and node type);
    `autoscaler="v1"` for the older monitor."""

    def __init__(self, shared: Path, env: dict | None = None, autoscaler: str = "v2",
                 extra_types: dict | None = None) -> None:
        self.extra_types = extra_types
        self.shared = shared  # the "shared storage" every node sees (results, caches)
        # a short temp dir: Ray's unix sockets live below it (paths are limited to 107 bytes)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rfc", dir="/tmp"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.config_path = self.temp_dir / "cluster.yaml"
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, **(env or {}), "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
                    "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "disabled",  # token auth is tested on its own (test_cluster_auth)
                    "ORCHESTRATOR_CLUSTER_CONFIG": str(self.config_path),
                    "ORCHESTRATOR_CACHE_DIR": str(shared / "cache"),  # as cluster.yaml sets it on every node
                    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        if autoscaler == "v2":  # as `ray up` starts the head (without the instance id v2 never launches)
            self.env.update(RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=HEAD_INSTANCE_ID,
                            RAY_NODE_TYPE_NAME=HEAD_TYPE)
        self.env.pop("RAY_ADDRESS", None)
        self.address = ""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        import ray._private.services

        ip = ray._private.services.get_node_ip_address()
        self.address = f"{ip}:{self.port}"
        self.config_path.write_text(yaml.safe_dump(fake_config(self.address, extra_types=self.extra_types)))
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={self.port}",
               f"--autoscaling-config={self.config_path}", "--num-cpus=1", "--num-gpus=0",
               "--resources=" + json.dumps({k: v for k, v in HEAD_RESOURCES.items() if k != "CPU"}), f"--temp-dir={self.temp_dir}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
               # its own agent port: the default (52365) may be held by another Ray on this machine (the
               # test session's), and without its agent the head accepts no job ("No available agent")
               f"--dashboard-agent-listen-port={free_port()}"]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=120)
        deadline = time.time() + 60
        while time.time() < deadline:  # the job API answers once the dashboard is up
            if self.ray_cli("job", "list", check=False).returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError("the fake cluster's dashboard did not come up")

    def ray_cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "ray"), *args]
        if args and args[0] == "job":
            cmd.insert(3 if len(args) > 1 else 2, f"--address={self.dashboard}")
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
        return done

    def nodes(self) -> list[dict]:
        """Every node the cluster has had (dead ones too): id, alive, resources."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR'); "
                "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))") % self.address
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        stop_processes_of(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def processes_of(temp_dir: Path) -> list[int]:
    """PIDs of the Ray processes started with this temp dir: those naming it, and their descendants."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(temp_dir) in " ".join(proc.info["cmdline"] or []):
                roots.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    pids = set()
    for proc in roots:
        pids.add(proc.pid)
        try:
            pids.update(child.pid for child in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return sorted(pids)


def stop_processes_of(temp_dir: Path) -> None:
    """SIGKILL what processes_of finds (a few sweeps: a dying raylet may still spawn)."""
    for _ in range(3):
        pids = processes_of(temp_dir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)


@contextmanager
def started_with_cache(shared: Path, cache: Path):
    """A FakeCluster whose shared storage starts with a copy of `cache` (FashionMNIST and the FID
    classifier, built once before), stopped when the block ends."""
    shutil.copytree(cache, shared / "cache")
    fake = FakeCluster(shared)
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()


def submit_job(cluster: FakeCluster, entry: list[str], env_vars: dict) -> str:
    """`ray job submit --no-wait` of `entry`; returns the job id. `local://`: the working dir already on
    every node. The README's `--working-dir .` uploads a zip that each node's runtime-env agent
    unpacks, overwriting, into <session>/runtime_resources: on fake nodes that share one file system
    each new node deletes the directory that running processes (the job's entrypoint among them) have
    as their cwd, a simulation artifact."""
    import re

    env = json.dumps({"env_vars": env_vars})
    deadline = time.time() + 120
    while True:  # the head's job agent registers a little after the dashboard answers
        out = cluster.ray_cli("job", "submit", "--working-dir", f"local://{ROOT}", "--runtime-env-json", env,
                              "--no-wait", "--", *entry, check=False)
        if out.returncode == 0 or "No available agent" not in out.stdout + out.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)


def job_end(cluster: FakeCluster, job_id: str, timeout_s: float = 900) -> tuple[str, str]:
    """The job's final status and its logs; "TIMEOUT" (and the job stopped) after timeout_s."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status, client.get_job_logs(job_id)
        time.sleep(2)
    client.stop_job(job_id)
    return "TIMEOUT", client.get_job_logs(job_id)


def stop_job(cluster: FakeCluster, job_id: str) -> str:
    """Stop the job; returns the end of its logs (for the failure's message)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    logs = client.get_job_logs(job_id)
    client.stop_job(job_id)
    return logs[-6000:]
