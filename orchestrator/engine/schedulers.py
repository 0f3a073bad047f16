"""Tune's trial schedulers for `--scheduler`: ASHA (early stopping) and PBT (population based training).

Both act on the metric a study reports during training (registry.Workload.early_stop, per epoch),
and neither acts on a trial's last epoch or its final reports (the trial row, CLIP's prompts).
"""

from __future__ import annotations

from orchestrator.studies.registry import Workload
from orchestrator.studies.spec import Experiment
from workloads.runtime import TABLE_KEY


def build(exp: Experiment, workload: Workload, configs: list, early_stopped: set[str]):
    """Tune's trial scheduler for `exp.scheduler` (None: FIFO, every trial to its end).

    pbt: population based training on the same metric, perturbing `workload.pbt` (the GAN's lr).

    asha: asynchronous successive halving on the metric the trials report during training, at rungs
    of the step key (epochs 1, 2, 4, ...: grace period 1, reduction factor 2, up to the longest
    trial's epochs): a trial reaching a rung below the rung's top half so far is stopped. Where the
    metric comes only at some epochs (GAN: FID at sample epochs), a rung is judged at the next one.
    A trial at its last epoch is never stopped (ASHA stops trials that reach max_t, which would cut
    the final report, with the test evaluation, of every trial that ran to its end). The ids of the
    trials ASHA stops are added to `early_stopped` (their rows say STOPPED, not ABORTED)."""
    if exp.scheduler == "fifo":
        return None
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining, TrialScheduler

    metric, mode = workload.early_stop
    max_t = max(int(getattr(c, "epochs", 1)) for c in configs)
    step_key = workload.step_key

    def at_the_end(trial, result) -> bool:  # a final report, or the trial's own last epoch
        last = int(getattr(configs[trial.config["trial"]["index"]], "epochs", max_t))
        return result.get(TABLE_KEY, "steps") != "steps" or result.get(step_key, 0) >= last

    if exp.scheduler == "pbt":
        class PBT(PopulationBasedTraining):
            def on_trial_result(self, tune_controller, trial, result):
                if at_the_end(trial, result):
                    return TrialScheduler.CONTINUE  # nothing to gain from exploiting after the last epoch
                return super().on_trial_result(tune_controller, trial, result)

            def _get_new_config(self, trial, trial_to_clone):
                # PBT clones the better trial's whole config, then perturbs: here only the perturbed fields
                # travel; the trial keeps its identity (its index into `configs`: its rows, artifacts, name)
                # and its other settings
                new_config, operations = super()._get_new_config(trial, trial_to_clone)
                own = {k: v for k, v in trial.config["trial"].items() if k not in workload.pbt}
                return {**new_config, "trial": {**new_config["trial"], **own}}, operations

        # at every epoch that reports the metric (GAN: the sample epochs): the bottom quarter of the population
        # (at least one trial of two) restarts from a top-quarter trial's checkpoint, its fields perturbed
        # (x0.8 or x1.2, or resampled log-uniformly within 10x of the sweep's range with probability 0.25)
        mutations = {"trial": {f: tune.loguniform(min(getattr(c, f) for c in configs) / 10,
                                                  max(getattr(c, f) for c in configs) * 10) for f in workload.pbt}}
        return PBT(time_attr=step_key, metric=metric, mode=mode, perturbation_interval=1,
                   hyperparam_mutations=mutations, require_attrs=False)

    class ASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if at_the_end(trial, result):
                return TrialScheduler.CONTINUE  # the final reports, and the last epoch: let the trial end
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                early_stopped.add(trial.trial_id)
            return decision

    return ASHA(time_attr=step_key, metric=metric, mode=mode, max_t=max_t, grace_period=1, reduction_factor=2)
