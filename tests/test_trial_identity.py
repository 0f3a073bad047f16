"""Trial identity (issue 22): a trial's key covers what sets its result (the config fields off their
class defaults, the Scaling fields that change the computation) and nothing else, so a config that
gains a field at its default keeps its keys; a results folder of the previous format (2) keeps its
finished trials (tests/data/results-v2, written by that version); an older format is refused."""

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.results.store import FORMAT_VERSION, MARKER, ResultStore
from orchestrator.studies import EXPERIMENTS, WORKLOADS, Scaling, resolve
from orchestrator.studies.spec import defaults_key, legacy_key, trial_key

V2 = Path(__file__).parent / "data" / "results-v2"
# the commands that wrote tests/data/results-v2 (its README)
MINIMAX = ["run", "minimax", "--set", "num_lrs=8", "--set", "steps=200", "--no-dashboard"]
GAN_SET = ["epochs=1", "train_images=256", "fid_images=64", "sample_epochs=1"]
GAN = ["run", "gan", *(a for s in GAN_SET for a in ("--set", s)), "--sweep", "lr=1e-4,2e-4", "--no-dashboard"]


@dataclasses.dataclass(frozen=True)
class Before:
    lr: float = 1e-4
    epochs: int = 50
    data_dir: str = ""


@dataclasses.dataclass(frozen=True)
class After:  # Before, a release later: a new field at its default (behaviour unchanged)
    lr: float = 1e-4
    epochs: int = 50
    data_dir: str = ""
    warmup: int = 0


@dataclasses.dataclass(frozen=True)
class NewDefault:  # Before with another default learning rate
    lr: float = 3e-4
    epochs: int = 50
    data_dir: str = ""


def test_a_config_that_gains_a_field_at_its_default_keeps_its_keys():
    assert trial_key(After(lr=2e-4)) == trial_key(Before(lr=2e-4))
    assert trial_key(After()) == trial_key(Before())
    assert trial_key(After(lr=2e-4, warmup=5)) != trial_key(Before(lr=2e-4))  # off its default: another trial
    assert trial_key(Before(lr=2e-4)) != trial_key(Before())
    assert trial_key(Before(data_dir="/mnt/data")) == trial_key(Before())  # machine-local paths are not identity
    # the defaults' own digest, recorded in each row, tells a moved default (same key, other computation)
    assert defaults_key(NewDefault()) != defaults_key(Before())
    assert legacy_key(After()) != legacy_key(Before())  # format 2's keys changed with every new field


def test_the_key_covers_the_scaling_fields_that_change_the_result():
    config = EXPERIMENTS["gan"]["local"].config
    base = trial_key(config, Scaling())
    assert trial_key(config, Scaling(), "gan") != trial_key(config, Scaling(), "clip")  # studies never share keys
    assert trial_key(config, Scaling(num_workers=2)) != base  # world size: per-rank batches and BatchNorm
    assert trial_key(config, Scaling(use_gpu=True)) != base  # CUDA kernels
    gpus2 = Scaling(use_gpu=True, num_workers=2)
    assert trial_key(config, dataclasses.replace(gpus2, sync_bn=False)) != trial_key(config, gpus2)
    # sync_bn acts only on multi-GPU DDP; packing, CPUs per worker and retries compute the same thing
    assert trial_key(config, Scaling(sync_bn=False)) == base
    assert trial_key(config, Scaling(use_gpu=True, gpus_per_worker=0.25)) == trial_key(config, Scaling(use_gpu=True))
    assert trial_key(config, Scaling(cpus_per_worker=4, max_failures=0, max_wait_s=10)) == base
    # through the CLI: --set num_workers=1 makes other trials than the local profile's 2-worker ones
    exp = EXPERIMENTS["gan"]["local"]
    assert exp.scaling.num_workers == 2 and exp.with_overrides({"num_workers": "1"}).trial_keys() != exp.trial_keys()
    assert exp.with_overrides({"max_failures": "0"}).trial_keys() == exp.trial_keys()


@pytest.fixture
def older_results(tmp_path, monkeypatch):
    root = tmp_path / "results"
    shutil.copytree(V2, root)
    monkeypatch.setenv("ORCHESTRATOR_RESULTS", str(root))
    return root


def test_a_results_folder_of_the_previous_format_keeps_its_finished_trials(older_results, capsys, monkeypatch):
    before = {s: ResultStore(older_results).read(s, "trials") for s in ("minimax", "gan")}
    assert json.loads((older_results / MARKER).read_text())["format_version"] == 2
    for command in (MINIMAX, GAN):
        assert main(command) == 0
        assert "already finished" in capsys.readouterr().out  # nothing to run: Ray never started
    assert json.loads((older_results / MARKER).read_text())["format_version"] == FORMAT_VERSION
    store = ResultStore(older_results)
    for study, rows in before.items():
        runs = store.read(study, "runs")
        latest = runs[runs["run_id"] == runs["run_id"].max()]
        assert latest["kept"].all() and set(latest["stored_key"]) == set(rows["trial_key"])  # format 2's keys
        assert (latest["stored_key"] != latest["trial_key"]).all()  # ... recorded beside today's
        current, missing = store.current(study)
        assert missing == 0 and len(current) == len(rows) and set(current["trial_key"]) == set(latest["trial_key"])
    # later runs find them through what that run recorded, even once format 2's digest no longer
    # matches (a field added to the config changes it)
    monkeypatch.setattr("orchestrator.cli.kept.legacy_key", lambda config: "no-such-key")
    assert main(MINIMAX) == 0 and "already finished" in capsys.readouterr().out
    assert main(["report"]) == 0  # every study's page, from the kept rows
    page = (older_results / "report.html").read_text()
    assert all(name in page for name in before["gan"]["trial_name"])


