"""Single-process Tune trials (minimax, frozen-encoder CLIP, every PBT trial): the runtime a
workload's loop gets there, the trial function, and the Tune checkpoints PBT needs.

Under PBT a trial reports a Tune checkpoint each epoch (its state, the epoch's row, and an origin:
trial, epoch, state digest, the values Tune holds for it); an exploit restarts a trial from a better
one's checkpoint. Those checkpoints live in one Tune experiment per study (`<study>-pbt`) in one
folder per trial attempt (its key), so a resubmitted run finds them: a trial that Tune starts with
no checkpoint of its own resumes from its attempt's latest earlier checkpoint (`latest_checkpoint`,
found by the driver before the run), with the hyperparameters PBT had moved it to, and replays that
epoch's row (written only where missing). Imported inside Ray actors and by the engine's driver.
"""

from __future__ import annotations

import hashlib
import json
import socket
import tempfile
import time
from pathlib import Path

from orchestrator import progress as progress_file
from orchestrator.engine.actors import IDENTITY, REPORT_FILE, gpu_memory, software, trial_config, where
from workloads.runtime import REPLAY_KEY, RESUMED_KEY, STATE_FILE, TABLE_KEY, SingleProcess, load_state, save_state, table_of

ORIGIN_FILE = "origin.json"  # a Tune checkpoint's trial, epoch, state digest and Tune values


def digest(directory: Path) -> str:
    """The state file's digest: a trial that exploits a checkpoint reports the same one."""
    return hashlib.sha1((directory / STATE_FILE).read_bytes()).hexdigest()[:16]


def set_aside(experiment: Path, attempt: str, run_id: str) -> Path:
    """Move an earlier run's folder of a trial attempt to `<attempt>.before-<run_id>` (driver side,
    before the run); returns the experiment folder."""
    folder = experiment / attempt
    if folder.is_dir():
        folder.rename(experiment / f"{attempt}.before-{run_id}")
    return experiment


def latest_checkpoint(experiment: Path, attempt: str) -> str | None:
    """The most recently saved complete Tune checkpoint of a trial attempt, in any earlier run's folder
    (the latest, not the highest epoch: an exploit may take a trial back to a donor's earlier epoch).
    Complete: its state's digest is its origin's, and its row parses (a copy cut short is skipped)."""
    best: tuple[float, str] | None = None
    for origin_file in [*experiment.glob(f"{attempt}/checkpoint_*/{ORIGIN_FILE}"),
                        *experiment.glob(f"{attempt}.before-*/checkpoint_*/{ORIGIN_FILE}")]:
        try:
            origin = json.loads(origin_file.read_text())
            json.loads((origin_file.parent / REPORT_FILE).read_text())
            complete = digest(origin_file.parent) == origin["digest"] and isinstance(origin.get("epoch"), int)
        except (OSError, ValueError, KeyError):
            continue
        saved = float(origin.get("saved_at", origin_file.stat().st_mtime))
        if complete and (best is None or saved > best[0]):
            best = (saved, str(origin_file.parent))
    return best[1] if best else None


def origin_values(checkpoint: str, fields) -> dict:
    """The values Tune held for the trial when it saved `checkpoint`, of `fields` (PBT's perturbed ones)."""
    values = json.loads((Path(checkpoint) / ORIGIN_FILE).read_text()).get("values", {})
    return {f: values[f] for f in fields if f in values}


