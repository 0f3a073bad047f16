"""README and docs claims that no other test shows, each through the code a user runs: a run with a
failed trial exits 1 with the cause in its row, and a rerun keeps that row beside its own; `$ORCHESTRATOR_RESULTS`, `--storage` and
`ORCHESTRATOR_CODE_VERSION` go where they say; `+dirty` marks a modified checkout; a node that
declares a GPU torch cannot use fails the trial naming the node."""

import subprocess

import pandas as pd
import pytest

from orchestrator.cli import main


def test_a_failed_trial_exits_1_with_its_cause_in_the_row(ray_session, data_dir, gan_cache, tmp_path, monkeypatch,
                                                         capsys, request):
    """A GAN trial that crashes in epoch 2 with no retries left: exit 1, the row ERROR with the cause;
    the results went to $ORCHESTRATOR_RESULTS, Train's checkpoints under --storage, and every row
    says the code version ORCHESTRATOR_CODE_VERSION names."""
    from orchestrator.results import provenance

    results, storage = tmp_path / "results-from-env", tmp_path / "storage"
    monkeypatch.setenv("ORCHESTRATOR_RESULTS", str(results))
    monkeypatch.setenv("ORCHESTRATOR_CODE_VERSION", "claims-test-1")
    provenance.code_version.cache_clear()  # computed once per process: as a fresh CLI process would
    request.addfinalizer(provenance.code_version.cache_clear)
    command = ["run", "gan", "--data-dir", data_dir, "--set", f"cache_dir={gan_cache}", "--set", "train_images=256",
               "--set", "epochs=2", "--set", "sample_epochs=2", "--set", "fid_images=200", "--set", "fail_at_epoch=2",
               "--set", "max_failures=0", "--storage", str(storage), "--no-dashboard"]
    code = main(command)
    out = capsys.readouterr()
    assert code == 1, out.out[-2000:] + out.err[-2000:]
    (row,) = pd.read_parquet(results / "gan" / "trials.parquet").to_dict("records")
    assert row["status"] == "ERROR" and "injected failure in epoch 2" in row["error"], row
    assert row["code_version"] == "claims-test-1"
    steps = pd.read_parquet(results / "gan" / "steps.parquet")
    assert list(steps["epoch"]) == [1] and (steps["code_version"] == "claims-test-1").all()
    assert list(storage.glob("*/checkpoint_*/state.pt")), sorted(str(p) for p in storage.rglob("*"))[:20]
    assert not (results / "_ray").exists()  # --storage replaced the default place

    # the same command again (the hook fails once): it resumes after epoch 1 and finishes; the failed
    # run's row stays on record beside the new one (a row per attempt and run), `report --run` finds it
    assert main(command) == 0
    rows = pd.read_parquet(results / "gan" / "trials.parquet").sort_values("run_id")
    assert list(rows["status"]) == ["ERROR", "TERMINATED"] and rows["trial_key"].nunique() == 1, rows
    from orchestrator.results.store import ResultStore

    store = ResultStore(results)
    assert list(store.current("gan")[0]["status"]) == ["TERMINATED"]
    assert list(store.current("gan", rows["run_id"].iloc[0])[0]["status"]) == ["ERROR"]


def test_code_version_is_the_commit_and_marks_a_modified_checkout(tmp_path, monkeypatch):
    from orchestrator.results import provenance

    repo = tmp_path / "checkout"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    (repo / "tracked.py").write_text("x = 1\n")
    git("add", "tracked.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    commit = git("rev-parse", "--short=12", "HEAD").stdout.strip()
    monkeypatch.setattr(provenance, "ROOT", repo)
    monkeypatch.delenv(provenance.VERSION_ENV, raising=False)
    version = provenance.code_version.__wrapped__  # code_version() is computed once per process (cached)
    provenance.code_version.cache_clear()  # (and a cached value from an earlier test must not leak into later ones)
    assert version() == commit
    (repo / "untracked.txt").write_text("notes")  # untracked files do not make results dirty
    assert version() == commit
    (repo / "tracked.py").write_text("x = 2\n")
    assert version() == f"{commit}+dirty"
    monkeypatch.setenv(provenance.VERSION_ENV, "v1.2")
    assert version() == "v1.2"


def test_a_node_declaring_a_gpu_torch_cannot_use_fails_the_trial_naming_the_node(ray_session):
    """What a single-process GPU trial does first on a node whose GPU torch cannot use (here: none);
    with the CPU fallback allowed it trains on the CPU and says so."""
    import ray

    from orchestrator.engine.tune_trial import TuneRuntime

    @ray.remote(num_cpus=0)
    def start(fallback: bool):
        runtime = TuneRuntime("/tmp", use_gpu=True, allow_cpu_fallback=fallback)
        return runtime.device, runtime.software["cpu_fallback"], ray.get_runtime_context().get_node_id()

    with pytest.raises(ray.exceptions.RayTaskError) as failed:
        ray.get(start.remote(False))
    node = ray.get_runtime_context().get_node_id()
    assert f"node {node}" in str(failed.value) and "declares a GPU but torch cannot use it" in str(failed.value)
    assert "ORCHESTRATOR_ALLOW_CPU_FALLBACK=1" in str(failed.value)
    assert ray.get(start.remote(True)) == ("cpu", True, node)
