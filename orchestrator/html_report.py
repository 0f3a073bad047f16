"""One self-contained HTML page for a results directory: every study's summary, plots and sample
grids (embedded as data URIs, so the file can be mailed or archived alone) and a comparison of runs."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import pandas as pd

from orchestrator.registry import WORKLOADS
from orchestrator.report import study_report
from orchestrator.results import ResultStore
from workloads.common import atomic_path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}img{max-width:100%;margin:.3em 0}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.grids{display:flex;flex-wrap:wrap;gap:.5em}.grids figure{width:32%;margin:0}.grids img{width:100%}
figcaption{font-size:12px;color:#555;text-align:center}h2{border-bottom:2px solid #ddd}"""


def _img(path: Path, caption: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    tag = f'<img alt="{html.escape(path.name)}" title="{html.escape(str(path))}" src="data:image/png;base64,{data}">'
    return f"<figure>{tag}<figcaption>{html.escape(path.stem)}</figcaption></figure>" if caption else tag


def _runs(trials: pd.DataFrame, study: str) -> str:
    """One row per run: trials, ok, best metric."""
    workload = WORKLOADS[study]
    ok = trials["status"] == "TERMINATED"
    metric = trials[workload.metric].where(ok) if workload.metric in trials else pd.Series(index=trials.index, dtype=float)
    runs = pd.DataFrame({"run_id": trials["run_id"], "ok": ok, "metric": metric}).groupby("run_id").agg(
        rows=("ok", "size"), ok=("ok", "sum"), best=("metric", "min" if workload.mode == "min" else "max"))
    return runs.rename(columns={"best": f"best {workload.metric} ({workload.mode})"}).to_html(float_format=lambda v: f"{v:.4g}")


def write_html(store: ResultStore, run_id: str | None = None) -> Path:
    sections = []
    for study in WORKLOADS:
        trials = store.read(study, "trials")
        if trials.empty:
            continue
        chosen = run_id if run_id in set(trials["run_id"]) else None
        text, images = study_report(study, store, chosen)
        singles = [p for p in images if p.exists() and "prompts" not in p.parts and "samples" not in p.parts]
        grids = [p for p in images if p.exists() and p not in singles]
        sections.append(
            f"<h2>{study}</h2><pre>{html.escape(text)}</pre>"
            + "".join(_img(p) for p in singles)
            + (f'<div class="grids">{"".join(_img(p, caption=True) for p in grids)}</div>' if grids else "")
            + f"<h3>runs</h3>{_runs(trials, study)}"
        )
    if not sections:
        sections.append("<p>No results yet: run <code>python -m orchestrator run all</code>.</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>orchestrator report</title>"
            f"<style>{STYLE}</style></head><body><h1>Study report</h1>"
            f"<p>{html.escape(str(store.root.resolve()))}, written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
            + "".join(sections) + "</body></html>")
    path = store.root / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
