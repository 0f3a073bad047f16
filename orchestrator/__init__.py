"""ML experiment orchestrator: studies as typed specs, run on Ray Tune / Ray Train, results in Parquet."""
