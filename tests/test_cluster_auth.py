"""cluster.yaml's head, started here the way `ray up` starts it (its head setup and start commands:
token generation, RAY_AUTH_MODE=token, dashboard on 127.0.0.1, Prometheus beside it) under a
temporary home directory: the dashboard and job API refuse a request without the token and answer one
with it; the head's Prometheus scrapes Ray through Ray's generated config.

Adapted for this machine, and only this: the venv's `ray` for ~/venv/bin/ray, free ports for 6379,
the dashboard and Prometheus, a temp dir of its own (for /tmp/ray and the PID files), no `ray stop`
and no --autoscaling-config (it names AWS); no downloads (no internet here): Debian's prometheus for
the pinned release, and no Grafana (no package; its start command starts nothing). The token lands in
the temporary home, never in this machine's ~/.ray."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fake_cluster import free_port, stop_processes_of

ROOT = Path(__file__).resolve().parents[1]


def status_of(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_the_head_started_as_cluster_yaml_starts_it_refuses_unauthenticated_requests(tmp_path):
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    home, temp_dir = tmp_path / "home", Path(tempfile.mkdtemp(prefix="rauth", dir="/tmp"))
    home.mkdir()
    dashboard = free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")

    prometheus = free_port()

    def adapt(command: str) -> str:
        command = command.replace("~/venv/bin/ray", ray_bin).replace("--port=6379", f"--port={free_port()}")
        command = command.replace("~/prometheus/prometheus", shutil.which("prometheus") or "prometheus")
        command = command.replace("127.0.0.1:9090", f"127.0.0.1:{prometheus}").replace("/tmp/ray/", f"{temp_dir}/")
        command = command.replace("/tmp/prometheus.", f"{temp_dir}/prometheus.").replace("/tmp/grafana.", f"{temp_dir}/grafana.")
        command = re.sub(r"--autoscaling-config=\S+", "", command)
        if "ray start" in command:
            command += (f" --temp-dir={temp_dir} --dashboard-port={dashboard} --num-cpus=1 --include-dashboard=true"
                        f" --ray-client-server-port={free_port()} --disable-usage-stats"
                        f" --dashboard-agent-listen-port={free_port()}")
        return command

    real_token = Path.home() / ".ray" / "auth_token"
    before = real_token.read_bytes() if real_token.exists() else None
    setup = [c for c in raw["head_setup_commands"] if "curl " not in c]  # the downloads: see the docstring
    commands = [*setup, *(c for c in raw["head_start_ray_commands"] if "ray stop" not in c)]
    try:
        for command in commands:
            done = subprocess.run(["bash", "-c", adapt(command)], env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, (shlex.quote(command), done.stderr[-2000:])
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert len(token) >= 32
        url = f"http://127.0.0.1:{dashboard}"
        assert status_of(f"{url}/api/version") == 401
        assert status_of(f"{url}/api/jobs/") == 401
        assert status_of(f"{url}/api/version", "not-the-token") in (401, 403)
        assert status_of(f"{url}/api/version", token) == 200
        if shutil.which("prometheus"):  # .ci/run installs it
            assert_scrapes_ray(f"http://127.0.0.1:{prometheus}")
    finally:
        stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert (real_token.read_bytes() if real_token.exists() else None) == before  # this machine's ~/.ray untouched


def assert_scrapes_ray(prometheus: str, timeout_s: float = 120) -> None:
    """The head's Prometheus finds Ray's metrics endpoints through the service-discovery file and
    scrapes them (Ray's generated config: every 10 s)."""
    import json
    import time

    deadline, targets = time.time() + timeout_s, []
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{prometheus}/api/v1/targets", timeout=5) as response:
                targets = json.load(response)["data"]["activeTargets"]
        except OSError:
            targets = []
        if any(t["health"] == "up" for t in targets):
            return
        time.sleep(2)
    raise AssertionError(f"the head's Prometheus scraped no Ray target in {timeout_s:.0f} s: {targets}")

