"""Metric rows -> Parquet tables, written atomically by the driver (never by workers).

Layout: `<root>/<study>/<table>.parquet/` is a directory of Parquet files: a trial row per attempt and
run (`<attempt>-<run_id>.parquet`: a rerun never overwrites an earlier run's row), steps per attempt
and epoch (`<attempt>-<epoch>.parquet`: a resumed run continues its attempt's), so runs accumulate
and `pandas.read_parquet(dir)` reads them all. Once a run's trials have finished, their parts are
compacted into one part per table and run (compact.py); readers here push filters down.
Each file is written to a hidden temporary name and renamed into place: readers (pyarrow skips
names starting with '.' or '_') see a whole file or none, whenever the process dies.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.results import compact, schemas
from workloads.common import TMP_MARK, atomic_path

FORMAT_VERSION = 3  # bump when the table layout changes incompatibly (3: keys from the fields off their defaults)
READABLE = (2, 3)  # formats this version reads; a format-2 folder is marked 3 by the first run that writes to it
MARKER = "orchestrator-results.json"
TABLES = ("trials", "steps")
FINISHED = "TERMINATED"  # the status of a trial that ran to its end
STOPPED = "STOPPED"  # stopped early by the scheduler (ASHA): a result, kept on resume of an ASHA run
ABORTED = "ABORTED"  # ended before its final report (the run was stopped): resume runs it again
DONE = (FINISHED, STOPPED)  # statuses that are results (a run exits 0 with them)
EARLY = "stopped early by"  # the start of a STOPPED row's error (older versions wrote STOPPED for ABORTED)


class StoreError(RuntimeError):
    """The results directory cannot be used: the CLI prints it as one line."""


def report_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """A columnar report (scalars and equal-length 1-D arrays) -> one row per array entry."""
    columns = {k: (np.asarray(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in report.items()}
    lengths = {v.shape[0] for v in columns.values() if isinstance(v, np.ndarray) and v.ndim == 1}
    if len(lengths) > 1:
        raise ValueError(f"report arrays differ in length: {sorted(lengths)}")
    if not lengths:
        return pd.DataFrame([columns])
    n = lengths.pop()
    return pd.DataFrame({k: (v if isinstance(v, np.ndarray) else [v] * n) for k, v in columns.items()})


def config_columns(config: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Config fields as flat scalar columns: tuples become comma-joined strings."""
    out = {}
    for key, value in config.items():
        if key in exclude:
            continue
        if isinstance(value, (tuple, list)):
            value = ",".join(str(v) for v in value)
        out[key] = value
    return out


class ResultStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def open_for_writing(self) -> None:
        """Create the root (or check its version) and prove it writable, before any work starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / MARKER
            if marker.exists():
                self._check_version(marker)
            else:
                _atomic_write_bytes(marker, json.dumps({"format_version": FORMAT_VERSION}).encode())
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-", delete=True)
            probe.close()
        except OSError as exc:
            raise StoreError(f"results directory {self.root} is not writable: {exc.strerror or exc}") from None

    def mark_format(self) -> None:
        """Mark a folder of an older readable format as this one's: by a run holding the lock, once it
        goes ahead (a run refused by its checks leaves the folder to the version that wrote it)."""
        marker = self.root / MARKER
        if self._check_version(marker) != FORMAT_VERSION:
            _atomic_write_bytes(marker, json.dumps({"format_version": FORMAT_VERSION}).encode())

    def open_for_reading(self) -> None:
        marker = self.root / MARKER
        if not marker.exists():
            raise StoreError(f"no results in {self.root}: run `python -m orchestrator run ...` first")
        self._check_version(marker)

    def _check_version(self, marker: Path) -> int:
        try:
            version = json.loads(marker.read_text()).get("format_version")
        except (OSError, ValueError, AttributeError):
            raise StoreError(f"{marker} is unreadable: not a results directory of this tool?") from None
        if version not in READABLE:
            raise StoreError(
                f"{self.root} holds results format {version}, this version reads "
                f"{'/'.join(map(str, READABLE))} and writes {FORMAT_VERSION}: use another --results directory"
            )
        return version

    def table_dir(self, study: str, table: str) -> Path:
        return self.root / study / f"{table}.parquet"

    def write(self, study: str, table: str, name: str, frame: pd.DataFrame, schema: pa.Schema | None = None,
              constants: Mapping[str, Any] | None = None) -> Path:
        """Write one part file atomically, with the table's whole `schema` when given (schemas.py);
        `constants`: columns holding one value on every row (which trial and run), over the frame's
        own (added as Arrow columns: a pandas column each cost a trial's write more than its rows).
        Returns its path."""
        directory = self.table_dir(study, table)
        path = directory / f"{name}.parquet"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"could not write {path}: {exc.strerror or exc}; earlier results are intact") from None
        frame, constants = _sanitize(frame), dict(constants or {})
        if schema is None:
            arrow = pa.Table.from_pandas(frame.assign(**constants), preserve_index=False)
        else:
            paths = schemas.path_columns([schema])
            frame = self._relative(frame, paths)
            constants = {k: self._relative_path(v) if k in paths else v for k, v in constants.items()}
            arrow = schemas.conform(frame, schema, constants)
        try:
            with atomic_path(path) as tmp:
                pq.write_table(arrow, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
        except OSError as exc:  # disk full, read-only, gone: the earlier parts stay as they were
            raise StoreError(f"could not write {path}: {exc.strerror or exc}; earlier results are intact") from None
        return path

    def exists(self, study: str, table: str, name: str) -> bool:
        """Is part `name` written (as its own file, or held by a compacted part)?"""
        directory = self.table_dir(study, table)
        if (directory / f"{name}.parquet").exists():
            return True
        return f"{name}.parquet" in compact.replaced(list(directory.glob(f"{compact.PREFIX}*.parquet")))

    def compact_run(self, study: str, run_id: str, attempts: list[str]) -> int:
        """Compact every table's parts of these (finished) attempts into one part per table for this run
        (compact.py); the number of parts merged."""
        merged = 0
        for directory in sorted((self.root / study).glob("*.parquet")):
            if directory.is_dir():
                stems = [p.stem for p in compact.parts(directory) if not p.name.startswith(compact.PREFIX)]
                merged += compact.compact(directory, run_id, compact.trial_parts(stems, attempts))
        return merged

    def finished(self, study: str, keys: list[str], keep_stopped: bool = False,
                 aliases: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Trial rows among `keys` that finished in an earlier run, each trial's from its latest
        finished run (a trial may have many rows: minimax writes one per learning rate); with
        `keep_stopped` (an ASHA run), trials ASHA stopped early count as finished. Rows stored under
        another key (`aliases`: format 2's key of a trial -> today's; and those earlier runs recorded)
        count as their trial's, `stored_key` saying what they were stored under. Reads the parts of
        the runs whose specs name these keys (and of runs with no spec), not the folder's history."""
        runs = self.read(study, "runs", columns=["run_id", "trial_key", "stored_key"])
        aliases = {**_recorded_aliases(runs), **(aliases or {})}
        wanted = sorted({*keys, *aliases})
        statuses = [FINISHED, STOPPED] if keep_stopped else [FINISHED]
        where = ds.field("trial_key").isin(wanted) & ds.field("status").isin(statuses)
        trials = _aliased(self.read(study, "trials", where=where, runs=_runs_naming(runs, wanted)), aliases)
        return latest_finished(trials, keys, keep_stopped)

    def naming(self, study: str, keys: list[str]) -> Callable[[str | None], bool] | None:
        """Which runs' parts can hold rows of `keys` (for read's `runs`): _runs_naming of the runs table."""
        return _runs_naming(self.read(study, "runs", columns=["run_id", "trial_key", "stored_key"]), keys)

    def current(self, study: str, run_id: str | None = None) -> tuple[pd.DataFrame, int]:
        """(rows, trials missing): by default the study's current results, i.e. for each trial of
        the spec of its latest `run`, its latest finished rows, whichever run produced them (read from
        the runs that name those trials); with `run_id`, that run's rows alone (missing 0)."""
        specs = self.read(study, "runs")
        aliases = _recorded_aliases(specs)
        if run_id is not None:
            trials = _aliased(self.read(study, "trials"), aliases)
            if trials.empty:
                raise StoreError(f"no trials recorded yet for {study} in {self.root}")
            picked = trials[trials["run_id"] == run_id]
            if picked.empty:
                raise StoreError(f"no run {run_id!r} in {study}; runs: {', '.join(sorted(trials['run_id'].unique()))}")
            return picked.reset_index(drop=True), 0
        if specs.empty:  # results written before run specs were recorded: every trial ever finished
            trials = _aliased(self.read(study, "trials"), aliases)
            keys = list(trials["trial_key"].unique()) if len(trials) else []
        else:
            keys = list(specs.loc[specs["run_id"] == specs["run_id"].max(), "trial_key"])
            wanted = sorted({*keys, *(k for k, v in aliases.items() if v in set(keys))})
            trials = _aliased(self.read(study, "trials", runs=_runs_naming(specs, wanted)), aliases)
        if trials.empty and (specs.empty or self.read(study, "trials", columns=["trial_key"]).empty):
            raise StoreError(f"no trials recorded yet for {study} in {self.root}")
        rows = latest_finished(trials, keys)
        return rows, len(set(keys) - set(rows["trial_key"] if len(rows) else ()))

    def write_spec(self, study: str, run_id: str, frame: pd.DataFrame) -> None:
        """The trials this run's spec asks for (the `runs` table): what `report` calls current, and
        what tells a reader which runs' parts hold a trial's rows (_runs_naming). By the lock's holder
        only: the table is then compacted whole into one part (a row per trial and run, small), so
        that every lookup reads one file of it however many runs the folder holds."""
        self.write(study, "runs", run_id, frame, schemas.table_schema("runs", {}))
        directory = self.table_dir(study, "runs")
        try:
            compact.finish(directory)  # leftovers of a cut-short compaction first: the new part holds the rest
            compact.compact(directory, run_id, [p.stem for p in compact.parts(directory)])
        except (OSError, ValueError, pa.ArrowException):  # the parts stay as they are: read whole, only slower
            pass

    def sweep_temporaries(self) -> int:
        """Remove temporary files that killed writers left behind (hidden, so no reader ever saw
        them). Only for the holder of the results directory's lock: no other writer is running."""
        removed = 0
        for tmp in self.temporaries():
            tmp.unlink(missing_ok=True)
            removed += 1
        for directory in self.root.glob("*/*.parquet"):  # and parts a cut-short compaction left (compact.py)
            removed += compact.finish(directory)
        return removed

    def temporaries(self) -> list[Path]:
        """Temporary files of writers that were killed (hidden: no reader ever saw them)."""
        return sorted(self.root.glob(f"*/*.parquet/.*{TMP_MARK}*"))

    def read(self, study: str, table: str, where: ds.Expression | None = None,
             columns: list[str] | None = None, runs: Callable[[str | None], bool] | None = None) -> pd.DataFrame:
        """A table's rows (those matching `where`, pushed down to the Parquet reader; its `columns` that
        exist; from the parts of the runs that `runs` accepts, compact.parts), schemas unified (a column
        missing from a part reads as null), its path columns absolute under this root, wherever the
        folder was written."""
        frame, paths = _read(self.table_dir(study, table), where, columns, runs)
        for column in (paths | set(schemas.LEGACY_PATHS)) & set(frame.columns):
            frame[column] = [self._absolute(study, v) for v in frame[column]]
        return frame

    def _relative(self, frame: pd.DataFrame, columns: set[str]) -> pd.DataFrame:
        """Paths under the root, relative to it (a path elsewhere, e.g. under --storage, stays absolute)."""
        present = columns & set(frame.columns)
        if not present:
            return frame
        out = frame.copy()
        for column in present:
            out[column] = [self._relative_path(v) for v in frame[column]]
        return out

    def _relative_path(self, value):
        root = os.path.abspath(self.root)
        if isinstance(value, str) and os.path.isabs(value) and os.path.commonpath([root, os.path.abspath(value)]) == root:
            return os.path.relpath(value, root)
        return value

    def _absolute(self, study: str, value):
        """A stored path, absolute: relative ones under this root; an absolute one from an earlier
        version that no longer exists (the folder was copied or moved), re-rooted at its study's
        folder: `/mnt/shared/results/gan/artifacts/x/generator.pt` -> `<root>/gan/artifacts/x/generator.pt`."""
        if not isinstance(value, str) or not value:
            return value
        path = Path(value)
        if not path.is_absolute():
            return str(self.root.absolute() / path)
        if path.exists() or study not in path.parts:
            return value
        parts = path.parts
        at = len(parts) - 1 - parts[::-1].index(study)
        return str(self.root.absolute().joinpath(*parts[at:]))


def _recorded_aliases(runs: pd.DataFrame) -> dict[str, str]:
    """stored_key -> trial_key of kept rows stored under another key, as earlier runs (the `runs`
    table) recorded them."""
    if "stored_key" not in runs:
        return {}
    moved = runs.dropna(subset=["stored_key"]).sort_values("run_id")  # a later run's mapping wins
    moved = moved[moved["stored_key"] != moved["trial_key"]]
    return dict(zip(moved["stored_key"], moved["trial_key"]))


def _runs_naming(runs: pd.DataFrame, keys: list[str]) -> Callable[[str | None], bool] | None:
    """Which parts of the trials table can hold rows of `keys`: a trial's row is written by a run whose
    spec names it, and compacted by one that ran or kept it (also naming it, as trial_key or
    stored_key). So: parts of those runs, of runs with no spec (written before specs, or a spec lost),
    and parts named without a run (format 2's). None (every part) when no spec is recorded."""
    if runs.empty or "trial_key" not in runs:
        return None
    named = runs["trial_key"].isin(keys)
    if "stored_key" in runs:
        named |= runs["stored_key"].isin(keys)
    naming, known = set(runs.loc[named, "run_id"]), set(runs["run_id"])
    return lambda run: run is None or run in naming or run not in known


def _aliased(trials: pd.DataFrame, aliases: Mapping[str, str]) -> pd.DataFrame:
    """`trials` with each row's trial_key mapped through `aliases` (stored key -> today's key), the key
    it is stored under kept as `stored_key`."""
    if trials.empty or "trial_key" not in trials:
        return trials
    return trials.assign(stored_key=trials["trial_key"], trial_key=[aliases.get(k, k) for k in trials["trial_key"]])


def latest_finished(table: pd.DataFrame, keys, keep_stopped: bool = True) -> pd.DataFrame:
    """Rows of finished trials among `keys` (and, with `keep_stopped`, of trials a scheduler stopped
    early), each trial's from its latest such run."""
    if table.empty or "trial_key" not in table:
        return pd.DataFrame()
    early = (table["status"] == STOPPED) & table.get("error", pd.Series("", index=table.index)).fillna("").str.startswith(EARLY)
    done = table[table["trial_key"].isin(list(keys)) & ((table["status"] == FINISHED) | (early & keep_stopped))]
    latest = done.groupby("trial_key")["run_id"].transform("max")
    return done[done["run_id"] == latest].reset_index(drop=True)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A table (a folder of Parquet parts, or one file) as one frame, the parts' schemas unified (a
    column missing from a part reads as null); path columns as stored (relative to the results root)."""
    return _read(Path(path))[0]


def _read(path: Path, where: ds.Expression | None = None, columns: list[str] | None = None,
          runs: Callable[[str | None], bool] | None = None) -> tuple[pd.DataFrame, set[str]]:
    """(the table, its path columns). pyarrow.dataset reads the parts in parallel, filters pushed
    down; compact.parts leaves out hidden files (writers' temporaries) and parts a compacted one holds."""
    if path.is_file():
        return pd.read_parquet(path), schemas.path_columns([pq.read_schema(path)])
    for attempt in range(5):  # a run compacting meanwhile (a reader holds no lock) deletes what it listed
        try:
            files = compact.parts(path, runs)
            if not files:
                return pd.DataFrame(), set()
            parts = [pq.read_schema(f) for f in files]
            schema = pa.unify_schemas(parts, promote_options="permissive")
            dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
            picked = [c for c in columns if c in schema.names] if columns is not None else None
            return dataset.to_table(filter=where, columns=picked).to_pandas(), schemas.path_columns(parts)
        except (FileNotFoundError, pa.ArrowException) as exc:  # listed, then gone: list again
            if attempt == 4 or (isinstance(exc, pa.ArrowException) and "No such file" not in str(exc)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _sanitize(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns of mixed None/float -> float; numpy scalars are handled by pyarrow."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            values = [v for v in out[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]
            if values and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
                out[column] = pd.to_numeric(out[column])
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
