"""Spot-interruption watcher for an AWS spot node of the Ray cluster.

AWS announces a spot interruption two minutes ahead in the instance metadata
(`meta-data/spot/instance-action`); Ray's AWS launcher does not watch for it. This process polls it
(IMDSv2) and, on a notice, runs `ray drain-node` with the PREEMPTION reason and the notice's deadline,
so Ray stops placing work on the node and Train sees a preemption (`ray.train.get_preemption_info()`)
in time to checkpoint. cluster.yaml starts it after `ray start` on every worker:

    python -m orchestrator.clusters.spot_notice --address HEAD_IP:6379    # exits at once off spot

Stdlib only, and ray is never imported: it starts in milliseconds and costs nothing where it exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import http.client
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

METADATA_URL = "http://169.254.169.254/latest"  # IMDS, link-local on every EC2 instance
TOKEN_TTL_S = 21600  # IMDSv2's longest token lifetime (6 h)
TOKEN_MARGIN_S = 60  # renew a token this long before AWS expires it
HTTP_TIMEOUT_S = 2.0  # IMDS answers in milliseconds; a hung request must not eat the 2-minute notice
DRAIN_TIMEOUT_S = 30  # `ray drain-node` imports ray (~2 s) and makes one GCS call
DRAIN_REASON = "DRAIN_NODE_REASON_PREEMPTION"
RAY_TEMP_DIR = Path("/tmp/ray")  # where `ray start` records the GCS address (ray_current_cluster)


@dataclasses.dataclass(frozen=True)
class Options:
    metadata_url: str = METADATA_URL
    interval: float = 5.0  # seconds between polls: the notice gives ~120 s
    ray: str = str(Path(sys.executable).parent / "ray")  # the ray CLI of this venv
    address: str | None = None  # GCS host:port; None: RAY_ADDRESS, else this node's `ray start`'s
    node_id: str | None = None  # None: this node's raylet's, looked up at drain time
    force: bool = False  # skip the spot life-cycle check (tests)
    lock: str = "/tmp/spot_notice.lock"  # one watcher per node, however often the start commands rerun


def log(message: str) -> None:
    print(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} spot-notice: {message}", flush=True)


class Metadata:
    """IMDSv2 GETs with a session token, renewed before it expires and after a 401."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None
        self.renew_at = 0.0  # time.monotonic() after which the token is renewed
        # the metadata service is link-local: never through an HTTP(S)_PROXY from the environment
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> str | None:
        """The body, or None on 404. Network errors and other statuses raise (OSError/HTTPException)."""
        try:
            return self._get(path)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
        self.token = None  # expired (or revoked) before we renewed it: one fresh token, one more try
        return self._get(path)

    def _get(self, path: str) -> str | None:
        if self.token is None or time.monotonic() >= self.renew_at:
            self._renew()
        request = urllib.request.Request(f"{self.base_url}/{path}", headers={"X-aws-ec2-metadata-token": self.token})
        try:
            with self.opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def _renew(self) -> None:
        request = urllib.request.Request(f"{self.base_url}/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        with self.opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
            self.token = response.read().decode().strip()
        self.renew_at = time.monotonic() + TOKEN_TTL_S - TOKEN_MARGIN_S


NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, HTTPError, refused, reset, timeouts


def read_life_cycle(metadata: Metadata, interval: float, give_up_s: float = 60.0) -> str:
    """'spot' or 'on-demand' ('' where the path is missing, or the service never answered within
    `give_up_s`: not an EC2 instance, or IMDS switched off), retrying while it may still come up."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            return (metadata.get("meta-data/instance-life-cycle") or "").strip()
        except NETWORK_ERRORS as exc:
            if time.monotonic() >= deadline:
                log(f"metadata service: no answer for {give_up_s:g} s ({exc!r}): giving up")
                return ""
            log(f"metadata service: {exc!r}; retrying in {interval} s")
            time.sleep(interval)


def read_notice(metadata: Metadata) -> dict | None:
    """{'action': 'terminate'|'stop'|'hibernate', 'time': '2026-12-02T21:40:00Z'}, or None."""
    try:
        body = metadata.get("meta-data/spot/instance-action")
    except NETWORK_ERRORS as exc:
        log(f"metadata service: {exc!r}; polling on")
        return None
    if body is None:  # 404: no interruption scheduled
        return None
    try:
        notice = json.loads(body)
        return {"action": str(notice["action"]), "time": str(notice["time"])}
    except (ValueError, KeyError, TypeError):
        log(f"unreadable instance-action {body[:200]!r}; polling on")
        return None


def seconds_left(when: str, now: float | None = None) -> int:
    """Whole seconds until the notice's UTC time, at least 1 (drain-node takes an int >= 0)."""
    at = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)  # AWS writes UTC
    return max(1, int(at.timestamp() - (time.time() if now is None else now)))


