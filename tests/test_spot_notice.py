"""The spot-notice watcher against a fake IMDSv2 endpoint on 127.0.0.1 (not real AWS), with a stub
`ray` that records its argv; and its drain-node command parsed by the installed Ray's own CLI."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.clusters import spot_notice

ROOT = Path(__file__).resolve().parents[1]
NODE_ID = "ab" * 28  # a Ray node id is 28 bytes


class FakeImds(ThreadingHTTPServer):
    """IMDSv2 as far as the watcher uses it: PUT a token, GETs only with the current token."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.life_cycle = "spot"
        self.notice: dict | None = None  # instance-action's JSON; None: 404
        self.token: str | None = None  # the one valid token
        self.puts = self.polls = self.rejected = 0  # token PUTs, instance-action answers, 401s
        self.expire_next = False  # answer the next GET 401 and forget the token (an expiry)
        self.down = False  # drop every connection unanswered
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/latest"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        imds = self.server
        if imds.down:
            self.close_connection = True
            return
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self._send(400)
        with imds.lock:
            imds.puts += 1
            imds.token = f"token-{imds.puts}"
            self._send(200, imds.token)

    def do_GET(self):
        imds = self.server
        if imds.down:
            self.close_connection = True
            return
        with imds.lock:
            ok = imds.token is not None and self.headers.get("X-aws-ec2-metadata-token") == imds.token
            if imds.expire_next:
                ok, imds.expire_next, imds.token = False, False, None
            imds.rejected += not ok
        if not ok:
            return self._send(401)
        if self.path == "/latest/meta-data/instance-life-cycle":
            return self._send(200, imds.life_cycle)
        if self.path == "/latest/meta-data/spot/instance-action":
            with imds.lock:
                imds.polls += 1
            return self._send(404) if imds.notice is None else self._send(200, json.dumps(imds.notice))
        self._send(404)


@pytest.fixture
def imds():
    server = FakeImds()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


STUB = """#!{python}
import json, os, sys
from pathlib import Path
fail = Path({fail!r})
code = 1 if fail.exists() else 0
fail.unlink(missing_ok=True)
with open({record!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "auth": os.environ.get("RAY_AUTH_MODE"), "code": code}}) + "\\n")
sys.exit(code)
"""


@pytest.fixture
def watcher(tmp_path):
    """Starts watchers (`python -m orchestrator.clusters.spot_notice`) with a stub ray; stops them after."""
    stub = tmp_path / "ray"
    stub.write_text(STUB.format(python=sys.executable, fail=str(tmp_path / "fail_once"),
                                record=str(tmp_path / "drains.jsonl")))
    stub.chmod(0o755)
    procs = []

    def start(url, *extra, env=None):
        log = tmp_path / f"watcher{len(procs)}.log"
        command = [sys.executable, "-m", "orchestrator.clusters.spot_notice", "--metadata-url", url,
                   "--interval", "0.2", "--node-id", NODE_ID, "--address", "127.0.0.1:1", "--ray", str(stub),
                   "--lock", str(tmp_path / "lock"), *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        proc.log = log
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def wait_until(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def drains(tmp_path) -> list[dict]:
    record = tmp_path / "drains.jsonl"
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def options(argv: list[str]) -> dict:
    assert argv[0] == "drain-node"
    return dict(zip(argv[1::2], argv[2::2]))  # every option after it takes one value


def notice_in(seconds: float, action: str = "terminate") -> dict:
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}


def polls_more(imds, n: int = 5):
    start = imds.polls
    wait_until(lambda: imds.polls >= start + n, f"{n} more polls")


def test_one_drain_per_notice_with_preemption_reason_node_and_deadline(imds, watcher, tmp_path):
    home = tmp_path / "home"  # a token file but no RAY_AUTH_MODE: the drain must still use the token
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("secret")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"HOME": str(home)}
    proc = watcher(imds.url, env=env)
    wait_until(lambda: imds.polls >= 3, "three polls without a notice")
    assert drains(tmp_path) == []
    assert imds.puts == 1 and imds.rejected == 0  # one token, sent with every GET

    imds.notice = notice_in(120)
    wait_until(lambda: drains(tmp_path), "a drain after the notice")
    polls_more(imds)  # the notice stays: still one drain
    (call,) = drains(tmp_path)
    opts = options(call["argv"])
    assert opts["--reason"] == "DRAIN_NODE_REASON_PREEMPTION"
    assert opts["--node-id"] == NODE_ID and opts["--address"] == "127.0.0.1:1"
    assert opts["--reason-message"] == f"spot terminate notice for {imds.notice['time']}"
    assert 110 <= int(opts["--deadline-remaining-seconds"]) <= 120
    assert call["auth"] == "token"
    assert proc.poll() is None  # keeps watching
    assert "drain accepted" in proc.log.read_text()


def test_fake_metadata_requires_the_token(imds):
    for headers in ({}, {"X-aws-ec2-metadata-token": "wrong"}):
        request = urllib.request.Request(f"{imds.url}/meta-data/instance-life-cycle", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=2)
        assert exc.value.code == 401


