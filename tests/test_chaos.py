"""Chaos: `run all` at tiny settings, interrupted at random moments by Ctrl-C (SIGINT), SIGTERM,
SIGKILL of the driver's process group and SIGKILL of one Train worker, each time run again until it
completes. Its tables must then hold exactly the rows of an uninterrupted run, each once, with the
same numbers bit for bit (the GAN on 2 Train workers, CLIP, minimax), no torn or temporary file, and
minimax's report must equal the uninterrupted run's. Real processes
are signalled (only those this test started), nothing is mocked. bench/bench_chaos.py does the same
with more interruptions."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.results.runlock import is_locked
from tests.chaos import KINDS, compare_tables, expected_exit, report_numbers, run_with_chaos
from tests.tables import assert_every_table_reads_in_duckdb

ROOT = Path(__file__).resolve().parents[1]
TINY_ALL = ["--set", "minimax.num_lrs=300", "--set", "minimax.steps=300",
            "--set", "gan.train_images=256", "--set", "gan.epochs=3", "--set", "gan.sample_epochs=3",
            "--set", "gan.fid_images=200", "--set", "gan.num_workers=2",
            "--set", "clip.train_images=96", "--set", "clip.val_images=48", "--set", "clip.test_images=48",
            "--set", "clip.epochs=3", "--set", "clip.batch_size=32", "--seeds", "1"]  # CLIP: the profile's 3 pairs


def run_all(results: Path, data_dir: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "run", "all", "--results", str(results), "--data-dir", data_dir,
            "--no-dashboard", *TINY_ALL]


def report(results: Path, study: str) -> str:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "report", study, "--results", str(results)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_run_all_survives_every_kind_of_interruption(data_dir, gan_cache, tmp_path):
    cache = tmp_path / "cache"  # a copy: the CLIP features these runs extract must not reach other tests' caches
    shutil.copytree(gan_cache, cache)
    env = {**os.environ, "RAY_ADDRESS": "", "ORCHESTRATOR_CACHE_DIR": str(cache)}  # each run its own local Ray
    reference, chaotic = tmp_path / "reference", tmp_path / "chaos"
    done = subprocess.run(run_all(reference, data_dir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert assert_every_table_reads_in_duckdb(reference) == 3 + 3 + 4  # runs/trials/steps (+ clip's prompts)

    log = run_with_chaos(run_all(chaotic, data_dir), env, ROOT, interruptions=len(KINDS), seed=7,
                         log_dir=tmp_path / "logs", delay_s=(4.0, 18.0))
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert sorted(kind for kind, _ in log.interruptions) == sorted(KINDS), logs
    assert log.hung == 0, logs  # Ctrl-C and SIGTERM end the run promptly
    assert log.attempts[-1] == 0 and len(log.attempts) >= 3, logs
    # each attempt exits as its last interruption says: 130 after Ctrl-C or SIGTERM, -9 when its group was
    # killed, 0 otherwise (a killed worker is retried); never 1 (a trial that failed for good)
    assert log.attempts == [expected_exit(kinds) for kinds in log.kinds], (log.attempts, log.kinds, logs)

    diff = compare_tables(reference, chaotic)
    assert diff.lost == 0 and diff.duplicates == 0, diff.details
    # bit-exact resume (issue 22): the GAN's losses and FIDs per epoch (2 Train workers, resumed after a
    # killed worker, a killed driver, Ctrl-C, SIGTERM), CLIP's losses and recalls, minimax's distances:
    # every number the uninterrupted run's
    assert diff.differing == 0, diff.details
    assert not diff.torn and not diff.temporaries, (diff.torn, diff.temporaries)
    assert not is_locked(chaotic)  # released by the run that completed
    # the deterministic study's numbers are the uninterrupted run's, whichever runs produced them
    chaotic_report = report(chaotic, "minimax")
    assert report_numbers(chaotic_report) == report_numbers(reference_report := report(reference, "minimax"))
    # the cost section differs (interrupted attempts held CPUs too) but is there in both
    assert "cost:" in chaotic_report and "cost:" in reference_report
    assert "current results: 1 trials" in report(chaotic, "gan")  # the GAN trial, from whichever runs finished it
