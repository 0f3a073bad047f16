"""Start, join and stop Ray (driver side, Ray core): a local Ray for a laptop, or the cluster named
by --address / $RAY_ADDRESS (inside a Ray job, the job's own cluster). Ray Client (ray://) is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DRIVER_RESOURCE = "train_driver"  # custom resource that Train driver trials hold instead of a CPU
DRIVER_SLOTS = 64  # how many driver trials one node may host (they only wait on their workers)


class BackendError(RuntimeError):
    """Ray could not be started or reached: the CLI prints it as one line."""


@dataclass
class Session:
    owned: bool  # True when this process started Ray (and so stops it)
    dashboard_url: str | None
    joined: bool = False  # True when running on a cluster started elsewhere (it may autoscale)


ADDRESS_ENV = "RAY_ADDRESS"  # set by Ray in a job's entrypoint (ray job submit), and by users
CLIENT_REFUSED = ("Ray Client addresses (ray://) are not supported: under Ray Client, Tune runs on the cluster and "
                  "its results never reach this process. Submit the run as a Ray job instead: ray job submit "
                  "--address http://HEAD:8265 --working-dir . -- python -m orchestrator run ...")


def init_kwargs(dashboard: bool = True) -> dict[str, Any]:
    """ray.init arguments of a local run (shared with bench/ so both start Ray the same way)."""
    return dict(
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",  # never on a public interface; token auth stays on (Ray's default)
        resources={DRIVER_RESOURCE: DRIVER_SLOTS},
        log_to_driver=False,  # keep workers' logs in /tmp/ray/session_latest/logs, not the terminal
        logging_level=logging.WARNING,
    )


def ray_is_up() -> bool:
    """Is Ray already initialised in this process (a caller's, e.g. a test session's)?"""
    import ray

    return ray.is_initialized()


class _DropTokenDefaultNotice(logging.Filter):
    """Ray says at every start that token auth is on by default; the CLI's dashboard line says where the
    token is. Its warning that auth is *off* (RAY_AUTH_MODE=disabled) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


def quiet_ray() -> None:
    """Keep Ray's notices that are not the user's business out of the terminal (set before ray.tune is
    imported, which reads them): Tune's "operation took 0.6 s, which may be a performance bottleneck"
    timed the Parquet writes our result callback makes on purpose (a stall of 5 s is still news)."""
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    token_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenDefaultNotice) for f in token_log.filters):
        token_log.addFilter(_DropTokenDefaultNotice())


def start(address: str | None = None, dashboard: bool = True) -> Session:
    """Join `address`, else the cluster named by $RAY_ADDRESS (as Ray's own tools do: inside a Ray
    job it names the job's cluster), else start a local Ray."""
    import ray

    quiet_ray()

    address = address or os.environ.get(ADDRESS_ENV) or None
    if address and address.startswith("ray://"):
        raise BackendError(CLIENT_REFUSED)
    if address and address != "auto":
        _check_reachable(address)
    if ray.is_initialized():  # tests, notebooks: reuse the caller's Ray
        return Session(owned=False, dashboard_url=None, joined=bool(address))
    # Train's controller polls workers every 2 s by default, which adds ~6 s to every run's end
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # polling 5x a second costs ~nothing
    try:
        if address:  # an existing cluster: its resources are its own (no num_cpus/resources here)
            context = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            context = ray.init(**init_kwargs(dashboard))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BackendError(f"could not start or reach {where}: {str(exc).splitlines()[0]}") from None
    url = getattr(context, "dashboard_url", None)
    provision_dashboard()
    return Session(owned=True, dashboard_url=f"http://{url}" if url else None, joined=bool(address))


GRAFANA_JSON = Path(__file__).resolve().parents[2] / "grafana" / "orchestrator.json"


def provision_dashboard() -> Path | None:
    """Put the studies' Grafana dashboard (grafana/orchestrator.json) beside Ray's own, in the folder
    Ray provisions Grafana from (ray/dashboard/modules/metrics/metrics_head.py: <session>/metrics/
    grafana/dashboards, or under $RAY_METRICS_OUTPUT_ROOT, or $RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR):
    where this driver runs on the head, a Grafana started with Ray's grafana.ini shows it in the "Ray"
    folder. Written whole (Grafana polls the folder). Returns where it went, or None (not on the head)."""
    import ray._private.worker

    try:
        node = ray._private.worker.global_worker.node
        root = Path(os.environ.get("RAY_METRICS_OUTPUT_ROOT") or Path(node.get_session_dir_path()) / "metrics")
        folder = Path(os.environ.get("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR") or root / "grafana" / "dashboards")
        if not folder.is_dir() or not GRAFANA_JSON.exists():
            return None
        target = folder / "orchestrator_grafana_dashboard.json"
        tmp = folder / f".{target.name}.{os.getpid()}"
        shutil.copyfile(GRAFANA_JSON, tmp)
        os.replace(tmp, target)
        return target
    except (AttributeError, OSError):  # no local node (a remote driver), or a folder it cannot write
        return None


def linger_for_metrics() -> None:
    """Where a Prometheus scrapes this cluster ($RAY_PROMETHEUS_HOST, as cluster.yaml sets it): wait two
    of Ray's metric export intervals, so that the run's last values (trial states, final metrics)
    leave this driver and are scraped before it exits (metrics.export_interval_s: 10 s by default)."""
    import ray

    if not os.environ.get("RAY_PROMETHEUS_HOST") or not ray.is_initialized():
        return
    from orchestrator.engine.metrics import export_interval_s

    time.sleep(2 * export_interval_s())


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with one line, where ray.init would wait a long time on a dead address."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"--address {address!r}: expected HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def stop(session: Session, linger: bool = True) -> None:
    """Stop what this process started; first, with `linger`, give a scraping Prometheus the run's last
    metrics (linger_for_metrics; not after an interrupt: a SLURM or Kubernetes stop gives seconds)."""
    import ray

    from orchestrator.engine import metrics

    if session.owned and ray.is_initialized():
        if linger:
            linger_for_metrics()
        metrics.stop()
        ray.shutdown()
