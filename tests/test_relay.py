"""orchestrator/engine/relay.py on real Tune: every report of a Train run reaches the Tune trial, in order,
from the trial's own thread, and the trial ends, also when fit() returns at once after its last report
(where Ray's TuneReportCallback could leave the trial waiting for ever: see relay.py). The reporting
side is relay.ToTrial as Train's controller calls it; only TorchTrainer.fit is stood in for."""

from __future__ import annotations


def trial(config):
    from orchestrator.engine import relay

    queue = relay.trial_queue()

    class Trainer:  # what TorchTrainer.fit does with the callback: after_report per report, in order
        def fit(self):
            callback = relay.ToTrial(queue)
            for i in range(config["reports"]):
                callback.after_report(None, [{"i": i, "reports": config["reports"]}], None)
            if config["fail"]:
                raise ValueError("the Train run failed")

    relay.fit_reporting(Trainer(), queue)


def run(tmp_path, fail: bool):
    """The three trials' results, and what Tune's driver received of each (reports -> the `i`s)."""
    from ray import tune

    class Received(tune.Callback):  # in this process: what reached Tune's controller, in order
        def __init__(self) -> None:
            self.by_trial: dict[int, list[int]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.by_trial.setdefault(trial.config["reports"], []).append(result["i"])

    received = Received()
    tuner = tune.Tuner(
        trial,
        param_space={"reports": tune.grid_search([1, 7, 40]), "fail": fail},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, time_budget_s=180),  # a hang fails, not blocks
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0, callbacks=[received],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    return tuner.fit(), received.by_trial


def test_every_report_reaches_tune_in_order_and_each_trial_ends(ray_session, tmp_path):
    results, received = run(tmp_path, fail=False)
    assert len(results) == 3 and not results.errors
    assert all(result.metrics["done"] for result in results)  # each ended (no time budget hit)
    assert received == {n: list(range(n)) for n in (1, 7, 40)}


def test_a_failed_fit_fails_the_trial_after_every_report_it_made(ray_session, tmp_path):
    results, received = run(tmp_path, fail=True)
    assert len(results.errors) == 3
    for result in results:
        assert "the Train run failed" in str(result.error)
    assert received == {n: list(range(n)) for n in (1, 7, 40)}
