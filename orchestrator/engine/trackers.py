"""Experiment trackers through Ray's own integrations: `--tracker mlflow` and `--tracker wandb`.

Both are Tune callbacks on the driver: each trial becomes one tracker run, named like the trial
(`gan-lr=0.0002,beta1=0.5`), with the trial's whole config as params (Ray's callbacks log only Tune's
trial config, which here holds the trial's index, name and PBT's fields), every reported result as metrics per step (GAN
and CLIP: per epoch), and the trial's images (GAN sample grids, CLIP prompt grids) when it ends:
MLflow artifacts under samples/ and prompts/, W&B images under the same keys.

- MLflow: the tracking URI is `--tracking-uri`, else `$MLFLOW_TRACKING_URI`, else a local file store
  `<results>/mlruns` (MLflow >= 3 keeps its file store behind MLFLOW_ALLOW_FILE_STORE, set here for
  that default only). One MLflow experiment per study.
- W&B: offline unless `$WANDB_MODE` says otherwise (no network, no account): runs go to
  `<results>/wandb/wandb/offline-run-*`; `wandb sync <results>/wandb/wandb/offline-run-*` uploads them
  later. One W&B project per study, the run id as the group.
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKERS = ("mlflow", "wandb")
EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}  # tracker -> (module, pip extra)
IMAGE_DIRS = ("samples", "prompts")  # artifact subfolders of a trial sent to the tracker


def check_installed(trackers: list[str]) -> None:
    """Before Ray starts: each tracker's package is importable (else one line naming the extra)."""
    import importlib.util

    for tracker in trackers:
        module, extra = EXTRAS[tracker]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"--tracker {tracker} needs `pip install -e .[{extra}]`")


def callbacks(trackers: list[str], study: str, run_id: str, results: Path, params: list[dict], names: list[str],
              artifact_dirs: list[str], tracking_uri: str | None = None, step_key: str | None = None,
              say=print) -> list:
    """The Tune callbacks for `trackers`. `params[i]`, `names[i]`, `artifact_dirs[i]`: trial i's whole
    config (flat scalars), readable name and artifact folder (Tune's trial config holds i)."""
    out = []
    if "mlflow" in trackers:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (results / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        out.append(_mlflow_class()(params, artifact_dirs, step_key, tracking_uri=uri, experiment_name=study,
                                   tags={"orchestrator_run_id": run_id, "study": study}))
        say(f"MLflow: {uri} (experiment {study})")
    if "wandb" in trackers:
        folder = results.resolve() / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_MODE", "offline")  # Ray's callback asks for an API key unless offline
        out.append(_wandb_class()(params, names, artifact_dirs, project=study, group=run_id, dir=str(folder),
                                  mode=os.environ["WANDB_MODE"]))
        say(f"W&B ({os.environ['WANDB_MODE']}): {folder / 'wandb'} (project {study}, group {run_id})")
    return out


def _images(folder: Path) -> dict:
    """{"samples/epoch_004": (H, W, 3) uint8 array, "prompts/...": ...} of a trial's image folders."""
    import numpy as np
    from PIL import Image

    out = {}
    for sub in IMAGE_DIRS:
        for png in sorted((folder / sub).glob("*.png")) if (folder / sub).is_dir() else []:
            with Image.open(png) as image:
                out[f"{sub}/{png.stem}"] = np.asarray(image.convert("RGB"))
    return out


def _index(trial) -> int:
    return trial.config["trial"]["index"]


def _mlflow_class():
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowCallback(MLflowLoggerCallback):
        def __init__(self, params: list[dict], artifact_dirs: list[str], step_key: str | None, **kwargs) -> None:
            super().__init__(**kwargs)
            self.params, self.artifact_dirs, self.step_key = params, artifact_dirs, step_key

        def log_trial_result(self, iteration, trial, result) -> None:
            # the study's step (the epoch) as MLflow's step, not Tune's report count (which the trial's
            # extra reports and PBT's restarts shift); the trial's final row lands at its chosen epoch
            step = result.get(self.step_key) if self.step_key else None
            if step is None or trial not in self._trial_runs:
                return super().log_trial_result(iteration, trial, result)
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=result, step=int(step))

        def log_trial_start(self, trial) -> None:
            # Tune calls this at every (re)start of a trial's actor: under PBT after each exploit, with a
            # perturbed lr in its config, which MLflow refuses as a changed param ("Changing param values is
            # not allowed"). So params once per run (the trial's own); the lr per epoch is a metric.
            if trial in self._trial_runs:
                return
            super().log_trial_start(trial)  # the run, named by the trial, with Tune's trial config
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=self.params[_index(trial)])

        def log_trial_end(self, trial, failed: bool = False) -> None:
            from mlflow import MlflowClient

            folder = Path(self.artifact_dirs[_index(trial)])
            for sub in IMAGE_DIRS:  # the trial's images, under the same folder names as in the results
                if (folder / sub).is_dir():
                    MlflowClient(self.tracking_uri).log_artifacts(self._trial_runs[trial], str(folder / sub), sub)
            super().log_trial_end(trial, failed)

    return MLflowCallback


def _wandb_class():
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbCallback(WandbLoggerCallback):
        def __init__(self, params: list[dict], names: list[str], artifact_dirs: list[str], **kwargs) -> None:
            super().__init__(**kwargs)
            self.params, self.names, self.artifact_dirs = params, names, artifact_dirs

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            wandb_init_kwargs.update(config=self.params[_index(trial)], name=self.names[_index(trial)])
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

        def log_trial_end(self, trial, failed: bool = False) -> None:
            # the trial's images as one last result: Ray's callback turns (H, W, 3) arrays into wandb.Image
            images = _images(Path(self.artifact_dirs[_index(trial)]))
            if images and trial in self._trial_logging_actors:
                self.log_trial_result(0, trial, images)
            super().log_trial_end(trial, failed)

    return WandbCallback