def local_node_id(proc: Path = Path("/proc")) -> str | None:
    """This node's Ray node id, from its raylet's `--node_id=` argument: how Ray itself finds the
    local node (`ray._private.services.find_node_ids`, which `ray.init()` uses), with no GCS or
    dashboard call (a worker cannot reach the head's dashboard: it binds to 127.0.0.1). Read at
    drain time, so a Ray restarted on the node is followed. None unless exactly one raylet runs."""
    found = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        if "raylet" in os.path.basename(argv[0]):
            found.update(a.split("=", 1)[1] for a in argv[1:] if a.startswith("--node_id="))
    return found.pop() if len(found) == 1 else None


def gcs_address(explicit: str | None, temp_dir: Path = RAY_TEMP_DIR) -> str | None:
    """--address, else RAY_ADDRESS, else the address this node's last `ray start` recorded: the
    order `ray drain-node` itself resolves (services.get_ray_address_from_environment)."""
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        return (temp_dir / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def drain_command(ray: str, address: str | None, node_id: str, notice: dict, deadline_s: int) -> list[str]:
    where = ["--address", address] if address else []  # none known: drain-node's own lookup
    return [ray, "drain-node", *where, "--node-id", node_id, "--reason", DRAIN_REASON,
            "--reason-message", f"spot {notice['action']} notice for {notice['time']}",
            "--deadline-remaining-seconds", str(deadline_s)]


def drain_env() -> dict:
    """The environment, with token auth on where a token is at hand: `ray start` turns it on by
    itself when ~/.ray/auth_token exists, `ray drain-node` does not, and the GCS refuses a call
    without the token."""
    env = dict(os.environ)
    has_token = env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or (
        Path.home() / ".ray" / "auth_token").exists()
    if "RAY_AUTH_MODE" not in env and has_token:
        env["RAY_AUTH_MODE"] = "token"
    return env


def drain(opts: Options, notice: dict) -> bool:
    """Run `ray drain-node` for this node; True when Ray accepted the drain."""
    node_id = opts.node_id or local_node_id()
    if node_id is None:
        log("no single local raylet found (is Ray running here?); cannot drain yet")
        return False
    command = drain_command(opts.ray, gcs_address(opts.address), node_id, notice, seconds_left(notice["time"]))
    log("running " + shlex.join(command))
    try:
        done = subprocess.run(command, env=drain_env(), capture_output=True, text=True, timeout=DRAIN_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"drain failed: {exc!r}")
        return False
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:] or ["no output"]
        log(f"drain failed (exit {done.returncode}): {' | '.join(tail)}")
        return False
    log("drain accepted")
    return True


def watch(opts: Options, metadata: Metadata) -> None:
    """Poll forever; drain once per notice (a failed drain is retried at the next poll).

    It never exits after a drain: the notice stays until the machine goes, so exiting would buy
    nothing, while a hibernated instance resumes with this process and may get a later notice (a
    new time: drained again)."""
    drained = None  # (action, time) of the notice Ray accepted a drain for
    while True:
        notice = read_notice(metadata)
        if notice is not None and (notice["action"], notice["time"]) != drained:
            log(f"notice: {notice['action']} at {notice['time']}")
            if drain(opts, notice):
                drained = (notice["action"], notice["time"])
        time.sleep(opts.interval)


def hold_lock(path: str):
    """An open file holding an exclusive flock (released when the process ends), or None if held."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def parse_args(argv: list[str] | None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m orchestrator.clusters.spot_notice", description=__doc__.splitlines()[0])
    p.add_argument("--metadata-url", default=d.metadata_url, help="IMDS base URL (tests: a fake one)")
    p.add_argument("--interval", type=float, default=d.interval, help="seconds between polls")
    p.add_argument("--ray", default=d.ray, help="the ray executable")
    p.add_argument("--address", default=d.address, help="GCS host:port (default: RAY_ADDRESS, else this node's)")
    p.add_argument("--node-id", default=d.node_id, help="Ray node id (default: this node's raylet's)")
    p.add_argument("--force", action="store_true", help="watch even where the instance is not spot")
    p.add_argument("--lock", default=d.lock, help="lock file that keeps one watcher per node")
    return Options(**{f.name: getattr(p.parse_args(argv), f.name) for f in dataclasses.fields(Options)})


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    metadata = Metadata(opts.metadata_url)
    if not opts.force:
        life_cycle = read_life_cycle(metadata, opts.interval)
        if life_cycle != "spot":  # the same start command runs on every worker type
            log(f"instance-life-cycle is {life_cycle or 'unknown'!r}, not spot: nothing to watch")
            return 0
    lock = hold_lock(opts.lock)  # held (open) for as long as this process watches
    if lock is None:
        log(f"another watcher holds {opts.lock}: leaving it to that one")
        return 0
    node, gcs = opts.node_id or local_node_id(), gcs_address(opts.address)  # both looked up again at drain time
    log(f"watching {opts.metadata_url}/meta-data/spot/instance-action every {opts.interval} s "
        f"(node {node or 'not found yet'}, GCS {gcs or 'not found yet'})")
    watch(opts, metadata)
    return 0  # never reached: watch() polls until the machine goes


if __name__ == "__main__":
    sys.exit(main())
