"""Train's reports -> the Tune trial that fits the TorchTrainer, handed over by the trial's own thread.

Ray's TuneReportCallback (ray/tune/integration/ray_train.py) puts each report of the Train run on a
one-slot queue actor, which the trial actor's *main* thread moves into Tune's one-slot result queue
(ray/train/_internal/session.py, `_get_result_from_queues` -> `report`). When `fit()` returns while
the last report still sits in that queue actor, the function's end marker (RESULT_DUPLICATE, put by
the trial's runner thread) fills the result queue first, and the main thread, that queue's only
consumer, blocks for ever putting the last report behind it: the trial never ends. Seen in Ray 2.60
with four GAN trials packed on a reclaimed node (tests/test_spot.py): every Train run FINISHED, one or
two Tune trials hung, py-spy showing their main threads in `Queue.put` under `_get_result_from_queues`.

Here the reports travel through a queue of our own (on this node: it dies with the trial, not with a
reclaimed worker node) to the runner thread, which calls `tune.report` for each one while `fit()`
runs in a helper thread: one thread reports, in order, and the end marker comes after the last report.
"""

from __future__ import annotations

import threading

from ray.train.v2.api.callback import UserCallback


END = "orchestrator: fit() returned"  # put after fit()'s last report: the relay's last item


class ToTrial(UserCallback):
    """Runs in Train's controller: each report's metrics (the first reporting rank's, as
    TuneReportCallback sends; with the checkpoint's path where it saved one) onto the trial's queue;
    waits while the trial has not taken the previous one (one slot: Train's pace stays Tune's)."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        item = dict(metrics[0])
        if checkpoint:
            item["checkpoint_path"] = checkpoint.path
        self.queue.put(item)


def trial_queue():
    """A one-slot queue actor on this trial's node, owned by the trial (it goes with it)."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(1, actor_options={"num_cpus": 0, "scheduling_strategy": here})


def fit_reporting(trainer, queue) -> None:
    """`trainer.fit()` in a helper thread; every report it makes (through ToTrial) handed to Tune from
    this thread, in order, the last before this returns: the helper puts END after fit() returns, and
    Train's controller put the last report before fit() could return. Raises what fit() raised. Tune
    stopping the trial (ASHA, a failed run) ends this loop inside tune.report; the trial's actor,
    and with it the Train run it owns, then goes."""
    from ray import tune

    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # raised below, in the trial's thread
            failure.append(exc)
        finally:
            queue.put(END)

    threading.Thread(target=fit, name="orchestrator-train-fit", daemon=True).start()
    while (item := queue.get()) != END:
        tune.report(item)
    if failure:
        raise failure[0]
