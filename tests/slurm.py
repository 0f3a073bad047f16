"""A real two-node SLURM cluster on this machine, for tests (Debian's slurm-wlm and munge): munged,
slurmctld and two slurmd (`-N n1`, `-N n2`, each with its own port, spool and PID file) under one
temp dir, with one slurm.conf that declares both nodes on this host. Started and stopped by the
tests themselves, by PID: never the system's munge or SLURM, never `scontrol shutdown` of another.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.fake_cluster import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")


def missing() -> str | None:
    """Why SLURM cannot run here (None: it can)."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the SLURM test cluster runs its daemons as root"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """Two SLURM nodes (n1, n2) of `cpus` CPUs each, on this host."""

    def __init__(self, cpus: int = 1, nodes: tuple[str, ...] = ("n1", "n2")) -> None:
        # short: munge's and Ray's unix sockets live below it
        self.dir = Path(tempfile.mkdtemp(prefix="slm", dir="/tmp"))
        self.nodes, self.cpus = nodes, cpus
        self.conf = self.dir / "slurm.conf"
        self.socket = self.dir / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _config(self) -> str:
        host = socket.gethostname()
        lines = [
            "ClusterName=orchtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={self.socket},cred_expire=10",
            "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={self.dir}/state",
            f"SlurmdSpoolDir={self.dir}/spool/%n", f"SlurmctldPidFile={self.dir}/slurmctld.pid",
            f"SlurmdPidFile={self.dir}/slurmd-%n.pid", f"SlurmctldLogFile={self.dir}/slurmctld.log",
            f"SlurmdLogFile={self.dir}/slurmd-%n.log", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "MpiDefault=none", "ReturnToService=2",
            "SchedulerType=sched/backfill", "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none", "SlurmdParameters=config_overrides", "KillWait=20",
            "InactiveLimit=0", "MinJobAge=600", "SlurmdTimeout=60", "SlurmctldTimeout=60", "JobRequeue=1",
        ]
        for name in self.nodes:
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
                         f"CPUs={self.cpus} RealMemory=8000 State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(line for line in lines if line) + "\n"

    def start(self, timeout_s: float = 60) -> None:
        (self.dir / "state").mkdir()
        for name in self.nodes:
            (self.dir / "spool" / name).mkdir(parents=True)
        self.conf.write_text(self._config())
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn([_binary("munged"), "-F", "--force", f"--socket={self.socket}", f"--key-file={key}",
                     f"--pid-file={self.dir}/munged.pid", f"--log-file={self.dir}/munged.log",
                     f"--seed-file={self.dir}/munge.seed"], "munged")
        self._wait(lambda: self.socket.exists(), timeout_s, "munged's socket")
        self._spawn([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait(lambda: self.scontrol("ping", check=False).returncode == 0, timeout_s, "slurmctld")
        for name in self.nodes:
            self._spawn([_binary("slurmd"), "-D", "-N", name, "-f", str(self.conf)], f"slurmd-{name}")
        self._wait(self._nodes_idle, timeout_s, "both slurmd idle")

    def _spawn(self, cmd: list[str], name: str) -> None:
        out = open(self.dir / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if predicate():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited while waiting for {what}:\n{self.logs()}")
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.logs()}")

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n, "").startswith("idle") for n in self.nodes)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args, check=check)

    def job_state(self, job_id: str) -> str:
        out = self.scontrol("show", "job", job_id, check=False).stdout
        found = [w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")]
        return found[0] if found else ""

    def logs(self, tail: int = 2000) -> str:
        parts = []
        for log in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")):
            text = log.read_text(errors="replace")[-tail:]
            parts.append(f"--- {log.name} ---\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM then SIGKILL our daemons and whatever runs under them (jobs, Ray), by process group."""
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from tests.fake_cluster import stop_processes_of

        stop_processes_of(self.dir)  # job steps (Ray nodes) whose command lines name our temp dir
        shutil.rmtree(self.dir, ignore_errors=True)
