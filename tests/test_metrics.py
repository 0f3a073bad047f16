"""Live study metrics on a real Prometheus (Debian's `prometheus`, started here on a free port with its
own config and temp dir, stopped by PID): a local GAN run (its own Ray, as `run` starts it) exports
`ray_orchestrator_*` gauges through Ray's metrics agent; Prometheus finds the agent through Ray's
service-discovery file; the values it scraped equal the run's tables. The Grafana dashboard
(grafana/orchestrator.json) is checked against what that Prometheus holds."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from orchestrator.engine.metrics import GAUGES, PREFIX
from orchestrator.results import read_table
from tests.fake_cluster import ROOT, free_port

pytestmark = pytest.mark.slow
LRS = (1e-4, 3e-4)
GAN = ["--set", "epochs=3", "--set", "train_images=384", "--set", "sample_epochs=2", "--set", "fid_images=100",
       "--sweep", "lr=" + ",".join(f"{lr:g}" for lr in LRS)]


class Prometheus:
    """A Prometheus of this test's own, scraping every target of Ray's service-discovery file."""

    def __init__(self, sd_file: Path, work: Path) -> None:
        self.port = free_port()
        self.work = work
        config = {"global": {"scrape_interval": "500ms", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(sd_file)],
                                                                               "refresh_interval": "1s"}]}]}
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(work / "prometheus.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prometheus did not start: {(work / 'prometheus.log').read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def series(self, query: str, start: float) -> list[dict]:
        """Every series of `query` since `start`: [{"metric": labels, "values": [(t, value), ...]}]."""
        data = self.api("query_range", query=query, start=start, end=time.time(), step="0.5")
        return [{"metric": s["metric"], "values": [(float(t), float(v)) for t, v in s["values"]]}
                for s in data["result"]]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def scraped_run(gan_cache, data_dir, tmp_path_factory):
    """A local GAN run (two trials) with a Prometheus scraping its Ray: (prometheus, results, start)."""
    if not shutil.which("prometheus"):
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run installs it)")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rpm", dir="/tmp"))  # short: Ray's socket paths
    work = tmp_path_factory.mktemp("prometheus")
    prometheus = Prometheus(ray_tmp / "ray" / "prom_metrics_service_discovery.json", work)
    results = tmp_path_factory.mktemp("results")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "ORCHESTRATOR_CACHE_DIR": gan_cache,
           "RAY_metrics_report_interval_ms": "1000",  # Ray exports every second (10 s by default)
           "RAY_PROMETHEUS_HOST": prometheus.url}  # the run waits for its last values to be scraped
    env.pop("RAY_ADDRESS", None)
    start = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "orchestrator", "run", "gan", "--results", str(results),
                               "--data-dir", data_dir, *GAN], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        time.sleep(2)  # the last scrape lands
        yield prometheus, results, start
    finally:
        prometheus.stop()
        from tests.fake_cluster import stop_processes_of

        stop_processes_of(ray_tmp)  # the run stops its Ray; anything left of it
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_prometheus_holds_each_trials_epochs_and_losses_as_the_steps_table(scraped_run):
    prometheus, results, start = scraped_run
    steps = read_table(results / "gan" / "steps.parquet")
    trials = read_table(results / "gan" / "trials.parquet")
    by_trial = {s["metric"]["trial"]: s["values"] for s in prometheus.series('ray_orchestrator_trial_step{study="gan"}', start)}
    assert set(by_trial) == set(trials["trial_name"]), (set(by_trial), list(trials["trial_name"]))
    run_ids = {s["metric"]["run_id"] for s in prometheus.series("ray_orchestrator_trial_step", start)}
    assert run_ids == set(trials["run_id"])
    for name, own in steps.groupby("trial_name"):
        # gauges are sampled (Ray exports the latest value each second): an epoch shorter than that may
        # not be seen; every value seen is a row's, and the last one is the last epoch's
        own = own.sort_values("epoch")
        seen = [int(v) for _, v in by_trial[name]]
        assert set(seen) <= set(own["epoch"]) and seen[-1] == 3, (name, seen)
        losses = prometheus.series(f'ray_orchestrator_trial_loss{{study="gan", trial="{name}"}}', start)
        for loss in ("loss_d", "loss_g"):
            (series,) = [s["values"] for s in losses if s["metric"]["loss"] == loss]
            for _, value in series:  # exactly a row's value (float64 end to end)
                assert any(math.isclose(value, row, rel_tol=1e-12) for row in own[loss]), (name, loss, value)
            assert math.isclose(series[-1][1], own[loss].iloc[-1], rel_tol=1e-12)
        metrics = prometheus.series(f'ray_orchestrator_trial_metric{{study="gan", trial="{name}"}}', start)
        last = {s["metric"]["metric"]: s["values"][-1][1] for s in metrics}
        final = own.iloc[-1]
        assert math.isclose(last["val_fid"], final["val_fid"], rel_tol=1e-12)
        assert math.isclose(last["fid"], final["fid"], rel_tol=1e-12)
        total = prometheus.series(f'ray_orchestrator_trial_steps_total{{study="gan", trial="{name}"}}', start)
        assert total[0]["values"][-1][1] == 3


def test_prometheus_ends_with_the_trial_states_of_the_trials_table(scraped_run):
    prometheus, results, start = scraped_run
    trials = read_table(results / "gan" / "trials.parquet")
    states = {s["metric"]["state"]: s["values"] for s in prometheus.series('ray_orchestrator_study_trials{study="gan"}', start)}
    assert states["finished"][-1][1] == (trials["status"] == "TERMINATED").sum() == len(LRS)
    for state in ("pending", "running", "failed", "stopped", "aborted"):
        assert states[state][-1][1] == 0, state
    assert max(v for _, v in states["running"]) >= 1  # seen while it ran
    assert states["pending"][0][1] >= 1  # and before


def test_the_grafana_dashboard_queries_only_metrics_a_run_exports(scraped_run):
    import re

    prometheus, _, _ = scraped_run
    exported = set(prometheus.api("label/__name__/values"))
    dashboard = json.loads((ROOT / "grafana" / "orchestrator.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    named = {name for expr in exprs for name in re.findall(r"\b(ray_[a-z_]+)\b", expr)}
    ours = {"ray_" + PREFIX + name for name in GAUGES}
    assert named == ours  # every gauge on the dashboard, nothing else
    # what a CPU run exports: every gauge but GPU memory (recorded where a trial has a GPU)
    assert named - exported == {"ray_orchestrator_trial_gpu_memory_gb"}, sorted(named - exported)
    for expr in exprs:  # each query parses and answers (a panel of a study this run did not run is empty)
        if not expr.startswith("label_values"):
            prometheus.api("query", query=expr.replace("$run_id", ".*").replace("$trial", ".*"))
    assert len([p for p in dashboard["panels"] if p["type"] == "row"]) == 3  # a row per study


def test_a_failing_recorder_turns_recording_off_once_and_the_run_goes_on(monkeypatch):
    from orchestrator.engine import metrics as metrics_module

    def broken():
        raise RuntimeError("no metrics agent")

    lines = []
    recorder = metrics_module.StudyMetrics("gan", "run", lines.append)
    monkeypatch.setattr(metrics_module, "_gauges", broken)
    recorder.step("gan-lr=0.0002", 1, 3, {"loss_d": 1.2, "loss_g": 0.7}, ("fid",))
    recorder.states({"running": 1})
    assert not recorder.enabled
    assert lines == ["live metrics off (RuntimeError: no metrics agent); the tables are not affected"]
