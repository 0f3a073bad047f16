"""The driver side of Ray: start or join a cluster, run an experiment as one Tune run, turn results
into table rows. (What runs inside Ray actors is in ray_workers.py; these two modules are the only
ones that import ray.tune / ray.train.)

One experiment = one Tune run over the spec's trial configs: a single-process workload runs as a
Tune function trial, a distributed one as a Train V2 driver trial (ray_workers.train_driver).

Rows reach the driver through a Tune `Callback` (it runs in this process). Epoch rows of Train
trials are written as they arrive (one file per trial and epoch); the other tables and the trial
row when the trial ends. So an interrupted run keeps every finished trial and every finished epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from orchestrator import ray_cluster, ray_schedulers, ray_trackers, ray_workers, schemas
from orchestrator.progress import Tail as ProgressTail
from orchestrator.provenance import code_version
from orchestrator.registry import Workload
from orchestrator.results import ABORTED, EARLY, FINISHED, STOPPED, ResultStore, StoreError, config_columns, report_frame
from orchestrator.spec import Experiment, Scaling, trial_key
from workloads.runtime import REPLAY_KEY, TABLE_KEY

DRIVER_RESOURCE = "train_driver"  # custom resource that Train driver trials hold instead of a CPU
DRIVER_SLOTS = 64  # how many driver trials one node may host (they only wait on their workers)
CPU_NODE_RESOURCE = "cpu_node"  # declared by CPU-only node types (as many as their CPUs): single-process trials' home
CPU_FALLBACK_ENV = "ORCHESTRATOR_ALLOW_CPU_FALLBACK"  # "1": GPU nodes without CUDA train on CPU (gloo), rows say so
_TUNE_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "date", "time_since_restore",
    "timesteps_since_restore", "iterations_since_restore", "config", "checkpoint_dir_name", "node_ip",
    "hostname", "pid", "episodes_total", "timesteps_total", "trial_id", "experiment_tag", "done",
    "should_checkpoint", "__duplicate__", "experiment_id", "checkpoint_path", TABLE_KEY, REPLAY_KEY,
}


_FAILED: dict[str, Exception] = {}  # experiment key -> the write error that stops it (see StopOnFailure)
_WATCHERS: dict = {}  # experiment key -> its ray_cluster.Watcher, told of every result


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


def start(address: str | None = None, dashboard: bool = True) -> Session:
    """Join `address`, else the cluster named by $RAY_ADDRESS (as Ray's own tools do: inside a Ray
    job it names the job's cluster), else start a local Ray."""
    import ray

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
    return Session(owned=True, dashboard_url=f"http://{url}" if url else None, joined=bool(address))


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


def stop(session: Session) -> None:
    import ray

    if session.owned and ray.is_initialized():
        ray.shutdown()


def worker_resources(scaling: Scaling) -> dict[str, float]:
    """What one Train worker (or one single-process trial) asks of a node."""
    return {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})}


def _need_text(scaling: Scaling) -> str:
    return (f"{scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPU"
            f"{f' + {scaling.gpus_per_worker:g} GPU' if scaling.use_gpu else ''}")


def single_process_resources(scaling: Scaling, joined: bool) -> tuple[dict[str, float], int | None]:
    """(what one single-process trial asks for, how many to run at once) on this cluster.

    On an autoscaling cluster GPU nodes have CPUs too, and a CPU demand the head and the CPU types
    cannot meet at that moment (Tune briefly asks for one trial more than it runs while it swaps
    trials) made the autoscaler start a GPU node for minimax. Where the node types declare
    `cpu_node` (cluster.yaml: the head and every CPU type, as many as their CPUs; never a GPU
    type) the trials ask for it too, so no GPU node can ever satisfy them; concurrency is what
    those types hold. Node types unknown (a local Ray, a cluster without the config): CPUs only,
    no limit."""
    from orchestrator import ray_cluster

    need = {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})}
    known = ray_cluster.cluster_node_types(joined)
    if known is None:
        if not joined and ray_cluster.slots_now(need) < 1:  # a local Ray never grows: Tune would wait forever
            raise _machine_too_small(scaling, "lower cpus_per_worker, set use_gpu=false")
        return need, None
    types, max_workers = known
    if scaling.use_gpu:  # GPU work: GPU nodes are what it needs
        return need, max(1, ray_cluster.max_worker_slots(types, max_workers, need))
    cpu_types = [t for t in types if not t.resources.get("GPU")]
    if any(t.resources.get(CPU_NODE_RESOURCE) for t in types):
        need[CPU_NODE_RESOURCE] = scaling.cpus_per_worker
        cpu_types = [t for t in types if t.resources.get(CPU_NODE_RESOURCE)]
    return need, max(1, ray_cluster.max_worker_slots(cpu_types, max_workers, need))


