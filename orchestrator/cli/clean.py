"""`python -m orchestrator clean`: free what finished work no longer needs, keeping what resume needs.

Storage only grows otherwise: Ray's storage (`<results>/_ray`, or --storage) keeps every run's Tune
experiment folder and every Train run's checkpoints (a fine-tuned ResNet-50 + DistilBERT checkpoint
is ~1.4 GB). Removed: the Train run folders and PBT folders of attempts whose latest row is
TERMINATED (a rerun of a finished trial is always a new attempt), the Tune experiment folders of runs
that are over (Tune's own state: no resume reads it), writers' temporaries. Kept: everything of a
trial that did not finish (ERROR, ABORTED, stopped early by ASHA, or killed before its row): the next
run resumes it from there; every table and artifact (weights, grids, TensorBoard logs). A dry run by
default; it holds the run lock, so no run is going while it looks or deletes. Train folders are
recognised by the trial key their names end with: a --storage shared by several results folders
holds other folders' runs under the same keys, which this folder's lock does not cover (docs/results.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from orchestrator.results import compact
from orchestrator.results.runlock import LockHeld, RunLock
from orchestrator.results.store import FINISHED, ResultStore, StoreError
from orchestrator.studies.experiments import studies


def clean(args: argparse.Namespace) -> int:
    store = ResultStore(args.results)
    store.open_for_reading()
    storage = Path(args.storage) if args.storage else store.root / "_ray"
    if "://" in str(args.storage or ""):
        raise StoreError(f"--storage {args.storage}: clean works on a local or mounted folder (see docs/results.md)")
    lock = RunLock(store.root, "clean")
    try:
        lock.acquire()
    except LockHeld as exc:
        raise StoreError(str(exc)) from None
    try:
        removable = _removable(store, storage)
        total = sum(size for _, size in removable)
        for path, size in removable:
            print(f"  {_gib(size):>9}  {path}")
        if not removable:
            print(f"nothing to free in {store.root} (storage {storage})")
        elif not args.yes:
            print(f"would free {_gib(total)} in {len(removable)} folders and files; run again with --yes to delete them")
        else:
            for path, _ in removable:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            left = [(p, size) for p, size in removable if p.exists()]
            print(f"freed {_gib(total - sum(s for _, s in left))} ({len(removable) - len(left)} folders and files)"
                  + (f"; could not remove {len(left)}, e.g. {left[0][0]}" if left else ""))
            return 1 if left else 0
        return 0
    finally:
        lock.release()


def _removable(store: ResultStore, storage: Path) -> list[tuple[Path, int]]:
    """(path, bytes) of what finished work no longer needs."""
    finished, runs = set(), set()
    for study in studies():
        trials = store.read(study, "trials", columns=["attempt", "trial_key", "status", "run_id"])
        if not trials.empty:  # an attempt whose latest row is TERMINATED (not an earlier one's: a rerun may go on)
            trials = trials.assign(attempt=trials["attempt"].fillna(trials["trial_key"]) if "attempt" in trials
                                   else trials["trial_key"]).sort_values("run_id")
            latest = trials.groupby("attempt")["status"].last()
            finished |= {f"{study}/{a}" for a in latest.index[latest == FINISHED]}
        spec = store.read(study, "runs", columns=["run_id"])
        runs |= {f"{study}-{r}" for r in spec.get("run_id", ())}
    out: list[Path] = []
    if storage.is_dir():
        for folder in sorted(p for p in storage.iterdir() if p.is_dir()):
            study = next((s for s in studies() if folder.name.startswith(f"{s}-")), None)
            if study is None:
                continue
            if folder.name in runs:  # a finished run's Tune experiment
                out.append(folder)
            elif folder.name == f"{study}-pbt":  # PBT's experiment: a folder per attempt (and set-aside ones)
                out += [p for p in sorted(folder.iterdir()) if p.is_dir() and f"{study}/{_attempt(p.name)}" in finished]
            elif any(f"{study}/{a}" in finished for a in _suffixes(folder.name)):  # a Train run: <name>-<attempt>
                out.append(folder)
    out += store.temporaries()
    for table in sorted(store.root.glob("*/*.parquet")):
        out += compact.leftovers(table)
    return [(p, _size(p)) for p in out]


def _attempt(name: str) -> str:
    """A PBT folder's attempt: `<attempt>` or `<attempt>.before-<run id>`."""
    return name.split(".before-")[0]


def _suffixes(name: str) -> list[str]:
    """The attempts a Train run folder's name may end with: its last dash-separated key (12 hex
    digits), alone or with a --fresh run id after it."""
    found = re.search(rf"-([0-9a-f]{{12}})(-{compact.RUN_ID})?$", name)
    return [found.group(1) + (found.group(2) or "")] if found else []


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**28 else f"{size / 2**20:.1f} MiB"
