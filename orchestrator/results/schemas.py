"""Every table's whole schema, so that every part one version writes has the same columns and types.

A table is a directory of Parquet parts (one per trial, or per trial and epoch). Parts used to carry
only the columns their rows had (no `fid` at GAN epochs without samples, `error` typed null when
no trial failed), which pandas merges but DuckDB, Polars and Spark refuse ("schema mismatch in
glob"). Now each part is cast to its table's schema: the run's ids, the columns the workload
reports (registry.Workload.columns), what the workers add, the config fields with their declared
types; null where a value is absent. A column nobody declared is kept, after the declared ones, so a
result is never dropped; tests/tables.py checks that real runs write none (every part of a table has
one schema) and reads every table with DuckDB.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.large_string(), "bool": pa.bool_(),
         "path": pa.large_string()}
# "path": a file under the results root, stored relative to it (ResultStore.write) and read back
# absolute under wherever the folder now is (ResultStore.read), so a results folder copied off a
# cluster or moved still reports and generates. The field carries PATH_META in the Parquet schema.
PATH_META = {b"orchestrator": b"path"}
LEGACY_PATHS = ("generator_path", "embeddings_path", "grid")  # absolute in rows of earlier versions

IDS = {"run_id": "str", "study": "str", "trial_id": "str", "trial_key": "str", "trial_name": "str",
       "attempt": "str", "code_version": "str", "node_id": "str", "node_type": "str"}  # every table
# (engine/plan.py: TrialPlan.ids; node_id and node_type: engine/actors.py, where)
WORKER = {"ray_version": "str", "torch_version": "str", "device": "str", "device_name": "str",
          "device_count": "int", "sync_bn": "bool", "cpu_fallback": "bool"}  # engine/actors.py: what ran the trial
TRIAL = {"status": "str", "error": "str", "wall_time_s": "float",  # engine/sink.py: how the trial ended
         # ...and what it cost: the node types it ran on, the preemption notices it checkpointed on, the
         # times it resumed (any cause), and what it held: wall time x the CPUs / GPUs it asked for
         "node_types": "str", "preemptions": "int", "restarts": "int", "cpu_seconds": "float", "gpu_seconds": "float",
         "defaults_key": "str"}  # the config class's defaults (spec.defaults_key): the key's meaning
CHECKPOINTED = {"checkpoint_digest": "str", "restored_from": "str", "restored_digest": "str"}  # steps: Tune
# checkpoints of single-process trials (PBT): the state's digest, and what a restore (an exploit) loaded
RUNS = {"run_id": "str", "study": "str", "profile": "str", "trial_index": "int", "trial_key": "str",
        "trial_name": "str", "params": "str", "scheduler": "str", "kept": "bool", "stored_key": "str",
        "code_version": "str", "started_at": "float"}  # cli/run.py: _spec_frame


def config_types(config: Any, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """A config's fields as columns (results.config_columns: tuples become comma-joined strings)."""
    hints = typing.get_type_hints(type(config))
    out = {}
    for f in dataclasses.fields(config):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        out[f.name] = {bool: "bool", int: "int", float: "float"}.get(hint, "str")
    return out


def table_schema(table: str, reported: dict[str, str], config: Any = None, exclude: tuple[str, ...] = ()) -> pa.Schema:
    """The schema of one table: what the workload reports for it, then ids, worker and trial columns
    (the trials table), config fields (trials)."""
    if table == "runs":
        return _schema(RUNS)
    columns = dict(reported)
    if table == "steps":
        columns.update(CHECKPOINTED)
    if table == "trials":
        columns.update(WORKER)
        if config is not None:
            columns.update(config_types(config, exclude))
        columns.update(TRIAL)
    columns.update(IDS)
    return _schema(columns)


def _schema(columns: dict[str, str]) -> pa.Schema:
    return pa.schema([pa.field(name, TYPES[kind], metadata=PATH_META if kind == "path" else None)
                      for name, kind in columns.items()])


def path_columns(schemas: list[pa.Schema]) -> set[str]:
    """Columns holding paths under the results root, in any of a table's part schemas."""
    return {f.name for schema in schemas for f in schema if (f.metadata or {}).get(b"orchestrator") == b"path"}


def conform(frame: pd.DataFrame, schema: pa.Schema, constants: Mapping[str, Any] | None = None) -> pa.Table:
    """`frame` as an Arrow table of `schema` (absent columns null, values cast to the declared types),
    with any undeclared column kept after them, as pyarrow infers it. `constants`: columns of one value
    on every row, over the frame's own columns of those names, converted as a frame's column would be."""
    n, constants = len(frame), constants or {}
    column = lambda name: pd.Series([constants[name]] * n) if name in constants else frame[name]  # noqa: E731
    arrays, fields = [], []
    for field in schema:
        if field.name in constants or field.name in frame:
            values = column(field.name)
            if pa.types.is_integer(field.type) and values.isna().any():
                values = values.astype("Int64")  # an int column with a gap: nullable, not float
            arrays.append(pa.array(values.tolist() if values.dtype == object else values, type=field.type,
                                   from_pandas=True))
        else:
            arrays.append(pa.nulls(n, type=field.type))
        fields.append(field)
    for name in [*frame.columns, *(c for c in constants if c not in frame.columns)]:
        if name not in schema.names:
            inferred = pa.Table.from_pandas(pd.DataFrame({name: column(name)}), preserve_index=False).column(0)
            arrays.append(inferred.combine_chunks() if isinstance(inferred, pa.ChunkedArray) else inferred)
            fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
