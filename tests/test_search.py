"""Tune as a search engine: the --sweep grammar (grids and random axes), seeded draws recorded in the
run's spec, readable trial names, and ASHA stopping trials early (rows STOPPED, kept on resume)."""

import dataclasses
import json
import shutil
import time
import types

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.studies import resolve
from orchestrator.studies import SpecError
from orchestrator.studies.sweeps import format_value
from tests.tables import assert_every_table_reads_in_duckdb


def configs(sweeps, samples=None, sample_seed=0, study="gan"):
    (exp,) = resolve(study, "local", [], sweeps=sweeps, samples=samples, sample_seed=sample_seed, say=lambda _: None)
    return exp, exp.trial_configs()


def test_random_axes_draw_within_their_bounds_times_the_grid():
    exp, got = configs(["lr=loguniform(1e-5,1e-3)", "beta1=0.5,0.9", "latent_dim=uniform(50,60)",
                        "dropout=choice(0.1,0.3)"], samples=5)
    assert len(got) == 5 * 2  # N draws per point of the grid (Tune's num_samples)
    assert [c.beta1 for c in got] == [0.5, 0.9] * 5  # draw-major: the whole grid with each draw
    assert all(1e-5 <= c.lr <= 1e-3 and 50 <= c.latent_dim <= 60 and c.dropout in (0.1, 0.3) for c in got)
    assert all(isinstance(c.latent_dim, int) for c in got)
    assert all(float(format_value(c.lr)) == c.lr for c in got)  # 4 significant digits: the name is the value
    assert len({c.lr for c in got}) == 10  # log-uniform floats do not repeat


def test_draws_are_seeded_and_a_larger_sample_keeps_the_first_draws():
    _, first = configs(["lr=loguniform(1e-5,1e-3)"], samples=4)
    _, again = configs(["lr=loguniform(1e-5,1e-3)"], samples=4)
    _, more = configs(["lr=loguniform(1e-5,1e-3)"], samples=8)
    _, other = configs(["lr=loguniform(1e-5,1e-3)"], samples=4, sample_seed=1)
    assert first == again and more[:4] == first  # the same command resumes the same trials
    assert {c.lr for c in other}.isdisjoint({c.lr for c in first})


def test_repeated_choice_draws_are_one_trial():
    _, got = configs(["beta1=choice(0.5,0.9)"], samples=20)
    assert sorted(c.beta1 for c in got) == [0.5, 0.9]


def test_trial_names_say_what_the_sweep_set():
    exp, _ = configs(["lr=2e-4,1e-4", "beta1=0.5"])
    assert exp.trial_names() == ["gan-lr=0.0002,beta1=0.5", "gan-lr=0.0001,beta1=0.5"]
    (clip,) = resolve("clip", "local", [], seeds=2)
    assert clip.trial_names()[3] == "clip-image_model=efficientnet-lite0,text_model=all-minilm-l6-v2,seed=43"


@pytest.mark.parametrize("sweeps, samples, message", [
    (["lr=loguniform(1e-5,1e-3)"], None, "say how many with --samples N"),
    (["lr=1e-4,2e-4"], 3, "--samples 3 needs a random axis"),
    (["lr=loguniform(0,1)"], 2, "loguniform needs LOW > 0"),
    (["lr=uniform(2,1)"], 2, "LOW < HIGH"),
    (["lr=uniform(1e-4)"], 2, "takes two bounds"),
    (["lr=uniform(abc,1)"], 2, "--sweep lr='abc': expected a number"),
    (["lr=normal(0,1)"], 2, "unknown distribution 'normal'"),
    (["beta1=choice(0.5)"], 2, "at least two different values"),
    (["lr=1e-4,0.0001"], None, "0.0001 is listed twice"),
    (["beta1=choice(0.5,0.5,0.6)"], 2, "0.5 is listed twice"),
    (["channels_last=uniform(0,1)"], 2, "needs a numeric field"),
    (["lr=loguniform(1e-5,1e-3)"], 0, "--samples must be >= 1"),
    (["beta1=uniform(0.5,1.5)"], 20, "beta1 must be in"),  # draws are validated by the config, like --set
])
def test_bad_sweeps_fail_before_ray_with_one_line(sweeps, samples, message):
    with pytest.raises(SpecError, match=message):
        configs(sweeps, samples=samples)