def test_a_results_folder_of_an_older_format_is_refused_in_one_line(older_results, capsys):
    (older_results / MARKER).write_text(json.dumps({"format_version": 1}))
    parts = sorted(p.relative_to(older_results) for p in older_results.rglob("*.parquet"))
    for command in (MINIMAX, ["report"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "holds results format 1" in err and "use another --results directory" in err and "\n" not in err
    assert sorted(p.relative_to(older_results) for p in older_results.rglob("*.parquet")) == parts  # untouched
    assert json.loads((older_results / MARKER).read_text())["format_version"] == 1



def test_one_process_trials_key_no_workers_and_pbt_trials_are_their_own():
    """PBT trials and frozen-encoder CLIP trials are single processes: num_workers does not change
    them; a PBT trial (its hyperparameters moved) is never a FIFO trial's result."""
    gan = EXPERIMENTS["gan"]["local"].with_sweep({"lr": "1e-4,2e-4"})
    pbt = dataclasses.replace(gan, scheduler="pbt")
    assert set(pbt.trial_keys()).isdisjoint(gan.trial_keys())
    assert pbt.with_overrides({"num_workers": "1"}).trial_keys() == pbt.trial_keys()
    assert gan.with_overrides({"num_workers": "1"}).trial_keys() != gan.trial_keys()
    clip = EXPERIMENTS["clip"]["local"]
    assert not any(WORKLOADS["clip"].runs_distributed(c) for c in clip.trial_configs())  # frozen encoders
    assert clip.with_overrides({"num_workers": "4"}).trial_keys() == clip.trial_keys()
    assert len(set(EXPERIMENTS[s]["local"].key(EXPERIMENTS[s]["local"].config) for s in EXPERIMENTS)) == len(EXPERIMENTS)


def test_format_2_rows_of_another_scaling_or_moved_defaults_are_run_again(older_results):
    """Format 2 did not key the Scaling: its 2-worker GAN rows (world_size 2) are no results for a
    1-worker run. A kept row whose recorded config differs from today's on a field at its default
    (here: rows written when minimax's record_points default was 30) is another computation."""
    from orchestrator.cli.kept import kept_rows

    store, said = ResultStore(older_results), []
    gan = resolve("gan", "local", GAN_SET, sweeps=["lr=1e-4,2e-4"], say=lambda _: None)[0]
    kept, again = kept_rows(store, gan, gan.trial_keys(), said.append)
    assert len(kept) == 2 and not again and not said  # as they ran
    one = gan.with_overrides({"num_workers": "1"})
    kept, again = kept_rows(store, one, one.trial_keys(), said.append)
    assert kept.empty and again == set(one.trial_keys())  # run again, as new attempts:
    from orchestrator.engine.plan import TrialPlan

    plan = TrialPlan.make(one, WORKLOADS["gan"], store, "20261205-000000-abcd", kept, False, None, again)
    assert plan.attempts == [f"{k}-20261205-000000-abcd" for k in one.trial_keys()]  # nothing of the old resumed
    assert said == ["[gan] 2 earlier finished trials ran under another Scaling (results format 2 did not key it): "
                    "running them again"]
    table = older_results / "minimax" / "trials.parquet"
    for part in table.glob("*.parquet"):
        pd.read_parquet(part).assign(record_points=30).to_parquet(part)
    minimax = resolve("minimax", "local", ["num_lrs=8", "steps=200"], say=lambda _: None)[0]
    said.clear()
    kept, again = kept_rows(store, minimax, minimax.trial_keys(), said.append)
    assert kept.empty and again == set(minimax.trial_keys())
    assert said == ["[minimax] 5 earlier finished trials were computed with other values of fields now at their "
                    "defaults (record_points): running them again"]


def test_a_run_refused_by_its_checks_or_the_lock_leaves_a_format_2_folder_as_it_was(older_results, capsys):
    from orchestrator.results.runlock import RunLock

    marker = older_results / MARKER
    assert main([*GAN[:2], "--data-dir", str(older_results / "no-such-folder"), *GAN[2:6], "--set", "epochs=2"]) == 2
    assert "no-such-folder" in capsys.readouterr().err
    lock = RunLock(older_results, "someone-else")
    lock.acquire()
    try:
        assert main(MINIMAX) == 2 and "someone-else" in capsys.readouterr().err
    finally:
        lock.release()
    assert json.loads(marker.read_text())["format_version"] == 2
