"""The Ray engine: the only code that imports Ray.

Driver side (the CLI's process): session.py starts or joins Ray; run.py runs one experiment as one
Tune run (plan.py names its pending trials, trainable.py builds what Tune runs and asks of the
cluster, sink.py turns results into rows and Parquet parts); capacity.py sizes trials to the cluster
and watches what waiting trials wait for; schedulers.py and trackers.py are Tune's ASHA/PBT and
MLflow/W&B callbacks. Inside-actor side: actors.py (the runtimes a workload's loop gets under Tune
and Train, the trial functions). Ray is imported lazily: `--help` and `list` never load it.
"""