def test_bad_search_flags_on_the_command_line(tmp_path, capsys):
    assert main(["run", "minimax", "--scheduler", "asha", "--results", str(tmp_path)]) == 2
    assert main(["run", "all", "--samples", "2", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "nothing to compare during training" in err[0] and "needs a random --sweep axis" in err[1]


def test_random_draws_are_recorded_and_resume_the_same_trials(ray_session, tmp_path, capsys):
    args = ["run", "minimax", "--results", str(tmp_path), "--set", "num_lrs=6", "--set", "steps=40",
            "--sweep", "b=uniform(-1,1)", "--samples", "3", "--no-dashboard"]
    assert main(args) == 0
    (exp,) = resolve("minimax", "local", ["num_lrs=6", "steps=40"], sweeps=["b=uniform(-1,1)"], samples=3,
                     say=lambda _: None)
    runs = pd.read_parquet(tmp_path / "minimax" / "runs.parquet")
    assert [json.loads(p)["b"] for p in runs["params"]] == [c.b for c in exp.trial_configs()]
    trials = pd.read_parquet(tmp_path / "minimax" / "trials.parquet")
    assert set(trials["trial_name"]) == set(runs["trial_name"]) == set(exp.trial_names())
    # names and params say what differs from the default run: the --set values, then the sweep's
    assert all(name.startswith("minimax-num_lrs=6,steps=40,b=") for name in runs["trial_name"])
    assert all(json.loads(p)["num_lrs"] == 6 and json.loads(p)["steps"] == 40 for p in runs["params"])
    capsys.readouterr()
    assert main(args) == 0  # the same command draws the same trials: all of them finished
    assert "every trial of minimax" in (out := capsys.readouterr().out) and "nothing to run" in out


TINY_ASHA = ["--set", "dataset=flickr8k", "--set", "train_images=64", "--set", "val_images=32",
             "--set", "test_images=32", "--set", "epochs=8", "--set", "batch_size=16",
             "--set", "max_concurrent_trials=1", "--seeds", "1", "--no-dashboard", "--scheduler", "asha",
             # good learning rates first (one trial at a time): the later, nearly frozen heads trail them
             "--sweep", "head_lr=1e-2,3e-3,1e-7,1e-8"]


def test_asha_stops_trailing_trials_early_and_resume_keeps_them(ray_session, data_dir, tmp_path, capsys):
    args = ["run", "clip", "--results", str(tmp_path / "results"), "--data-dir", data_dir,
            "--set", f"cache_dir={tmp_path / 'cache'}", *TINY_ASHA]
    assert main(args) == 0
    out = capsys.readouterr().out
    trials = pd.read_parquet(tmp_path / "results" / "clip" / "trials.parquet")
    steps = pd.read_parquet(tmp_path / "results" / "clip" / "steps.parquet")
    stopped = trials[trials["status"] == "STOPPED"]
    assert len(trials) == 4 and len(stopped) >= 1 and "stopped early by asha" in out
    # feature extraction inside the first trial said what it did, through the driver
    first = trials.loc[trials["head_lr"] == 1e-2, "trial_name"].iloc[0]
    assert first.startswith("clip-train_images=64,") and first.endswith(",head_lr=0.01")  # --set values, then the sweep's
    assert f"{first}: efficientnet-lite0, train: image features cached" in out
    assert (trials.loc[trials["head_lr"] == 1e-2, "status"] == "TERMINATED").all()  # the first runs to its end
    epochs = steps.groupby("trial_key")["epoch"].max()
    assert (epochs[stopped["trial_key"]] < 8).all()  # fewer epochs than the others
    assert stopped["error"].str.contains("stopped early by asha after epoch").all()
    assert stopped["val_rsum"].notna().all()  # its row holds its last validation metrics
    assert_every_table_reads_in_duckdb(tmp_path / "results")  # stopped rows have the table's whole schema
    assert main(args) == 0  # resume: stopped trials are results, not interrupted work
    assert "every trial of clip" in (out := capsys.readouterr().out) and "nothing to run" in out
    # report leaves them out of its tables and means, and names them below
    assert main(["report", "clip", "--results", str(tmp_path / "results")]) == 0
    report = capsys.readouterr().out
    line = next(x for x in report.splitlines() if "stopped early by the scheduler (left out above): " in x)
    assert line.startswith(f"{len(stopped)} trials") and all(name in line for name in stopped["trial_name"])
    # a run with another scheduler runs them to their end
    i = args.index("--scheduler")
    assert main(args[:i] + args[i + 2:]) == 0
    after = pd.read_parquet(tmp_path / "results" / "clip" / "trials.parquet")
    rerun = after[after["trial_key"].isin(stopped["trial_key"]) & (after["run_id"] == after["run_id"].max())]
    assert len(rerun) == len(stopped) and (rerun["status"] == "TERMINATED").all(), rerun[["trial_name", "status"]]
    assert (after["status"] == "STOPPED").sum() == len(stopped)  # the ASHA run's rows stay on record
    last = pd.read_parquet(tmp_path / "results" / "clip" / "steps.parquet").groupby("trial_key")["epoch"].max()
    assert (last[stopped["trial_key"]] == 8).all()  # to their last epoch


TINY_TRACKED = ["--set", "dataset=flickr8k", "--set", "train_images=48", "--set", "val_images=24",
                "--set", "test_images=24", "--set", "epochs=3", "--set", "batch_size=16", "--seeds", "1",
                "--sweep", "head_lr=1e-3,3e-3", "--no-dashboard", "--tracker", "mlflow", "--tracker", "wandb"]


def test_trackers_hold_one_run_per_trial_offline(ray_session, data_dir, tmp_path, monkeypatch):
    """MLflow (a file store under the results) and W&B (offline) through Ray's callbacks: one run per
    trial, named like it, with its whole config as params, its metrics per epoch, its prompt grids."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    results = tmp_path / "results"
    assert main(["run", "clip", "--results", str(results), "--data-dir", data_dir,
                 "--set", f"cache_dir={tmp_path / 'cache'}", *TINY_TRACKED]) == 0
    trials = pd.read_parquet(results / "clip" / "trials.parquet")

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((results / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("clip")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(trials["trial_name"])
    for run in runs:
        row = trials[trials["trial_name"] == run.info.run_name].iloc[0]
        assert float(run.data.params["head_lr"]) == row["head_lr"]
        assert run.data.params["image_model"] == row["image_model"] and run.data.params["trial_key"] == row["trial_key"]
        epochs = client.get_metric_history(run.info.run_id, "epoch")
        assert sorted({m.step for m in epochs}) == [1, 2, 3] and all(m.step == m.value for m in epochs)  # step = epoch
        assert len(client.get_metric_history(run.info.run_id, "val_rsum")) == 4  # 3 epochs + the final row's
        assert [m.step for m in client.get_metric_history(run.info.run_id, "t2i_r10")] == [row["selected_epoch"]]
        assert {a.path for a in client.list_artifacts(run.info.run_id, "prompts")} >= {
            "prompts/a_dog_sitting_alone_in_a_park.png"}
        assert run.info.status == "FINISHED"

    offline = sorted((results / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == len(trials)  # one W&B run per trial, syncable later with `wandb sync`
    # W&B's protobuf logs, written by its own service process, which may still be flushing when the run
    # returns (seen once on a loaded CI machine): read them until every trial's name is there, up to 60 s
    wanted = [name.encode() for name in trials["trial_name"]]
    deadline = time.time() + 60
    while True:
        records = b"".join(next(run.glob("*.wandb")).read_bytes() for run in offline)
        if all(name in records for name in wanted) or time.time() > deadline:
            break
        time.sleep(1)
    for name in trials["trial_name"]:
        assert name.encode() in records  # the run's name...
    assert all(key in records for key in (b"image_model", b"trial_key", b"val_rsum"))  # ...config and metrics
    for run in offline:  # ...and the five prompt grids as W&B images
        assert len(list((run / "files" / "media" / "images" / "prompts").glob("*.png"))) == 5, list(run.rglob("*"))


TINY_PBT = ["--set", "train_images=256", "--set", "epochs=4", "--set", "sample_epochs=1,2,3,4",
            "--set", "fid_images=200", "--no-dashboard", "--scheduler", "pbt",
            # a population of two far apart: one barely moves in 4 steps an epoch, so FIDs differ at once
            "--sweep", "lr=1e-6,2e-3"]


def test_pbt_exploits_by_copying_the_better_trials_weights(ray_session, data_dir, gan_cache, tmp_path):
    """PBT trials are plain Tune trials with Tune checkpoints: an exploit restarts the worse trial from
    the better one's checkpoint, whose exact bytes (digest) it then reports, with a perturbed lr."""
    results = tmp_path / "results"
    assert main(["run", "gan", "--results", str(results), "--data-dir", data_dir, "--set", f"cache_dir={gan_cache}",
                 *TINY_PBT]) == 0
    trials = pd.read_parquet(results / "gan" / "trials.parquet")
    steps = pd.read_parquet(results / "gan" / "steps.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert not any(list((results / "_ray").glob(f"*-{key}")) for key in trials["trial_key"])  # no Train run
    assert (trials["world_size"] == 1).all()
    exploits = steps[steps["restored_from"].notna()]
    assert len(exploits) >= 1, steps[["trial_name", "epoch", "fid", "lr"]]
    for _, row in exploits.iterrows():
        donor_name, _, donor_epoch = row["restored_from"].partition("@epoch ")
        assert donor_name != row["trial_name"] and donor_name in set(trials["trial_name"])
        donor = steps[(steps["trial_name"] == donor_name) & (steps["epoch"] == int(donor_epoch))]
        assert list(donor["checkpoint_digest"]) == [row["restored_digest"]]  # the donor's very weights
        assert row["epoch"] == int(donor_epoch) + 1  # training went on from the donor's epoch
        assert row["lr"] != donor["lr"].iloc[0]  # ...with the donor's learning rate perturbed
    assert_every_table_reads_in_duckdb(results)
    assert_moved_results_report_and_generate(results, tmp_path / "moved")


def test_a_resubmitted_pbt_run_resumes_its_trials_from_their_checkpoints(ray_session, data_dir, gan_cache, tmp_path):
    """PBT's Tune checkpoints live under one experiment per study (`gan-pbt`), one folder per trial:
    a run killed mid-way (the process group, as a lost head would) and submitted again resumes each
    trial from its latest checkpoint, with the lr PBT had moved it to, instead of from epoch 1."""
    import os
    import signal
    import subprocess
    import sys

    from tests.chaos import descendants, kill_group
    from tests.spot import wait_for

    results = tmp_path / "results"
    argv = ["run", "gan", "--results", str(results), "--data-dir", data_dir, "--set", f"cache_dir={gan_cache}",
            *TINY_PBT, "--set", "epochs=8", "--set", "sample_epochs=1,2,3,4,5,6,7,8"]
    started = time.time()
    first = subprocess.Popen([sys.executable, "-m", "orchestrator", *argv], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    checkpoints = lambda: {p.parent.parent.name for p in (results / "_ray" / "gan-pbt").glob("*/checkpoint_*/origin.json")
                           if json.loads(p.read_text())["epoch"] >= 2}  # noqa: E731
    epoch_1_rows = lambda: all((results / "gan" / "steps.parquet" / f"{a}-000001.parquet").exists()  # noqa: E731
                               for a in checkpoints())
    try:
        wait_for(lambda: len(checkpoints()) == 2 and epoch_1_rows(), 300, "both trials' epoch-2 checkpoints")
    finally:
        for pid in [first.pid, *descendants(first.pid)]:
            os.kill(pid, signal.SIGKILL)
        kill_group(first.pid, started)
        first.wait()
    before = pd.read_parquet(results / "gan" / "steps.parquet")
    assert before["epoch"].max() < 8  # killed mid-run
    assert main(argv) == 0
    steps = pd.read_parquet(results / "gan" / "steps.parquet")
    trials = pd.read_parquet(results / "gan" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    first_run = before["run_id"].iloc[0]
    for key, own in steps.groupby("trial_key"):
        # no epoch twice, the last one there (under PBT a trial that exploits a donor ahead of it skips
        # to the donor's epoch: not every epoch is its own)
        assert not own["epoch"].duplicated().any() and own["epoch"].max() == 8, own[["epoch", "run_id"]]
        # epoch 1 stays the first run's row: the second run went on from a checkpoint (epoch >= 2), never
        # from the start
        assert (own[own["epoch"] == 1]["run_id"] == first_run).all() and len(own[own["epoch"] == 1]) == 1
        assert own[own["run_id"] != first_run]["epoch"].min() >= 2, own[["epoch", "run_id"]]
    assert (trials["restarts"] >= 1).all()  # the resume counts as a restart
    folders = sorted(p.name for p in (results / "_ray" / "gan-pbt").iterdir() if p.is_dir())
    # this run's checkpoints in fresh folders; the first run's set aside, never written over
    assert [f for f in folders if ".before-" not in f] == sorted(trials["attempt"])
    assert sorted(f.split(".before-")[0] for f in folders if ".before-" in f) == sorted(trials["attempt"])


def assert_moved_results_report_and_generate(results, moved):
    """The folder moved (the original gone, as after `ray rsync-down` and a cleanup): `report` embeds
    its sample grids and `generate` finds its generator, both from the new place."""
    shutil.move(results, moved)
    assert not results.exists()
    assert main(["report", "--results", str(moved)]) == 0
    html = (moved / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 2  # the curves and at least one trial's sample grid
    assert main(["generate", "gan", "--results", str(moved), "--n", "4", "--out", str(moved / "g.png")]) == 0
    assert (moved / "g.png").stat().st_size > 100


def test_tunes_trial_configs_hold_the_index_and_pbts_fields_only(tmp_path):
    """Tune copies and serialises every trial's config (variant generation, experiment snapshots):
    the sweep's values stay in the plan's configs, Tune's hold the index (and PBT's perturbed fields)."""
    from orchestrator.engine.actors import trial_config
    from orchestrator.engine.plan import TrialPlan, trial_dirname, trial_name
    from orchestrator.results.store import ResultStore
    from orchestrator.studies import EXPERIMENTS, WORKLOADS

    store = ResultStore(tmp_path)
    for scheduler, extra in (("fifo", set()), ("pbt", set(WORKLOADS["gan"].pbt))):
        exp = dataclasses.replace(EXPERIMENTS["gan"]["local"].with_sweep({"lr": "1e-4,2e-4"}), scheduler=scheduler)
        plan = TrialPlan.make(exp, WORKLOADS["gan"], store, "20261207-000000-0000", None, False, str(store.root / "_ray"))
        points = plan.param_space()["trial"]["grid_search"]
        folder = {"dir"} if scheduler == "pbt" else set()
        assert [set(p) for p in points] == [{"index", "name"} | folder | extra] * 2
        for i, point in enumerate(points):
            assert trial_config({"trial": dict(point)}, plan.configs) == (i, plan.configs[i])
            trial = types.SimpleNamespace(config={"trial": dict(point)}, trial_id=f"abc_0000{i}")
            assert trial_name(trial) == plan.names[i]  # Tune's name creators read the config, not the plan
            assert trial_dirname(trial) == (plan.attempts[i] if scheduler == "pbt" else trial.trial_id)


def test_tunes_experiment_state_holds_no_table_rows(ray_session, tmp_path):
    """A trial's rows reach the tables, not Tune's state: Tune keeps each trial's last result in every
    experiment snapshot (minimax's final report: a column of 128 lanes each), and its name creators
    and configs are pickled into every trial's spec (a closure over the plan was O(trials) each)."""
    assert main(["run", "minimax", "--results", str(tmp_path), "--set", "num_lrs=40", "--set", "steps=50",
                 "--no-dashboard"]) == 0
    trials = pd.read_parquet(tmp_path / "minimax" / "trials.parquet")
    assert len(trials) == 5 * 40 and trials["lr"].notna().all()  # every lane's row, with its columns
    (state,) = (tmp_path / "_ray").glob("minimax-*/experiment_state-*.json")
    saved = json.loads(state.read_text())["trial_data"]
    assert len(saved) == trials["trial_id"].nunique() >= 5
    for trial, run in saved:
        last = json.loads(run)["last_result"]
        assert last and not any(isinstance(v, list) for v in last.values()), last  # scalars only
        spec = json.loads(trial)
        assert set(spec["config"]["trial"]) == {"index", "name"}
        assert len(spec["trial_name_creator"]) + len(spec["trial_dirname_creator"]) < 1000  # by reference
