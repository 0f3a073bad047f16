"""Overrides are parsed and checked before anything runs; tables are written whole or not at all."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.studies import resolve
from orchestrator.results import FORMAT_VERSION, MARKER, ResultStore, StoreError, read_table, report_frame
from orchestrator.studies import SpecError


def test_overrides_are_typed():
    (exp,) = resolve("minimax", "local", ["steps=500", "lr_max=0.3", "algorithms=gda,gd", "lrs=0.1, 0.2"])
    assert exp.config.steps == 500 and exp.config.lr_max == 0.3
    assert exp.config.algorithms == ("gda", "gd") and exp.config.lrs == (0.1, 0.2)
    (exp,) = resolve("minimax", "local", ["minimax.num_workers=2", "minimax.use_gpu=false"])
    assert exp.scaling.num_workers == 2 and exp.scaling.use_gpu is False


@pytest.mark.parametrize("study, pairs, message", [
    ("nope", [], "unknown study 'nope'"),
    ("minimax", ["stepz=5"], "unknown setting 'stepz'"),
    ("minimax", ["steps=abc"], "expected an integer"),
    ("minimax", ["steps=1.5"], "expected an integer"),
    ("minimax", ["lr_max=fast"], "expected a number"),
    ("minimax", ["lrs=0.1,-0.2"], "lr must be a finite number > 0"),
    ("minimax", ["steps=0"], "steps must be > 0"),
    ("minimax", ["lr_min=0"], "lr_min"),
    ("minimax", ["steps"], "expected KEY=VALUE"),
    ("all", ["steps=5"], "under 'run all' name the study"),
    ("all", ["gan9.steps=5"], "not a study being run"),
])
def test_bad_overrides_fail_with_one_clear_line(study, pairs, message):
    with pytest.raises(SpecError, match=message) as info:
        resolve(study, "local", pairs)
    assert "\n" not in str(info.value)


def test_trial_configs_chunk_the_grid_per_algorithm():
    (exp,) = resolve("minimax", "local", ["num_lrs=300", "algorithms=gda,gd"])
    configs = exp.trial_configs()
    assert {c.algorithms for c in configs} == {("gda",), ("gd",)}
    lrs = sorted(lr for c in configs if c.algorithms == ("gda",) for lr in c.lrs)
    assert np.allclose(lrs, exp.config.lr_grid())  # every lr exactly once per algorithm


def test_report_frame_expands_columnar_reports():
    frame = report_frame({"algorithm": "gda", "lr": np.array([0.1, 0.2]), "step": 3})
    assert frame.to_dict("records") == [
        {"algorithm": "gda", "lr": 0.1, "step": 3}, {"algorithm": "gda", "lr": 0.2, "step": 3}]
    assert len(report_frame({"loss": 1.5})) == 1
    with pytest.raises(ValueError):
        report_frame({"a": np.zeros(2), "b": np.zeros(3)})


def test_store_accumulates_parts_and_ignores_torn_temporaries(tmp_path):
    store = ResultStore(tmp_path)
    store.open_for_writing()
    store.write("s", "trials", "run1-a", pd.DataFrame({"run_id": ["run1"], "x": [1.0]}))
    store.write("s", "trials", "run2-a", pd.DataFrame({"run_id": ["run2"], "x": [2.0], "y": [3]}))
    # a writer killed mid-write leaves only a hidden temporary: readers never see it
    (store.table_dir("s", "trials") / ".run3-a.parquet.tmp").write_bytes(b"PAR1 torn")
    table = store.read("s", "trials")
    assert sorted(table["run_id"]) == ["run1", "run2"]
    assert table["y"].isna().sum() == 1  # schemas unified across runs
    assert len(pd.read_parquet(store.table_dir("s", "trials"))) == 2  # plain pandas reads the directory


def test_path_columns_are_stored_relative_and_read_under_the_current_root(tmp_path):
    """A "path" column (schemas.py) is written relative to the results root and read back absolute
    under wherever the folder now is; a row of an earlier version (absolute, its folder gone) is
    re-rooted at its study; a path outside the root (e.g. under --storage) stays as it was."""
    from orchestrator.results import schemas

    old = tmp_path / "old"
    store = ResultStore(old)
    store.open_for_writing()
    schema = schemas.table_schema("trials", {"generator_path": "path", "other": "str"})
    inside = str(old / "gan" / "artifacts" / "a" / "generator.pt")
    store.write("gan", "trials", "r1-a", pd.DataFrame({"run_id": ["r1"], "generator_path": [inside], "other": [inside]}),
                schema)
    store.write("gan", "trials", "r1-b", pd.DataFrame({"run_id": ["r1"], "generator_path": ["/elsewhere/g.pt"]}), schema)
    # an earlier version's part: no path metadata, an absolute path on the cluster
    store.write("gan", "trials", "r0-c", pd.DataFrame(
        {"run_id": ["r0"], "generator_path": ["/mnt/shared/results/gan/artifacts/c/generator.pt"]}))
    raw = read_table(store.table_dir("gan", "trials")).set_index("run_id")  # as stored
    assert raw.loc["r1", "generator_path"].tolist() == ["gan/artifacts/a/generator.pt", "/elsewhere/g.pt"]
    assert raw.loc["r1", "other"].iloc[0] == inside  # a "str" column is left alone
    (old / "gan" / "artifacts" / "c").mkdir(parents=True)
    new = tmp_path / "new"
    old.rename(new)
    paths = sorted(ResultStore(new).read("gan", "trials")["generator_path"])
    assert paths == sorted(["/elsewhere/g.pt", str(new / "gan/artifacts/a/generator.pt"),
                            str(new / "gan/artifacts/c/generator.pt")])


def test_constant_columns_are_written_like_the_frames_own(tmp_path):
    """store.write's `constants` (which trial and run: one value on every row, added as Arrow columns)
    give the part the file a frame holding them as columns gives: same types, paths made relative,
    a constant over a frame column of its name, NaN as null, an undeclared one inferred."""
    from orchestrator.results import schemas

    store = ResultStore(tmp_path)
    store.open_for_writing()
    schema = schemas.table_schema("trials", {"generator_path": "path", "lr": "float", "epochs": "int"})
    frame = pd.DataFrame({"lr": [1e-3, 2e-3, 3e-3], "status": ["x", "y", "z"]})
    constants = {"run_id": "r1", "trial_id": "t_1", "generator_path": str(tmp_path / "gan" / "g.pt"),
                 "epochs": 5, "status": "FINISHED", "wall_time_s": float("nan"), "extra": 7}
    store.write("gan", "trials", "by-constants", frame, schema, constants=constants)
    store.write("gan", "trials", "by-columns", frame.assign(**constants), schema)
    by_constants, by_columns = (pq.read_table(store.table_dir("gan", "trials") / f"{name}.parquet")
                                for name in ("by-constants", "by-columns"))
    assert by_constants.schema.equals(by_columns.schema) and by_constants.equals(by_columns)
    row = by_constants.to_pylist()[0]
    assert row["generator_path"] == "gan/g.pt" and row["status"] == "FINISHED" and row["wall_time_s"] is None
    assert by_constants.column("lr").to_pylist() == [1e-3, 2e-3, 3e-3] and row["extra"] == 7


def test_the_rows_a_run_returns_are_the_rows_it_wrote(ray_session, tmp_path):
    """RowSink.written(): the trial rows with their constant columns, as the parts hold them: a config
    column is a constant only for a trial whose row lacks it (a failed trial's empty row), and never
    replaces another trial's own value."""
    from orchestrator.engine.plan import TrialPlan
    from orchestrator.engine.sink import RowSink
    from orchestrator.results.store import FINISHED
    from orchestrator.studies import EXPERIMENTS, WORKLOADS
    from workloads.runtime import TABLE_KEY

    store = ResultStore(tmp_path)
    store.open_for_writing()
    exp = EXPERIMENTS["gan"]["local"].with_sweep({"lr": "1e-4,2e-4,3e-4"})
    plan = TrialPlan.make(exp, WORKLOADS["gan"], store, "20261207-000000-0000", None, False, str(tmp_path / "_ray"))
    sink = RowSink(plan, store, lambda line: None)
    for i, own_lr in ((0, 5e-5), (1, None)):  # trial 0 reports its own lr; trial 1 fails before its row
        sink.started(i, f"t_{i}")
        if own_lr is not None:
            sink.result(i, f"t_{i}", {"lr": own_lr, "fid": 100.0 + i, TABLE_KEY: "trials"})
        sink.ended(i, f"t_{i}", FINISHED if own_lr else "ERROR", None if own_lr else "boom")
    rows = sink.written().set_index("trial_id")
    stored = store.read("gan", "trials").set_index("trial_id")
    assert rows.loc["t_0", "lr"] == 5e-5 and rows.loc["t_1", "lr"] == plan.configs[1].lr  # own value; the config's
    assert list(rows["status"]) == ["TERMINATED", "ERROR"] and rows.loc["t_1", "error"] == "boom"
    for column in ("lr", "status", "run_id", "trial_key", "fid"):  # what the run returns is what it stored
        pd.testing.assert_series_equal(rows[column], stored.loc[rows.index, column], check_dtype=False)


def test_store_refuses_unwritable_and_foreign_directories(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not writable"):
        ResultStore(blocker / "results").open_for_writing()
    (tmp_path / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(StoreError, match="results format"):
        ResultStore(tmp_path).open_for_writing()


def test_data_and_cache_dirs_become_absolute_in_the_driver(monkeypatch, tmp_path):
    # Ray workers run in their own directory: a relative ORCHESTRATOR_DATA_DIR must be fixed before them
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORCHESTRATOR_DATA_DIR", "../data")
    monkeypatch.setenv("ORCHESTRATOR_CACHE_DIR", "cache")
    gan, clip = resolve("all", "local", [], None)[1:]
    for exp in (gan, clip):
        assert exp.config.data_dir == str((tmp_path / "../data").resolve())
        assert exp.config.cache_dir == str(tmp_path / "cache")
    (gan,) = resolve("gan", "local", ["data_dir=rel"], None)
    assert gan.config.data_dir == str(tmp_path / "rel")


def test_trial_identity_ignores_machine_local_paths():
    import dataclasses

    from orchestrator.studies import EXPERIMENTS
    from orchestrator.studies import trial_key

    cfg = EXPERIMENTS["gan"]["local"].config
    moved = dataclasses.replace(cfg, data_dir="/elsewhere/data", cache_dir="/mnt/shared/cache")
    assert trial_key(moved) == trial_key(cfg)
    assert trial_key(dataclasses.replace(cfg, lr=cfg.lr * 2)) != trial_key(cfg)


def test_fractional_gpus_pack_single_worker_trials_and_refuse_ddp(capsys):
    from orchestrator.cli import main
    from orchestrator.studies import EXPERIMENTS

    paper = EXPERIMENTS["gan"]["paper"].scaling
    assert paper.num_workers == 1 and paper.gpus_per_worker == 0.25 and paper.cpus_per_worker * 4 <= 4  # a g5.xlarge
    assert main(["run", "gan", "--set", "use_gpu=true", "--set", "gpus_per_worker=0.5", "--set", "num_workers=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NCCL" in err and "num_workers=1" in err


def test_cost_lines_add_hours_and_price_them_per_node_type():
    from orchestrator.reports.cost import cost_lines

    trials = pd.DataFrame({
        "attempt": ["a", "b", "c"], "trial_key": ["a", "b", "c"], "trial_name": ["gan-lr=1", "gan-lr=2", "gan-lr=2"],
        "node_types": ["gpu.spot.1x", "gpu.spot.1x,gpu.ondemand.4x", ""],
        "gpu_seconds": [3600.0, 7200.0, 0.0], "cpu_seconds": [4 * 3600.0, 8 * 3600.0, 1800.0],
        "preemptions": [3, 0, 0], "restarts": [3, 1, 0]})
    (line, *_) = cost_lines(trials, None)
    assert line.startswith("cost: 3 GPU-hours, 12.5 CPU-hours, 3 preemptions and 4 restarts survived (no prices")
    prices = {"gpu.spot.1x": {"GPU": 0.5}, "gpu.ondemand.4x": {"GPU": 1.5}, "default": {"CPU": 0.1}}
    lines = cost_lines(trials, prices)
    # a: 1 h x 0.5; b: 2 h x mean(0.5, 1.5) = 2; c: 0.5 CPU-h at the default 0.1
    assert "3 GPU-hours, 12.5 CPU-hours, 2.55," in lines[0]
    assert lines[1] == "  gan-lr=1: 1 GPU-hours, 4 CPU-hours, 0.50" and lines[2].startswith("  gan-lr=2: 2 GPU-hours, 8.5 CPU-hours, 2.05")
    assert cost_lines(trials.drop(columns=["cpu_seconds"]), None)[0].startswith("cost: not recorded")
