"""docs/design.md's "How to add a workload and a study", followed step by step: a toy module (tests/toy),
registered in the registry, a study with a profile, then `list`, `run` and the tables, as a user gets them."""

import pandas as pd

from orchestrator.cli import main
from orchestrator.studies import EXPERIMENTS, WORKLOADS, Experiment, Scaling, Workload
from orchestrator.studies.experiments import grid_sweep
from tests.toy.workload import Config


def test_a_toy_workload_added_through_the_registry_runs_end_to_end(ray_session, tmp_path, capsys, monkeypatch):
    # step 2: register it
    monkeypatch.setitem(WORKLOADS, "toy", Workload(
        "tests.toy.workload", metric="final_loss", mode="min", distributed=False, step_key="step", gpu=False,
        columns={"steps": {"step": "int", "loss": "float"}, "trials": {"final_loss": "float", "w": "float"}}))
    # step 3: the study and its profiles
    local = Experiment(study="toy", profile="local", summary="three step sizes", config=Config(),
                       scaling=Scaling(cpus_per_worker=1), sweep=grid_sweep(lr=(0.05, 0.1, 0.4)))
    monkeypatch.setitem(EXPERIMENTS, "toy", {"local": local, "paper": local})
    assert main(["list"]) == 0
    assert "toy" in (out := capsys.readouterr().out) and "gradient step on the squared error" in out
    assert main(["run", "toy", "--results", str(tmp_path), "--no-dashboard"]) == 0
    trials = pd.read_parquet(tmp_path / "toy" / "trials.parquet").sort_values("lr")
    steps = pd.read_parquet(tmp_path / "toy" / "steps.parquet")
    assert list(trials["lr"]) == [0.05, 0.1, 0.4] and set(trials["status"]) == {"TERMINATED"}
    # w after 5 steps: w* (1 - (1 - 2 lr)^5); the loss falls fastest for the largest stable step
    expected = [3.0 * (1 - (1 - 2 * lr) ** 5) for lr in (0.05, 0.1, 0.4)]
    assert trials["w"].tolist() == [pytest_approx(v) for v in expected]
    assert len(steps) == 15 and sorted(steps["step"].unique()) == [1, 2, 3, 4, 5]
    assert "trial 3/3 terminated" in capsys.readouterr().out


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-9)