def _max_concurrent(scaling: Scaling, joined: bool, say: Callable[[str], None]) -> int | None:
    """How many Train trials to run at once so that they never starve each other: what the cluster
    can hold at its largest (autoscaling: its node types and max_workers), else what it holds now.
    None: unknown (an autoscaler whose config cannot be read): trials queue for nodes."""
    from orchestrator import ray_cluster

    if scaling.max_concurrent_trials:
        return scaling.max_concurrent_trials
    need = worker_resources(scaling)
    known = ray_cluster.cluster_node_types(joined)
    if known is not None:
        types, max_workers = known
        fits = ray_cluster.max_worker_slots(types, max_workers, need) // scaling.num_workers
        if fits < 1:
            shapes = "; ".join(f"{t.name}: " + ", ".join(f"{v:g} {k}" for k, v in t.resources.items()) for t in types)
            raise BackendError(f"one trial needs {_need_text(scaling)}, and no node type of this cluster can ever "
                               f"provide that ({shapes}; max_workers {max_workers}): lower num_workers / cpus_per_worker "
                               "or add a node type")
        return fits
    fits = ray_cluster.slots_now(need) // scaling.num_workers
    if fits >= 1:
        return fits
    resources = __import__("ray").cluster_resources()
    if joined:  # the cluster may grow (an autoscaler we cannot see into): let trials queue, and say so
        say(f"the cluster cannot hold one trial yet ({_need_text(scaling)}; it has {resources.get('CPU', 0):g} CPU, "
            f"{resources.get('GPU', 0):g} GPU now): trials wait for nodes (max_wait_s={scaling.max_wait_s:g})")
        return None
    raise _machine_too_small(scaling, "lower num_workers / cpus_per_worker")


def _machine_too_small(scaling: Scaling, what: str) -> BackendError:
    """One line: a local Ray that can never hold one trial."""
    resources = __import__("ray").cluster_resources()
    return BackendError(f"one trial needs {_need_text(scaling)}; this machine has {resources.get('CPU', 0):g} CPU, "
                        f"{resources.get('GPU', 0):g} GPU: {what}, or join a cluster with --address")


# ---- the driver side -----------------------------------------------------------------------------

