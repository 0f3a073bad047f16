"""Chaos harness (in the style of Ray's fault-tolerance release tests): run a command, interrupt it at
random moments in one of four ways, run it again, until a run completes; then compare its tables
with those of an uninterrupted run. Used by tests/test_chaos.py and bench/bench_chaos.py.

Every signal goes to a process this harness started, or to one of its descendants (found through
/proc by parent PID): never to anything else on the machine.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

KINDS = ("sigint", "sigterm", "sigkill-group", "kill-worker")
# the columns that identify a row of each table (a trial, an epoch, a prompt rank...)
ROW_KEYS = {
    ("minimax", "trials"): ["trial_key", "algorithm", "lr"],
    ("minimax", "steps"): ["trial_key", "algorithm", "lr", "step"],
    ("gan", "trials"): ["trial_key"],
    ("gan", "steps"): ["trial_key", "epoch"],
    ("clip", "trials"): ["trial_key"],
    ("clip", "steps"): ["trial_key", "epoch"],
    ("clip", "prompts"): ["trial_key", "prompt", "rank"],
}
# the numbers a resumed run must reproduce bit for bit (issue 22: every random stream and piece of
# state restored), per table; wall times and throughput differ by nature
VALUES = {
    ("minimax", "trials"): ["final_distance", "rate", "reached"],
    ("gan", "steps"): ["loss_d", "loss_g", "d_x", "d_g_z", "val_fid", "fid"],
    ("gan", "trials"): ["loss_d", "loss_g", "val_fid", "fid", "class_coverage"],
    ("clip", "steps"): ["loss", "temperature", "val_rsum", "val_t2i_r10"],
    ("clip", "trials"): ["selected_epoch", "t2i_r1", "t2i_r10", "i2t_r10", "val_rsum"],
}
RESULT = ("TERMINATED", "STOPPED")  # a trial row's statuses that are results (store.DONE)


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first), from /proc."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def train_workers(root_pid: int) -> list[int]:
    """The Ray Train worker processes among the descendants of `root_pid`."""
    import psutil

    found = []
    for pid in descendants(root_pid):
        try:
            if "ray::RayTrainWorker" in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_group(pgid: int, since: float) -> None:
    """SIGKILL what is left of a process group this harness created (start_new_session): the driver
    and its Ray. Member by member, and only processes created since `since` (the attempt's start),
    so that a PGID reused after the leader was reaped never reaches anyone else's processes."""
    import psutil

    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["create_time"] >= since - 1:
                os.kill(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass


@dataclass
class ChaosLog:
    interruptions: list[tuple[str, float]] = field(default_factory=list)  # (kind, seconds into the attempt)
    attempts: list[int] = field(default_factory=list)  # exit codes
    kinds: list[list[str]] = field(default_factory=list)  # per attempt: the interruptions it got, in order
    hung: int = 0  # SIGINT/SIGTERM that did not end the run within grace_s
    seconds: float = 0.0


def run_with_chaos(cmd: list[str], env: dict, cwd: Path, interruptions: int, seed: int, log_dir: Path,
                   delay_s: tuple[float, float] = (3.0, 20.0), kinds: tuple[str, ...] = KINDS,
                   grace_s: float = 60.0, max_attempts: int = 30, say=print) -> ChaosLog:
    """Run `cmd` until it exits 0 with all `interruptions` delivered. Kinds are taken in turn from a
    shuffled cycle of `kinds` (so every kind occurs once K >= len(kinds)), delays uniformly from delay_s."""
    rng = random.Random(seed)
    plan = [kinds[i % len(kinds)] for i in range(interruptions)]
    rng.shuffle(plan)
    log, started = ChaosLog(), time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(max_attempts):
        born = time.time()
        with open(log_dir / f"attempt-{attempt:02d}.log", "w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        t0 = time.perf_counter()
        log.kinds.append([])
        try:
            while plan and proc.poll() is None:
                kind = plan[0]
                deadline = time.perf_counter() + rng.uniform(*delay_s)
                while proc.poll() is None and time.perf_counter() < deadline:
                    time.sleep(0.1)
                if kind == "kill-worker":  # needs a Train worker: wait for one (GAN or CLIP phase)
                    while proc.poll() is None and not train_workers(proc.pid):
                        time.sleep(0.2)
                if proc.poll() is not None:
                    break
                at = time.perf_counter() - t0
                if kind == "sigint":
                    proc.send_signal(signal.SIGINT)
                elif kind == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                elif kind == "sigkill-group":
                    os.killpg(proc.pid, signal.SIGKILL)  # the leader is alive (not yet reaped): its group is ours
                else:
                    workers = train_workers(proc.pid)
                    if not workers:
                        continue
                    os.kill(rng.choice(workers), signal.SIGKILL)
                plan.pop(0)
                log.interruptions.append((kind, at))
                log.kinds[-1].append(kind)
                say(f"chaos: attempt {attempt}: {kind} at {at:.1f} s")
                if kind in ("sigint", "sigterm"):
                    try:
                        proc.wait(timeout=grace_s)
                    except subprocess.TimeoutExpired:
                        log.hung += 1
                        kill_group(proc.pid, born)
            code = proc.wait()
        finally:
            kill_group(proc.pid, born)  # whatever of this attempt's Ray is left (same session)
            proc.wait()
        log.attempts.append(code)
        say(f"chaos: attempt {attempt} exited {code} after {time.perf_counter() - t0:.1f} s")
        if code == 0 and not plan:
            break
    log.seconds = time.perf_counter() - started
    return log


# what an attempt must exit with after its last interruption of these kinds (a killed Train worker is
# retried within max_failures: the attempt goes on, and ends 0 unless something else stops it)
EXPECTED_EXIT = {"sigint": 130, "sigterm": 130, "sigkill-group": -9}


def expected_exit(kinds: list[str]) -> int:
    ending = [EXPECTED_EXIT[k] for k in kinds if k in EXPECTED_EXIT]
    return ending[-1] if ending else 0


def read_parts(table_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """(every visible part of a table, concatenated; names of parts a reader cannot read)."""
    import pyarrow as pa

    from orchestrator.results import compact

    parts = compact.parts(table_dir)  # what readers read: no temporaries, no part a compacted one holds
    tables, torn = [], []
    for part in parts:
        try:
            tables.append(pq.read_table(part))
        except Exception:  # a torn file: what atomic writes must prevent
            torn.append(part.name)
    frame = pa.concat_tables(tables, promote_options="permissive").to_pandas() if tables else pd.DataFrame()
    return frame, torn


@dataclass
class Comparison:
    lost: int = 0  # rows of the reference missing here
    duplicates: int = 0  # rows here beyond one per reference row (repeats, or rows the reference lacks)
    differing: int = 0  # rows whose VALUES differ from the reference's (not bit for bit)
    ended_early: int = 0  # trial rows of interrupted runs (ABORTED, ERROR): on record beside the results
    torn: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def compare_tables(reference: Path, results: Path) -> Comparison:
    """Rows of `results` against `reference`'s: each result row once, with the same VALUES. Trial rows
    of interrupted runs stay on record (a row per attempt and run) and are counted apart."""
    out = Comparison()
    out.temporaries = sorted(str(p.relative_to(results)) for p in results.glob("*/*.parquet/.*"))
    for (study, table), keys in ROW_KEYS.items():
        ref, torn_ref = read_parts(reference / study / f"{table}.parquet")
        got, torn = read_parts(results / study / f"{table}.parquet")
        out.torn += torn + torn_ref
        if ref.empty and got.empty:
            continue
        if table == "trials" and len(got):
            out.ended_early += int((~got["status"].isin(RESULT)).sum())
            got = got[got["status"].isin(RESULT)]
        _compare_values(out, f"{study}/{table}", ref, got, keys, VALUES.get((study, table), []))
        ref_keys = set(map(tuple, ref[keys].astype(str).to_numpy())) if len(ref) else set()
        counts = got[keys].astype(str).value_counts() if len(got) else pd.Series(dtype=int)
        got_keys = set(counts.index)
        lost = len(ref_keys - got_keys)
        dup = int((counts - 1).clip(lower=0).sum()) + len(got_keys - ref_keys)
        out.lost += lost
        out.duplicates += dup
        if lost or dup:
            out.details.append(f"{study}/{table}: {lost} lost, {dup} duplicated or extra")
    return out


def _compare_values(out: Comparison, name: str, ref: pd.DataFrame, got: pd.DataFrame, keys: list[str],
                   columns: list[str]) -> None:
    """Rows matched on `keys` must hold the same `columns`, exactly (NaN equals NaN)."""
    columns = [c for c in columns if c in ref and c in got]
    if not columns or ref.empty or got.empty:
        return
    merged = ref[keys + columns].astype({k: str for k in keys}).merge(
        got[keys + columns].astype({k: str for k in keys}).drop_duplicates(keys), on=keys, suffixes=("", "_got"))
    for column in columns:
        a, b = merged[column], merged[f"{column}_got"]
        differ = ~((a == b) | (a.isna() & b.isna()))
        if differ.any():
            out.differing += int(differ.sum())
            first = merged[differ].iloc[0]
            out.details.append(f"{name}.{column}: {int(differ.sum())} rows differ, e.g. {dict(first[keys])}: "
                               f"{first[column]!r} != {first[f'{column}_got']!r}")


def report_numbers(text: str) -> list[str]:
    """A study report without what differs between equal results: the header naming runs, file paths
    and the cost section (CPU/GPU-seconds held are wall time, and an interrupted run holds more)."""
    lines, in_cost = [], False
    for line in text.splitlines()[1:]:
        in_cost = line.startswith("cost:") or (in_cost and line.startswith("  "))
        if not in_cost and not line.strip().startswith(("plots:", "plot:", "/")):
            lines.append(line)
    return lines
