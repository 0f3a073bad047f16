"""Compaction: a run's many small parts (a trial row per trial and run, steps per trial and epoch)
merged into one part per table once its trials have finished, so that reading a results folder
costs what its runs hold, not how many files they were written as (a CLIP sweep of 100 pairs x 3
seeds x 40 epochs writes 12,000 steps parts; compacted: one).

A compacted part, `c-<run_id>.parquet`, names the parts it replaces in its Parquet metadata. It is
written whole (a hidden temporary, renamed) before they are deleted, and every reader skips a part
that a compacted part names: each row is read once at every moment, a kill between the two steps
included. The next run (holding the lock) finishes such a compaction by deleting what it names.
Only parts of trials that ran to their end (TERMINATED) are compacted: those are never written again
(a rerun of one is always a new attempt, `key-run_id`: under --fresh, and where cli/kept.py runs a
finished trial again; a trial ASHA stopped may be run on later, so its parts stay as they are).
Readers other than the project's (pandas on the folder, a DuckDB glob) see a cut-short
compaction's leftovers twice until the next run or `clean --yes` removes them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from workloads.common import atomic_path

PREFIX = "c-"  # a compacted part's name: c-<run_id>.parquet
MANIFEST = b"orchestrator.compacted"  # its schema metadata: the names of the parts it holds


def parts(directory: Path, runs: Callable[[str | None], bool] | None = None) -> list[Path]:
    """A table's parts a reader reads: every Parquet file but hidden ones (writers' temporaries) and
    those a compacted part holds (a compaction cut short before it deleted them). With `runs`, only
    parts whose run (run_of; None: a part named without one) it accepts, and only their compacted
    parts' manifests are read: a reader looking for some trials' rows opens the files of the runs
    that recorded them (store.finished), not every footer of the folder's history."""
    files, held = _listing(directory, runs)
    return [p for p in files if p.name not in held]


def leftovers(directory: Path) -> list[Path]:
    """Parts a compacted part holds that are still there (a compaction cut short): finish() deletes them."""
    files, held = _listing(directory)
    return [p for p in files if p.name in held]


def _listing(directory: Path, runs: Callable[[str | None], bool] | None = None) -> tuple[list[Path], set[str]]:
    """(a table's visible Parquet files (of the runs `runs` accepts), the names their compacted parts hold)."""
    if not directory.is_dir():
        return [], set()
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
    if runs is not None:
        files = [p for p in files if runs(run_of(p.name))]
    return files, replaced(files)


def replaced(files: list[Path]) -> set[str]:
    """Names of the parts the compacted ones among `files` hold (a footer read each)."""
    held: set[str] = set()
    for path in files:
        if path.name.startswith(PREFIX):
            metadata = pq.read_schema(path).metadata or {}
            held.update(json.loads(metadata.get(MANIFEST, b"[]")))
    return held


def compact(directory: Path, run_id: str, names: list[str]) -> int:
    """Merge the parts `names` (stems) of one table into `c-<run_id>.parquet`, then delete them; the
    number merged (0: fewer than two there, nothing done). Schemas are unified as readers unify them."""
    sources = [directory / f"{name}.parquet" for name in sorted(set(names))]
    sources = [p for p in sources if p.exists()]
    target = directory / f"{PREFIX}{run_id}.parquet"
    if len(sources) < 2 or target.exists():
        return 0
    tables = [pq.ParquetFile(p).read(use_threads=False) for p in sources]  # half read_table's cost on small parts
    table = pa.concat_tables(tables, promote_options="permissive")
    metadata = {**(table.schema.metadata or {}), MANIFEST: json.dumps([p.name for p in sources]).encode()}
    with atomic_path(target) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    for path in sources:  # a kill here leaves some: readers skip them, finish() deletes them
        path.unlink(missing_ok=True)
    return len(sources)


def finish(directory: Path) -> int:
    """Delete parts that a compacted part holds (left by a compaction that was cut short)."""
    left = leftovers(directory)
    for path in left:
        path.unlink(missing_ok=True)
    return len(left)


RUN_ID = r"\d{8}-\d{6}-[0-9a-f]{4}"  # cli/run.py: UTC time and 4 hex digits
_RUN_OF = re.compile(rf"(?:{PREFIX}|.*-)?({RUN_ID})\.parquet")


def run_of(name: str) -> str | None:
    """The run a part's file name says wrote it: `c-<run>`, `<attempt>-<run>` (a trial row), `<run>`
    (a spec); None for names without one (steps parts `<attempt>-NNNNNN`, format 2's `<key>`)."""
    m = _RUN_OF.fullmatch(name)
    return m.group(1) if m else None


def trial_parts(stems: list[str], attempts: list[str]) -> list[str]:
    """Among a table's part stems, those of these (finished) attempts: the attempt itself (a per-trial
    table), its rows (`<attempt>-<run id>`), its steps (`<attempt>-NNNNNN`). A stem of that form that
    is in fact another attempt's (`<key>-<run id>` under --fresh) is a finished or abandoned one's:
    a --fresh attempt is never resumed, so its parts are never written again either."""
    wanted = set(attempts)
    suffix = re.compile(rf"(.+)-(?:\d{{6}}|{RUN_ID})")
    return [s for s in stems if s in wanted or ((m := suffix.fullmatch(s)) and m.group(1) in wanted)]
