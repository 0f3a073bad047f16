"""Which rows of earlier runs are this run's results: its trials' latest finished rows, found by key,
and only where they were computed as this run would compute them.

A key leaves out the fields at their class defaults (spec.trial_key), so two things can make a kept
row another computation than its key says: a default that moved between versions (the row's recorded
config then differs from today's on a field both have), and a row of results format 2, whose keys left
the Scaling out (its recorded world size or device then differs from this run's). Such rows are
rerun, with one line saying why.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pandas as pd

from orchestrator.results import schemas
from orchestrator.results.store import ResultStore, config_columns
from orchestrator.studies.registry import WORKLOADS
from orchestrator.studies.spec import LOCAL_FIELDS, Experiment, legacy_key, result_scaling


def kept_rows(store: ResultStore, exp: Experiment, keys: list[str], say: Callable[[str], None]
              ) -> tuple[pd.DataFrame, frozenset[str]]:
    """(the finished rows of `exp`'s trials (ASHA's early stops count for an ASHA run), the keys of
    trials that finished before but are run again here). Those run as new attempts (`key-run_id`, as
    under --fresh): the earlier attempt's parts may be compacted, and its checkpoints are another
    computation's, so nothing of it is resumed or written over."""
    aliases = {legacy_key(c): key for c, key in zip(exp.trial_configs(), keys)}  # format 2's keys -> today's
    done = store.finished(exp.study, keys, exp.scheduler == "asha", aliases)
    if done.empty:
        return done, frozenset()
    other_scaling = _format2_scaling_differs(exp, done)
    fields = _moved_fields(exp, done)
    moved = pd.Series([bool(f) for f in fields], index=done.index) & ~other_scaling
    named = ", ".join(sorted(set().union(*(f for f, m in zip(fields, moved) if m))))
    for mask, why in ((other_scaling, "ran under another Scaling (results format 2 did not key it)"),
                      (moved, f"were computed with other values of fields now at their defaults ({named})")):
        if mask.any():
            say(f"[{exp.study}] {done.loc[mask, 'trial_key'].nunique()} earlier finished trials {why}: running them again")
    rerun = other_scaling | moved
    return done[~rerun].reset_index(drop=True), frozenset(done.loc[rerun, "trial_key"])


def _format2_scaling_differs(exp: Experiment, done: pd.DataFrame) -> pd.Series:
    """Rows stored under another key (format 2's) whose recorded world size or device is not this run's."""
    workload = WORKLOADS[exp.study]
    config = exp.trial_configs()[0]
    expected = result_scaling(exp.scaling, workload.runs_distributed(config) and exp.scheduler != "pbt")
    legacy = done["stored_key"] != done["trial_key"] if "stored_key" in done else pd.Series(False, index=done.index)
    differs = pd.Series(False, index=done.index)
    if "world_size" in done:
        differs |= done["world_size"].notna() & (done["world_size"] != expected["num_workers"])
    if "device" in done:
        fallback = done["cpu_fallback"].fillna(False).astype(bool) if "cpu_fallback" in done else False
        on_gpu = (done["device"] == "cuda") | fallback
        differs |= done["device"].notna() & (on_gpu != expected["use_gpu"])
    return legacy & differs


def _moved_fields(exp: Experiment, done: pd.DataFrame) -> list[set[str]]:
    """Per row, the fields on which its recorded config differs from its trial's config today, among
    those both have (a null or missing column: a field the row's version did not have). Fields the
    workload reports itself (a PBT-moved lr, CLIP's image counts) and machine-local ones are not compared."""
    workload = WORKLOADS[exp.study]
    skip = {*LOCAL_FIELDS, *workload.pbt, *workload.columns.get("trials", {}), *schemas.WORKER, *schemas.TRIAL,
            *schemas.IDS}
    today = {exp.key(c): config_columns(dataclasses.asdict(c), workload.row_exclude) for c in exp.trial_configs()}
    return [{k for k, v in today.get(key, {}).items() if k not in skip and k in row and _differs(row[k], v)}
            for key, row in zip(done["trial_key"], done.to_dict("records"))]


def _differs(stored: Any, now: Any) -> bool:
    if stored is None or (pd.api.types.is_scalar(stored) and pd.isna(stored)):  # unknown to the row's version
        return False
    if isinstance(now, bool) or isinstance(stored, (bool, np.bool_)):
        return bool(stored) != bool(now)
    if isinstance(now, (int, float)) and not isinstance(stored, str):
        return float(stored) != float(now)
    return str(stored) != str("" if now is None else now)