def test_on_demand_node_exits_zero_without_draining(imds, watcher, tmp_path):
    imds.life_cycle = "on-demand"
    imds.notice = notice_in(120)  # not looked at
    proc = watcher(imds.url)
    assert proc.wait(timeout=10) == 0
    assert drains(tmp_path) == [] and imds.polls == 0 and imds.puts == 1
    assert "not spot" in proc.log.read_text()


def test_expired_token_is_renewed_and_failed_drain_retried(imds, watcher, tmp_path):
    proc = watcher(imds.url)
    wait_until(lambda: imds.polls >= 2, "polls")
    imds.expire_next = True  # the next GET gets 401: a new token, then the GET again
    wait_until(lambda: imds.puts == 2, "a second token")
    polls_more(imds, 3)
    assert imds.rejected == 1 and proc.poll() is None

    (tmp_path / "fail_once").touch()  # the first drain-node exits 1
    imds.notice = notice_in(60, action="stop")
    wait_until(lambda: len(drains(tmp_path)) >= 2, "a retried drain")
    polls_more(imds)
    assert [c["code"] for c in drains(tmp_path)] == [1, 0]
    assert "spot stop notice" in options(drains(tmp_path)[1]["argv"])["--reason-message"]


def test_network_errors_are_logged_and_survived(imds, watcher, tmp_path):
    with socket.socket() as s:  # a port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/latest"
    refused = watcher(dead)
    wait_until(lambda: refused.log.read_text().count("metadata service") >= 2, "two logged refusals")
    assert refused.poll() is None

    imds.down = True  # connections dropped unanswered, token PUTs included
    proc = watcher(imds.url, "--force", "--lock", str(tmp_path / "lock2"))
    wait_until(lambda: proc.log.read_text().count("metadata service") >= 2, "two logged drops")
    assert proc.poll() is None
    imds.down = False
    imds.notice = notice_in(30)
    wait_until(lambda: drains(tmp_path), "a drain once the service answers")
    assert options(drains(tmp_path)[0]["argv"])["--node-id"] == NODE_ID


def test_second_watcher_on_a_node_leaves(imds, watcher):
    first = watcher(imds.url)
    wait_until(lambda: imds.polls >= 1, "the first watcher polling")
    second = watcher(imds.url)  # cluster.yaml's start commands ran again
    assert second.wait(timeout=10) == 0
    assert "another watcher" in second.log.read_text() and first.poll() is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ray.scripts imports Serve's pydantic models
def test_drain_command_parses_with_the_installed_ray_cli():
    from ray.scripts.scripts import drain_node

    command = spot_notice.drain_command("ray", "10.0.0.5:6379", NODE_ID,
                                        {"action": "terminate", "time": "2026-12-02T21:40:00Z"}, 97)
    assert command[1] == drain_node.name == "drain-node"
    reason = next(p for p in drain_node.params if p.name == "reason")
    assert spot_notice.DRAIN_REASON in reason.type.choices
    params = drain_node.make_context("drain-node", command[2:]).params  # click's own parsing and checks
    assert params == {"address": "10.0.0.5:6379", "node_id": NODE_ID, "reason": "DRAIN_NODE_REASON_PREEMPTION",
                      "reason_message": "spot terminate notice for 2026-12-02T21:40:00Z",
                      "deadline_remaining_seconds": 97}


def test_local_node_id_address_and_deadline(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    for pid, argv in {"1": ["/bin/bash"], "7": ["/venv/lib/ray/core/src/ray/raylet/raylet", "--foo=1",
                                              f"--node_id={NODE_ID}"], "9": ["python", "--node_id=other"]}.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    assert spot_notice.local_node_id(proc) == NODE_ID
    (proc / "8").mkdir()
    (proc / "8" / "cmdline").write_bytes(b"/x/raylet\0--node_id=" + b"cd" * 28 + b"\0")
    assert spot_notice.local_node_id(proc) is None  # two raylets: which one is ours is unknown

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert spot_notice.gcs_address(None, tmp_path) is None
    (tmp_path / "ray_current_cluster").write_text("10.0.0.5:6379\n")
    assert spot_notice.gcs_address(None, tmp_path) == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    assert spot_notice.gcs_address(None, tmp_path) == "10.0.0.6:6379"
    assert spot_notice.gcs_address("10.0.0.7:6379", tmp_path) == "10.0.0.7:6379"

    now = datetime(2026, 12, 2, 21, 38, 0, tzinfo=timezone.utc).timestamp()
    assert spot_notice.seconds_left("2026-12-02T21:40:00Z", now) == 120
    assert spot_notice.seconds_left("2026-12-02T21:30:00Z", now) == 1  # already past: at least 1


def test_an_unreachable_metadata_service_is_given_up_on():
    """Off EC2 (or with IMDS switched off) the watcher must not retry forever: '' after give_up_s."""
    import time

    metadata = spot_notice.Metadata("http://127.0.0.1:1")  # nothing listens there: refused at once
    started = time.monotonic()
    assert spot_notice.read_life_cycle(metadata, interval=0.05, give_up_s=0.3) == ""
    assert time.monotonic() - started < 5
