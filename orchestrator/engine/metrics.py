"""Live study metrics through Ray's metrics system: the dashboard's Metrics page, Prometheus, Grafana.

Recorded in the driver, where every trial's reports already pass on their way to the tables
(sink.RowSink), so the numbers are the rows' own numbers; the one number no row carries is recorded
too (trial states, seconds waited for nodes). `ray.util.metrics` gauges are exported by the driver's
node's metrics agent in Prometheus format; Ray prefixes application metrics with `ray_`, so
`orchestrator_trial_step` is scraped as `ray_orchestrator_trial_step`. Every series is tagged with
the study, the run id and (per trial) the trial's name; Ray adds its own (SessionName, NodeAddress...).

The dashboard of these metrics: grafana/orchestrator.json (docs/monitoring.md). Recording never
fails a run: the first error turns recording off for the process, with one line.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from typing import Callable

PREFIX = "orchestrator_"
STATES = ("pending", "running", "finished", "failed", "stopped", "aborted")
# trial statuses of the tables (results/store.py) -> the state they count under
STATE_OF = {"TERMINATED": "finished", "ERROR": "failed", "STOPPED": "stopped", "ABORTED": "aborted"}
# what each gauge holds: (name, description, tag keys beyond study/run_id)
GAUGES = {
    "trial_step": ("epoch (or step) a trial has reached", ("trial",)),
    "trial_steps_total": ("epochs (or steps) a trial runs in all", ("trial",)),
    "trial_loss": ("a trial's latest epoch loss, per loss column (loss; loss_d, loss_g)", ("trial", "loss")),
    "trial_metric": ("a trial's latest study metric (val_fid, fid, val_rsum, t2i_r10, reached lanes...)",
                     ("trial", "metric")),
    "trial_images_per_second": ("a trial's training throughput in its latest epoch", ("trial",)),
    "trial_gpu_memory_gb": ("peak GPU memory (GiB) of a trial's rank 0's tensors (torch.cuda.max_memory_allocated)",
                            ("trial",)),
    "trial_preemptions": ("spot preemptions a trial has resumed from", ("trial",)),
    "trial_restarts": ("restarts of a trial (resumes from a checkpoint, retried failures)", ("trial",)),
    "study_trials": ("this run's trials of a study, per state", ("state",)),
    "study_wait_seconds": ("seconds this run's trials of a study have waited for nodes", ()),
}


def export_interval_s() -> float:
    """How often Ray exports this process's metrics: metrics_report_interval_ms (10 s by default),
    floored at 1 s as Ray's emitter floors it (src/ray/stats/stats.h)."""
    import ray

    return max(ray._config.metrics_report_interval_ms(), 1000) / 1000


@functools.lru_cache(maxsize=1)
def _gauges() -> dict:
    """One Gauge per name for the process (Ray registers a metric by name; made once, on first use)."""
    from ray.util.metrics import Gauge

    return {name: Gauge(PREFIX + name, description, tag_keys=("study", "run_id", *tags))
            for name, (description, tags) in GAUGES.items()}


class _Held:
    """Every gauge value this process has set, set again every half export interval until `stop()`.
    Ray's metrics agent forgets a gauge value that is not recorded again within two export intervals
    (ray/_private/telemetry/open_telemetry_metric_recorder.py, `_resolve_gauge_ttl_seconds`): without
    this, a trial's epoch would show in Prometheus for ~2 s after its report, and a finished trial's
    last values not at all once the next one runs. Values are recorded under the lock, so a refresh
    never puts back a value older than one just set."""

    def __init__(self) -> None:
        self.values: dict[tuple, float] = {}  # (name, sorted tag items) -> the value last set
        self.lock = threading.Lock()
        self.period_s = export_interval_s() / 2
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="orchestrator-metrics", daemon=True)
        self.thread.start()

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        with self.lock:
            self.values[(name, tuple(sorted(tags.items())))] = value
            _gauges()[name].set(value, tags=tags)

    def _loop(self) -> None:
        import ray

        while not self.stopped.wait(self.period_s):
            if not ray.is_initialized():  # Ray went under us: nothing to record into
                continue
            try:
                with self.lock:
                    for (name, tags), value in self.values.items():
                        _gauges()[name].set(value, tags=dict(tags))
            except Exception as exc:  # recording failed (StudyMetrics._set says why when it next records)
                logging.getLogger(__name__).warning("live metrics: refreshing stopped (%s: %s)", type(exc).__name__, exc)
                return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        with self.lock:
            self.values.clear()


@functools.lru_cache(maxsize=1)
def _held() -> _Held:
    return _Held()


def stop() -> None:
    """Forget every held value and stop refreshing them (before this process's Ray shuts down: the
    next session starts afresh, with its own export interval)."""
    if _held.cache_info().currsize:
        _held().stop()
        _held.cache_clear()


class StudyMetrics:
    """The metrics of one study in one run. Each method records what it is given, or nothing once
    recording has failed (the run goes on; `say` tells once why)."""

    def __init__(self, study: str, run_id: str, say: Callable[[str], None] | None = None) -> None:
        self.tags = {"study": study, "run_id": run_id}
        self.say = say
        self.enabled = True

    def _set(self, name: str, value, **tags: str) -> None:
        if not self.enabled or value is None:
            return
        try:
            value = float(value)
        except (TypeError, ValueError):  # a missing value (pd.NA, None): nothing to record
            return
        try:
            if math.isfinite(value):
                _held().set(name, value, {**self.tags, **tags})
        except Exception as exc:  # a metric must never cost a trial: off for this study, said once
            self.enabled = False
            if self.say is not None:
                self.say(f"live metrics off ({type(exc).__name__}: {exc}); the tables are not affected")

    def step(self, trial: str, step: int, total: int | None, row: dict, metrics: tuple[str, ...]) -> None:
        """A trial's epoch row: how far it is, its losses, its metrics, throughput and GPU memory."""
        self._set("trial_step", step, trial=trial)
        self._set("trial_steps_total", total or None, trial=trial)  # None: not known
        for loss in ("loss", "loss_d", "loss_g"):
            self._set("trial_loss", row.get(loss), trial=trial, loss=loss)
        for metric in metrics:
            self._set("trial_metric", row.get(metric), trial=trial, metric=metric)
        self._set("trial_images_per_second", row.get("images_per_s"), trial=trial)
        self._set("trial_gpu_memory_gb", row.get("gpu_memory_gb"), trial=trial)

    def restarts(self, trial: str, preemptions: int, restarts: int) -> None:
        self._set("trial_preemptions", preemptions, trial=trial)
        self._set("trial_restarts", restarts, trial=trial)

    def metric(self, trial: str, name: str, value) -> None:
        self._set("trial_metric", value, trial=trial, metric=name)

    def states(self, counts: dict[str, int]) -> None:
        """This run's trials of the study per state (every state, zeros included)."""
        for state in STATES:
            self._set("study_trials", counts.get(state, 0), state=state)

    def waited(self, seconds: float) -> None:
        self._set("study_wait_seconds", seconds)