class TuneRuntime(SingleProcess):
    """Runtime of a single-process trial: reports go straight to Tune. With `use_gpu` it trains on
    the GPU Ray assigned; a node that declares one without usable CUDA fails the trial with one
    line, or, with the CPU fallback allowed, trains on its CPU and the rows say so."""

    def __init__(self, artifact_dir: str, use_gpu: bool = False, allow_cpu_fallback: bool = False,
                 checkpoints: bool = False, values: dict | None = None, earlier: str | None = None) -> None:
        self.artifact_dir = artifact_dir
        # checkpoints: Tune checkpoints, for schedulers that move state between trials (PBT); without
        # them (the default) single-process trials are short and an interrupted one reruns
        self.checkpoints, self.restored = checkpoints, {}
        self.values, self.earlier = values or {}, earlier  # Tune's values for the trial; an earlier run's checkpoint
        self.device, name, fallback = "cpu", "cpu", False
        if use_gpu:
            import ray
            import torch

            if torch.cuda.is_available():
                self.device, name = "cuda", torch.cuda.get_device_name(0)  # Ray sets CUDA_VISIBLE_DEVICES
            elif allow_cpu_fallback:
                fallback = True
            else:
                raise RuntimeError(f"node {ray.get_runtime_context().get_node_id()} ({socket.gethostname()}) declares a "
                                   "GPU but torch cannot use it (set ORCHESTRATOR_ALLOW_CPU_FALLBACK=1 to train on its CPU)")
        self.software = software(self.device, name, 1, sync_bn=False, cpu_fallback=fallback)

    def report(self, metrics, final: bool = False, checkpoint=None, table: str | None = None) -> None:
        from ray import tune

        # a table's columns as lists: Tune formats every result into debug lines whether or not they are
        # logged (TuneController._process_trial_results), and numpy's repr of minimax's 128-lane arrays
        # cost the driver ~10 ms a trial; a list's repr is C
        columns = {k: v.tolist() if hasattr(v, "tolist") and getattr(v, "ndim", 0) else v for k, v in metrics.items()}
        payload = {**columns, **(self.software if final else {}), **where(), **gpu_memory(self.device),
                   TABLE_KEY: table_of(final, table)}
        if checkpoint is None or not self.checkpoints:
            tune.report(payload)
            return
        payload.update(self.restored)  # the first report after a restore says what it restored
        self.restored = {}
        with tempfile.TemporaryDirectory() as tmp:
            save_state(checkpoint, tmp)
            payload["checkpoint_digest"] = digest(Path(tmp))
            context = tune.get_context()
            origin = {"trial_id": context.get_trial_id(), "trial_name": context.get_trial_name(),
                      "epoch": metrics.get("epoch"), "digest": payload["checkpoint_digest"], "values": self.values,
                      "saved_at": time.time()}
            (Path(tmp) / ORIGIN_FILE).write_text(json.dumps(origin, default=float))
            (Path(tmp) / REPORT_FILE).write_text(json.dumps(payload, default=float))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))

    def say(self, line: str, progress: tuple | None = None) -> None:
        """A progress line the driver prints, with the step's count (what, done, total) if it has one (progress.py)."""
        progress_file.append(self.artifact_dir, line, progress)

    def restore(self):
        """The state of the trial's Tune checkpoint, if any: its own after a restart (PBT pauses and
        resumes trials when they outnumber the slots), the better trial's it exploits under PBT (the
        next report names that trial and epoch: restored_from, with the state's digest), or, with none
        in this run, its latest from an earlier run (that epoch's row replayed)."""
        if not self.checkpoints:
            return None
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return self._resume_earlier()
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
            origin_file = Path(directory) / ORIGIN_FILE
            origin = json.loads(origin_file.read_text()) if origin_file.exists() else {}
            if origin.get("trial_id") != tune.get_context().get_trial_id():  # an exploit, not its own state
                self.restored = {"restored_from": f"{origin.get('trial_name')}@epoch {origin.get('epoch')}",
                                 "restored_digest": digest(Path(directory))}
        return state

    def _resume_earlier(self):
        if self.earlier is None:
            return None
        from ray import tune

        directory = Path(self.earlier)
        state = load_state(directory)
        # the row of the epoch it ends at: an earlier run killed between Tune persisting the checkpoint
        # and the driver writing the row lost it; the driver writes it only where that part is missing
        row = json.loads((directory / REPORT_FILE).read_text())
        tune.report({**row, REPLAY_KEY: True, RESUMED_KEY: "failure"})
        return state


def function_trial(params: dict, *, module: str, configs: list, artifact_dirs: list, use_gpu: bool = False,
                   allow_cpu_fallback: bool = False, checkpoints: bool = False,
                   earlier: list[str | None] | None = None) -> None:
    """A single-process trial. `earlier[i]`: trial i's latest checkpoint from an earlier run (PBT), used
    when Tune gives it none (the plan gave Tune the hyperparameters PBT had moved it to)."""
    import importlib

    from ray import tune

    index, config = trial_config(params, configs)  # under PBT, a resumed trial's moved values are Tune's (param_space)
    resume = earlier[index] if earlier and tune.get_checkpoint() is None else None
    values = {k: v for k, v in params["trial"].items() if k not in IDENTITY}  # PBT's fields
    runtime = TuneRuntime(artifact_dirs[index], use_gpu, allow_cpu_fallback, checkpoints, values, resume)
    importlib.import_module(module).train_loop(config, runtime)