def _collector_classes():
    from ray import tune

    class Collector(tune.Callback):
        """Turns results into rows and writes them. A write that fails (disk full, read-only) is kept
        in `failure` rather than raised (Tune would wrap it in a traceback); the stopper below then
        ends the run and run_experiment raises it as one line."""

        def __init__(self, key: str, on_result: Callable, on_end: Callable, on_start: Callable) -> None:
            self.key, self.on_result, self.on_end, self.on_start = key, on_result, on_end, on_start
            self.failure: StoreError | None = None

        def _guard(self, fn, *args) -> None:
            if self.failure is None:
                try:
                    fn(*args)
                except StoreError as exc:
                    self.failure = _FAILED[self.key] = exc

        def on_trial_result(self, iteration, trials, trial, result, **info):
            _progress(self.key)
            metrics = {k: v for k, v in result.items() if k not in _TUNE_KEYS}
            self._guard(self.on_result, trial.config["trial"]["index"], metrics, result.get(TABLE_KEY, "steps"), result,
                        trial.trial_id)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._guard(self.on_start, trial.config["trial"]["index"], trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._guard(self.on_end, trial.config["trial"]["index"], trial.trial_id, FINISHED, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._guard(self.on_end, trial.config["trial"]["index"], trial.trial_id, "ERROR", _trial_error(trial))

    class StopOnFailure(tune.stopper.Stopper):
        """Stops every trial once the collector failed. Holds only a key into _FAILED: Tune pickles
        its stopper with the experiment state, and the collector (closures over this run) is not."""

        def __init__(self, key: str) -> None:
            self.key = key

        def __call__(self, trial_id, result) -> bool:
            return self.key in _FAILED

        def stop_all(self) -> bool:
            return self.key in _FAILED

    return Collector, StopOnFailure


def tensorboard_view(study_dir, run_id: str, attempts: dict[str, str], say: Callable[[str], None]) -> None:
    """`<study>/tensorboard/<run_id>/<trial name>` -> each trial's TensorBoard folder (relative links):
    `tensorboard --logdir results/gan/tensorboard/<run_id>` shows a run's trials side by side, by name."""
    view = study_dir / "tensorboard" / run_id
    try:
        view.mkdir(parents=True, exist_ok=True)
        for name, attempt in attempts.items():
            link = view / str(name).replace("/", "_")
            if not link.is_symlink():
                link.symlink_to(os.path.join("..", "..", "artifacts", attempt, "tensorboard"))
    except OSError as exc:  # storage without symlinks: the artifacts' own folders still hold every log
        say(f"no TensorBoard view of this run ({exc.strerror or exc}): use --logdir {study_dir / 'artifacts'}")


def _progress(key: str) -> None:
    """Tell the experiment's watcher that a trial reported. A module-level function: Tune pickles
    the collector (a local class, so by value, with the globals its methods name); this is
    pickled by reference, and _WATCHERS (whose watchers hold threads) never travels."""
    watcher = _WATCHERS.get(key)
    if watcher is not None:
        watcher.progress()


def _say(line: str) -> None:
    print(line)


def _trial_error(trial) -> str:
    """The real cause of a failed trial, one line (e.g. the NCCL error of a Train worker), from the
    exception Tune pickled next to the trial, else the last line of its error text."""
    import cloudpickle

    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as fh:
                return ray_workers.root_cause(cloudpickle.load(fh))
        if trial.error_file and os.path.exists(trial.error_file):
            lines = [line for line in open(trial.error_file).read().splitlines() if line.strip()]
            return lines[-1].strip() if lines else "trial failed"
    except Exception as exc:  # an unreadable error must not hide that the trial failed
        return f"trial failed (its error could not be read: {type(exc).__name__})"
    return "trial failed"


@dataclass
class _TrialRows:
    tables: dict[str, list[pd.DataFrame]] = dataclasses.field(default_factory=dict)  # table -> reports
    wall_time_s: float = float("nan")
    last_step: dict = dataclasses.field(default_factory=dict)  # the latest per-step metrics (a stopped trial's row)

    def frame(self, table: str) -> pd.DataFrame | None:
        frames = [f for f in self.tables.get(table, []) if len(f.columns)]
        return pd.concat(frames, ignore_index=True) if frames else None


def run_experiment(
    exp: Experiment,
    workload: Workload,
    store: ResultStore,
    run_id: str,
    done_before: pd.DataFrame | None = None,
    fresh: bool = False,
    storage: str | None = None,
    progress: Callable[[str], None] | None = None,
    joined: bool = False,
    trackers: list[str] = (),
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Run every trial of `exp` except those in `done_before` (the caller's store.finished rows; none
    with `fresh`); write rows as they arrive; return this run's trial rows and the kept ones."""
    from ray import tune

    progress = progress or _say  # never `print` itself: Tune pickles the callbacks (closures over it), and
    # Ray may replace builtins.print (tqdm_ray), after which the original no longer pickles by reference
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our tables replace Tune's logs
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter honours verbose=0: no boxes
    # Ctrl-C raises KeyboardInterrupt at once (the CLI stops Ray and exits 130) instead of Tune's
    # graceful stop, after which fit() returns as if done and the next study would start
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # a scheduler's metric (e.g. ASHA's val_rsum) is in the per-epoch reports only, not in the final ones
    # (the trial's row, CLIP's prompts): Tune would fail the trial on those
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # ...so the ResultGrid that fit() returns finds no result files: it says so per trial; we never read it
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    done_before = pd.DataFrame() if done_before is None or fresh else done_before
    skip = set(done_before["trial_key"]) if len(done_before) else set()
    points = list(zip(exp.trial_points(), exp.trial_names()))
    pending = [(o, c, n) for (o, c), n in points if trial_key(c) not in skip]  # (sweep values, config, name)
    params, configs, names = ([p[i] for p in pending] for i in range(3))
    if skip:
        progress(f"[{exp.study}] {len(points) - len(configs)}/{len(points)} trials already finished: "
                 f"kept{'' if configs else ', nothing to run'} (--fresh reruns them)")
    if not configs:
        return done_before
    keys = [trial_key(c) for c in configs]
    # a trial's files, Train run and artifacts are named by its config digest, so that a rerun of an
    # interrupted run finds them (Train V2 resumes a run from its storage by name); --fresh starts anew
    bases = [f"{key}-{run_id}" if fresh else key for key in keys]
    rows = {i: _TrialRows() for i in range(len(configs))}
    written: list[pd.DataFrame] = []

    version = code_version()

    def schema(table: str):  # every part of a table gets its whole schema (schemas.py)
        return schemas.table_schema(table, workload.columns.get(table, {}), configs[0], workload.row_exclude)

    def ids(index: int, trial_id: str) -> dict:
        # attempt: the name of the trial's files (its key; key-run_id under --fresh): the steps of a
        # trial row are the steps of its attempt, across the runs that resumed it
        return {"run_id": run_id, "study": exp.study, "trial_id": trial_id, "trial_key": keys[index],
                "trial_name": names[index], "attempt": bases[index], "code_version": version}

    def on_result(index: int, metrics: dict, table: str, result: dict, trial_id: str) -> None:
        frame = report_frame(metrics)
        rows[index].wall_time_s = float(result.get("time_total_s", float("nan")))
        if table == "steps" and workload.step_key in frame and len(frame) == 1:
            # one file per (trial, step): a step reported again (a retried epoch) replaces its file;
            # a replayed one (see ray_workers._TrainRuntime.restore) only fills in a missing file
            step = int(frame[workload.step_key].iloc[0])
            if result.get(REPLAY_KEY) and store.exists(exp.study, "steps", f"{bases[index]}-{step:06d}"):
                return
            store.write(exp.study, "steps", f"{bases[index]}-{step:06d}", frame.assign(**ids(index, trial_id)),
                        schema("steps"))
            rows[index].last_step = frame.iloc[0].to_dict()
            shown = {k: frame[k].iloc[0] for k in (workload.metric, *(workload.early_stop or ())[:1], "loss", "loss_d",
                                                   "loss_g") if k in frame}
            total = int(getattr(configs[index], "epochs", 0) or 0)
            seconds = float(frame["epoch_time_s"].iloc[0]) if "epoch_time_s" in frame else float("nan")
            left = f"  (~{seconds * (total - step):.0f} s left)" if total and seconds == seconds and step < total else ""
            progress(f"[{exp.study}] {names[index]} {workload.step_key} {step}{f'/{total}' if total else ''}: "
                     + "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if v == v) + left)
            return
        rows[index].tables.setdefault(table, []).append(frame)

    def on_end(index: int, trial_id: str, status: str, error: str | None) -> None:
        got = rows.pop(index, None) or _TrialRows()
        if status == FINISHED and "trials" not in got.tables:  # ended before its final report:
            if trial_id not in ray_schedulers.EARLY_STOPPED:  # ...stopped by us (a write failed, no nodes came)
                status, error = ABORTED, error or "stopped before its final report (the run was stopped)"
            else:  # ...or by ASHA: its last per-step metrics are its result
                step = got.last_step.get(workload.step_key, "?")
                status, error = STOPPED, f"{EARLY} {exp.scheduler} after {workload.step_key} {step}"
                got.tables["trials"] = [pd.DataFrame([{k: v for k, v in got.last_step.items()
                                                       if k not in (workload.step_key, TABLE_KEY)}])]
        cfg = config_columns(dataclasses.asdict(configs[index]), workload.row_exclude)
        for table in sorted(set(got.tables) - {"trials"}):  # steps and any extra tables, before the trial row
            frame = got.frame(table)
            if frame is not None:
                store.write(exp.study, table, bases[index], frame.assign(**ids(index, trial_id)), schema(table))
        trials = got.frame("trials")
        trials = pd.DataFrame([{}]) if trials is None else trials
        for column, value in cfg.items():
            if column not in trials.columns:
                trials[column] = value
        trials = trials.assign(**ids(index, trial_id), status=status, error=error, wall_time_s=got.wall_time_s)
        store.write(exp.study, "trials", bases[index], trials, schema("trials"))
        written.append(trials)
        done = len(configs) - len(rows)
        tail = f"  error: {error}" if error else ""
        progress(f"[{exp.study}] trial {done}/{len(configs)} {status.lower()}: {names[index]} ({trial_id}, "
                 f"{len(trials)} rows){tail}")

    storage = storage or str((store.root / "_ray").resolve())
    artifact_dirs = [str((store.root / exp.study / "artifacts" / base).resolve()) for base in bases]
    say = lambda line: progress(f"[{exp.study}] {line}")  # noqa: E731
    if workload.distributed:  # the Train studies log TensorBoard (also when a trial runs single-process)
        kept = done_before.drop_duplicates("trial_key") if len(done_before) and "attempt" in done_before else None
        kept_names = {} if kept is None else dict(zip(
            kept["trial_name"].fillna(kept["trial_key"]) if "trial_name" in kept else kept["trial_key"], kept["attempt"]))
        tensorboard_view(store.root / exp.study, run_id, {**kept_names, **dict(zip(names, bases))}, say)
    # the same for every trial (checked in preflight). PBT trials are plain single-process Tune trials with
    # Tune checkpoints, as in Ray's PBT DCGAN example: PBT exploits by restarting a trial from another's
    # checkpoint, which a Tune trial driving a TorchTrainer does not hold (its reports carry the Train
    # checkpoint's path as a metric), so PBT would skip every exploit without an error
    pbt = exp.scheduler == "pbt"
    distributed = workload.runs_distributed(configs[0]) and not pbt
    # read here, in the CLI's process: actors on a cluster do not inherit its environment
    fallback = os.environ.get(CPU_FALLBACK_ENV, "") == "1"
    if distributed:
        trainable = tune.with_resources(
            tune.with_parameters(ray_workers.train_driver, module=workload.module, configs=configs, artifact_dirs=artifact_dirs,
                                 names=[f"{exp.study}-{b}" for b in bases], scaling=exp.scaling, storage=storage,
                                 allow_cpu_fallback=fallback),
            {"cpu": 0, DRIVER_RESOURCE: 1},  # the driver only waits on its TorchTrainer's workers
        )
        concurrent = _max_concurrent(exp.scaling, joined, say)
    else:
        need, fits = single_process_resources(exp.scaling, joined)
        trainable = tune.with_resources(
            tune.with_parameters(ray_workers.function_trial, module=workload.module, configs=configs, artifact_dirs=artifact_dirs,
                                 use_gpu=exp.scaling.use_gpu, allow_cpu_fallback=fallback, checkpoints=pbt),
            {"cpu": need.pop("CPU"), "gpu": need.pop("GPU", 0), **need},
        )
        concurrent = exp.scaling.max_concurrent_trials or fits
    collector_cls, stopper_cls = _collector_classes()
    def on_start(index: int, trial_id: str) -> None:
        where = f"{exp.scaling.num_workers} Train workers" if distributed else "one process"
        progress(f"[{exp.study}] {names[index]}: started ({trial_id}, {where})")

    collector = collector_cls(f"{exp.study}-{run_id}", on_result, on_end, on_start)
    stopper = stopper_cls(collector.key)
    types = ray_cluster.cluster_node_types(joined)
    watcher = ray_cluster.Watcher(say, exp.scaling.max_wait_s, types[0] if types else None,
                                  on_give_up=lambda reason: _FAILED.setdefault(collector.key, BackendError(f"{exp.study}: {reason}")))
    _WATCHERS[collector.key] = watcher  # by key: Tune pickles its callbacks, and a watcher holds a thread
    tuner = tune.Tuner(
        trainable,
        # each trial's real values (what its sweep set, e.g. {"lr": 0.0002}) with its index into `configs`:
        # Tune's trial configs, results and dashboard show them; the trial applies them (ray_workers.trial_config)
        param_space={"trial": tune.grid_search([{"index": i, **o, **({f: getattr(configs[i], f) for f in workload.pbt}
                                                                     if pbt else {})}
                                                for i, o in enumerate(params)])},
        tune_config=tune.TuneConfig(
            reuse_actors=not distributed,
            max_concurrent_trials=concurrent,
            scheduler=ray_schedulers.build(exp, workload, configs),
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: names[trial.config["trial"]["index"]],  # e.g. gan-lr=0.0002,beta1=0.5
        ),
        run_config=tune.RunConfig(
            name=f"{exp.study}-{run_id}",
            storage_path=storage,
            # PBT trials checkpoint every epoch and all are kept: an exploit restores the donor's checkpoint of
            # the moment PBT decided, and the donor may have written (and, with num_to_keep=2, deleted) more
            # by the time the trial restarts (measured: "Could not recover from checkpoint ... anymore")
            callbacks=[collector, *ray_trackers.callbacks(
                list(trackers), exp.study, run_id, store.root, artifact_dirs=artifact_dirs, names=names,
                params=[{**config_columns(dataclasses.asdict(c), workload.row_exclude), "trial_name": n, "trial_key": k}
                        for c, n, k in zip(configs, names, keys)], tracking_uri=tracking_uri,
                step_key=workload.step_key, say=say)],
            stop=stopper,
            verbose=0,
        ),
    )
    started = time.perf_counter()
    try:
        with watcher, ProgressTail(say, artifact_dirs, names):
            tuner.fit()
    finally:
        failure = _FAILED.pop(collector.key, None)
        _WATCHERS.pop(collector.key, None)
    if failure is not None:  # a table write failed, or trials waited past max_wait_s
        raise failure
    progress(f"[{exp.study}] {len(configs)} trials in {time.perf_counter() - started:.1f}s")
    return pd.concat([done_before, *written], ignore_index=True) if written or len(done_before) else pd.DataFrame()
