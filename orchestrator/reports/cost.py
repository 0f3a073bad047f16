"""What a study's trials cost: GPU- and CPU-hours per study and per configuration, and money where
the user gives prices.

A trial row holds `cpu_seconds` and `gpu_seconds` (wall time x the CPUs / GPUs it held), the node
types it ran on and how many preemptions and restarts it survived (engine/sink.py). Prices are per
node type, in currency units per hour of one GPU and of one CPU on that type (a node's hourly price
divided over what it holds: a g5.xlarge spot at $0.45/h is {"GPU": 0.45} if its 4 CPUs are counted
free); "default" applies to node types not named:

    {"gpu.spot.1x": {"GPU": 0.45}, "head.cpu": {"CPU": 0.048}, "default": {"GPU": 1.0, "CPU": 0.05}}

A trial that ran on several node types is priced at their mean (its rows do not say how long on each).

What the figures are, and are not: the seconds are Tune's `time_total_s` of the trial (its driver's
clock) times what one attempt holds, so they include waits inside the trial (a Train group restarted
after a reclaim waiting for its new node) but not the idle time of nodes nobody's trial held; a
single-process trial retried by Tune without a checkpoint restarts that clock (its failed attempts'
time is not counted); node types are those of the reports that arrived (rank 0's node). They are an
estimate of the study's share of the bill, not the bill.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from orchestrator.results import StoreError

PRICES_FILE = "prices.json"  # in the results directory; `report --prices FILE` names another


def load_prices(path: Path | None) -> dict[str, dict[str, float]] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        prices = json.loads(Path(path).read_text())
        return {str(t): {str(k): float(v) for k, v in p.items() if k in ("GPU", "CPU")} for t, p in prices.items()}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise StoreError(f"{path}: not a prices file ({{node type: {{\"GPU\": per hour, \"CPU\": per hour}}}}): {exc}") from None


def trial_cost(row: pd.Series, prices: dict[str, dict[str, float]]) -> float:
    """One trial row's cost: its GPU- and CPU-hours at the mean price of the node types it ran on."""
    types = [t for t in str(row.get("node_types") or "").split(",") if t] or ["default"]
    per = [prices.get(t, prices.get("default")) for t in types]
    if any(p is None for p in per):
        return float("nan")  # a node type without a price and no default
    gpu = sum(p.get("GPU", 0.0) for p in per) / len(per)
    cpu = sum(p.get("CPU", 0.0) for p in per) / len(per)
    return (row.get("gpu_seconds") or 0.0) / 3600 * gpu + (row.get("cpu_seconds") or 0.0) / 3600 * cpu


def cost_lines(trials: pd.DataFrame, prices: dict[str, dict[str, float]] | None) -> list[str]:
    """The study's and each configuration's hours (and cost); rows written before these columns
    existed say so instead."""
    if "cpu_seconds" not in trials or trials["cpu_seconds"].isna().all():
        return ["cost: not recorded (rows written before cpu_seconds / gpu_seconds existed)"]
    rows = trials.drop_duplicates("attempt") if "attempt" in trials else trials  # minimax: one row per lr, one trial
    names = rows["trial_name"] if "trial_name" in rows else pd.Series(None, index=rows.index, dtype=object)
    rows = rows.assign(configuration=names.fillna(rows["trial_key"]) if "trial_key" in rows else names)
    if prices is not None:
        rows = rows.assign(cost=rows.apply(lambda r: trial_cost(r, prices), axis=1))
    total = _hours(rows)
    lines = [f"cost: {total}, {int(rows['preemptions'].fillna(0).sum())} preemptions and "
             f"{int(rows['restarts'].fillna(0).sum())} restarts survived"
             f"{'' if prices else f' (no prices: put them in <results>/{PRICES_FILE}, see docs/results.md)'}"]
    if rows["configuration"].nunique() > 1:
        for name, group in rows.groupby("configuration", sort=False):
            lines.append(f"  {name}: {_hours(group)}")
    return lines


def _hours(rows: pd.DataFrame) -> str:
    gpu, cpu = rows["gpu_seconds"].fillna(0).sum() / 3600, rows["cpu_seconds"].fillna(0).sum() / 3600
    text = f"{gpu:.3g} GPU-hours, {cpu:.3g} CPU-hours"
    if "cost" in rows:
        text += f", {rows['cost'].sum():.2f}" + (" (some node types without a price)" if rows["cost"].isna().any() else "")
    return text
