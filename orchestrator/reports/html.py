"""One self-contained HTML page for a results directory, read like a paper's results section: each
study headed by its key result in one sentence, its numbers in real (sortable) tables rounded to
what they mean, its plots and image grids at full width, the text summary folded below, and a
table of runs. Images are embedded as data URIs, so the file can be mailed or archived alone."""

from __future__ import annotations

import base64
import html
import os
import time
import urllib.parse
from pathlib import Path

import pandas as pd

from orchestrator.reports import clip as compare
from orchestrator.reports import study as report
from orchestrator.studies.registry import WORKLOADS
from orchestrator.results.store import FINISHED, ResultStore, StoreError
from workloads.common import atomic_path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h2{border-bottom:2px solid #ddd;margin-top:2em}.key{font-size:1.1em;background:#f3f7fb;border-left:4px solid #4a7fb5;
padding:.5em .8em}.wrap{overflow-x:auto;max-width:100%;margin:.5em 0}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}th{background:#f4f4f4;cursor:pointer;white-space:normal;vertical-align:bottom}
td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto;display:block;margin:.5em 0}
.grids{display:grid;grid-template-columns:1fr;gap:1em}@media(min-width:1000px){.grids.two{grid-template-columns:1fr 1fr}}
figure{margin:0}figcaption{font-size:13px;color:#555}.samples img{image-rendering:pixelated;width:100%;max-width:560px}
.plot{overflow-x:auto;max-width:100%}.hint{display:none;font-size:12px;color:#777;margin:0}.sd{color:#666;font-size:12px}
.legend{font-size:12px;color:#555;margin:.2em 0 .8em}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}details{margin:.8em 0}
@media(max-width:700px){table,tbody,tr,td{display:block;width:100%;box-sizing:border-box}thead{display:none}
tr{border:1px solid #ccc;margin:.6em 0}td{border:0;border-bottom:1px solid #eee;text-align:right;white-space:normal;
overflow-wrap:anywhere;padding-left:45%;position:relative}td:first-child{text-align:right;font-weight:600}
td::before{content:attr(data-label);position:absolute;left:8px;width:40%;text-align:left;color:#555;font-weight:400}
.plot img{width:900px;max-width:none}.hint{display:block}}"""
# a phone: each table row becomes a card of "column: value" lines (nothing to scroll); a plot of several
# panels keeps a readable 900 px and scrolls sideways inside its own box (swipe), the page never does

# click a header to sort by it (numbers numerically, the rest as text); click again to reverse
SORT = """document.querySelectorAll('table.sortable th').forEach((th,i)=>th.onclick=()=>{const t=th.closest('table'),
b=t.tBodies[0],r=[...b.rows],d=th.dataset.d=th.dataset.d==='1'?'-1':'1',v=x=>{const s=x.cells[i].innerText,
n=parseFloat(s);return isNaN(n)?s:n};r.sort((x,y)=>{const p=v(x),q=v(y);return (p>q?1:p<q?-1:0)*d});
r.forEach(x=>b.appendChild(x))});"""


EMBEDDED_GRIDS = 24  # sample and prompt grids embedded per study; past it they are linked (a 100-pair sweep: ~60 MB)


def _grid(path: Path, caption: str, root: Path, embed: bool, photo: bool = False) -> str:
    """A grid embedded (`_img`), or past the cap a link to its file, relative to report.html."""
    if embed:
        return _img(path, caption, photo)
    href = html.escape(urllib.parse.quote(os.path.relpath(path, root)))  # prompt names may hold # ? %
    return f'<p class="linked"><a href="{href}">{html.escape(caption or path.stem)}</a></p>'


def _img(path: Path, caption: str = "", photo: bool = False) -> str:
    """An embedded image; `photo`: re-encoded as JPEG (quality 85), ~5x smaller than the PNG of a grid of
    photographs (the CLIP prompt grids, ~630 KB each); plots and sample grids stay lossless PNG."""
    data, kind = path.read_bytes(), "png"
    if photo:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")  # transparent areas white, as on the page
            flat.paste(rgba, mask=rgba.getchannel("A"))
            flat.save(buffer, "JPEG", quality=85)
        data, kind = buffer.getvalue(), "jpeg"
    tag = (f'<img alt="{html.escape(caption or path.stem)}" '
           f'src="data:image/{kind};base64,{base64.b64encode(data).decode()}">')
    return f"<figure>{tag}<figcaption>{html.escape(caption)}</figcaption></figure>" if caption else tag


# what a column means, shown when the pointer rests on its header (and listed under the table)
GLOSSARY = {
    "measured": "learning rates at which the run reached the saddle (distance < reach_tol) within T steps",
    "analytic": "where the update's spectral radius is below 1", "grid points": "learning rates tried",
    "converged": "rows contracting towards the saddle (measured rate < 1), however slowly",
    "reached": "rows whose distance to the saddle fell below reach_tol within T steps",
    "disagree": "grid points where reaching and the analytic verdict differ",
    "fid": "Fréchet distance of generated to real test images in the FashionMNIST classifier's features (lower is better)",
    "class_coverage": "share of the 10 classes the classifier finds among generated images",
    "class_entropy": "entropy of those classes, normalised (1: all equally often)",
    "d_x": "D's mean output on real images (1: sure they are real)", "d_g_z": "D's mean output on generated images",
    "images_per_s": "training images per second", "wall_time_s": "seconds the trial ran",
    **{f"{d}_r{k}": f"{'text to image' if d == 't2i' else 'image to text'} recall@{k}: share of queries whose match "
       f"ranks in the top {k}" for d in ("t2i", "i2t") for k in (1, 5, 10)},
    **{f"{d}_median_rank": "median rank of the true match (1 is best)" for d in ("t2i", "i2t")},
    "image_params": "image encoder parameters", "text_params": "text encoder parameters",
    "heads img/s": "training speed of the projection heads on cached features (extraction is separate)",
    "train img/s": "training images per second, encoders and heads",
    "chosen epochs": "the epoch chosen on val, per seed", "seeds": "trials averaged (mean ± std over seeds)",
}


def _table(frame: pd.DataFrame, digits: dict[str, int] | None = None) -> str:
    """A sortable HTML table; floats rounded per column (`digits`, default 3 significant). Each cell
    carries its column's name (data-label): on a phone the rows become cards of labelled values."""
    digits = digits or {}

    def cell(value, column) -> str:
        if isinstance(value, float):
            d = digits.get(column)
            return "" if pd.isna(value) else (f"{value:.{d}f}" if d is not None else f"{value:.3g}")
        return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)

    def shown(text: str) -> str:  # "mean ± std" on two lines: a table of ten such columns fits 1100 px
        mean, pm, sd = text.partition(" ± ")
        return html.escape(mean) + (f'<br><span class="sd">± {html.escape(sd)}</span>' if pm else "")

    head = "".join(f'<th title="{html.escape(GLOSSARY.get(str(c), ""))}">{html.escape(str(c)).replace("_", "_<wbr>")}</th>'
                   for c in frame.columns)  # a header may wrap at _; its meaning on hover
    rows = "".join("<tr>" + "".join(f'<td data-label="{html.escape(str(c))}">{shown(cell(v, c))}</td>'
                                    for c, v in zip(frame.columns, row)) + "</tr>"
                   for row in frame.itertuples(index=False, name=None))
    known = [c for c in frame.columns if GLOSSARY.get(str(c))]
    legend = ("<details class=\"legend\"><summary>columns</summary>" + "; ".join(
        f"<b>{html.escape(str(c))}</b>: {html.escape(GLOSSARY[str(c)])}" for c in known) + "</details>") if known else ""
    return (f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f"</div>{legend}")


def _minimax(trials: pd.DataFrame) -> tuple[str, str]:
    ranges = report.minimax_ranges(trials)
    agree = int((ranges["grid points"] - ranges["disagree"]).sum())
    widest = ranges.loc[ranges["reached"].idxmax()]
    never = ", ".join(ranges.loc[ranges["reached"] == 0, "algorithm"]) or "none"
    key = (f"The learning rates at which runs reach the saddle within T steps match the analytic stable ones "
           f"(spectral radius below 1) at {agree} of {int(ranges['grid points'].sum())} grid points; "
           f"{widest['algorithm']} reaches it on the widest range ({widest['measured']}), and {never} "
           f"reach{'es' if ',' not in never and never != 'none' else ''} it at no learning rate.")
    return key, _table(ranges)


def _gan(trials: pd.DataFrame) -> tuple[str, str]:
    best = WORKLOADS["gan"].best(trials)
    best = trials.sort_values("fid").iloc[0] if best is None else best  # rows older than val_fid
    name = best.get("trial_name", best["trial_key"])
    seeds = report.gan_over_seeds(trials)
    counts = report.fid_counts(trials)
    key = (f"{html.escape(str(name))} (chosen by val_fid on the selection half of the test images): FID "
           f"{best['fid']:.0f} on the held-out half after {int(best['epochs_done'])} epochs (lower is better; "
           f"the classifier's features, comparable within this machine's runs and equal fid_images), "
           f"{best['class_coverage']:.0%} of the 10 classes covered." + (f" {counts}" if counts else ""))
    columns = [c for c in ("trial_name", "lr", "beta1", "epochs_done", "fid_images", "val_fid", "fid", "class_coverage",
                           "class_entropy", "d_x", "d_g_z", "images_per_s", "wall_time_s") if c in trials]
    extra = f"<pre>{html.escape(chr(10).join(seeds))}</pre>" if seeds else ""
    return key, _table(trials[columns], {"val_fid": 0, "fid": 0, "class_coverage": 2, "class_entropy": 2, "d_x": 2, "d_g_z": 2,
                                         "images_per_s": 0, "wall_time_s": 0}) + extra


def _clip(trials: pd.DataFrame) -> tuple[str, str]:
    table = compare.comparison(trials)
    best = table.iloc[0]
    n = int(trials["test_images"].iloc[0]) if "test_images" in trials else 0
    ci = best.get(f"{compare.HEADLINE} 95% CI", "")
    interval = f", 95% CI {ci.split(' ', 1)[1]}" if " [" in str(ci) else ""
    key = (f"Best pair {html.escape(best['pair'])}: text-to-image R@10 {best['t2i_r10']} on {n} test images "
           f"(mean ± std over {best['seeds']} seed{'s' if best['seeds'] > 1 else ''}{interval}; published on the 1000 "
           "official test images: UVSE 0.515, DVSA 0.447).")
    lines = compare.conclusion(trials)
    conclusion = "<ul>" + "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:]) + "</ul>"
    dataset = str(trials["dataset"].iloc[0]) if "dataset" in trials else ""
    published = (f"<p>Published on the same 1000 test images:</p>{_table(compare.PUBLISHED, {r: 3 for r in compare.RECALLS})}"
                 if compare.comparable(n, dataset) else f"<p>{html.escape(compare.published_rows(n, dataset))}</p>")
    shown = table.drop(columns=["_mean", f"{compare.HEADLINE} 95% CI"], errors="ignore")  # the CI: in the key sentence
    return key, (_table(shown) + published + (f"<p>{html.escape(lines[0])}</p>{conclusion}"
                                                                      if lines else ""))


KEYS = {"minimax": _minimax, "gan": _gan, "clip": _clip}


def _runs(trials: pd.DataFrame, study: str) -> str:
    """One row per run: its rows, how many finished, and its headline (minimax: converged rows, not a
    best-of distance, which is ~1e-300 for any converged lane)."""
    workload = WORKLOADS[study]
    ok = trials["status"] == FINISHED  # a trial stopped early is not a result to rank
    frame = pd.DataFrame({"run": trials["run_id"], "ok": ok})
    if workload.headline_count:
        count = workload.headline_count
        frame[count] = trials[count].astype(bool) & ok
        runs = frame.groupby("run").agg(rows=("ok", "size"), finished=("ok", "sum"), **{count: (count, "sum")})
    else:
        runs = frame.groupby("run").agg(rows=("ok", "size"), finished=("ok", "sum"))
        label = f"{workload.metric} of the best" + (f" by {workload.selection[0]}" if workload.selection else "")
        chosen = {run: workload.best(group[ok.loc[group.index]]) for run, group in trials.groupby("run_id")}
        runs[label] = [float("nan") if chosen.get(run) is None or workload.metric not in trials
                       else chosen[run][workload.metric] for run in runs.index]
    return _table(runs.reset_index())


def _section(study: str, store: ResultStore, run_id: str | None) -> str | None:
    everything = store.read(study, "trials")
    if everything.empty:
        return None
    chosen = run_id if run_id in set(everything["run_id"]) else None
    try:
        text, images, trials = report.study_report(study, store, chosen)  # its rows: finished, with `attempt`
    except StoreError as exc:
        return f"<h2>{study}</h2><p>{html.escape(str(exc))}</p>"
    key, tables = KEYS[study](trials)
    images = [p for p in images if p.exists()]
    plots = [p for p in images if "prompts" not in p.parts and "samples" not in p.parts]
    samples = [p for p in images if "samples" in p.parts]
    prompts = [p for p in images if "prompts" in p.parts]
    body = [f"<h2>{study}</h2>", f'<p class="key">{key}</p>', tables,
            *(f'<div class="plot">{_img(p)}</div><p class="hint">⇆ wider than the screen: swipe the figure sideways</p>'
              for p in plots)]
    shown = [p for stem in dict.fromkeys(p.stem for p in prompts) for p in prompts if p.stem == stem]  # as below
    embedded = set((samples + shown)[:EMBEDDED_GRIDS])
    if len(samples) + len(prompts) > EMBEDDED_GRIDS:
        body.append(f'<p class="cap">{EMBEDDED_GRIDS} of {len(samples) + len(prompts)} grids embedded; the other '
                    f"{len(samples) + len(prompts) - EMBEDDED_GRIDS} are linked to their files under this folder, "
                    "which keeps this page small (copy the folder, not the page alone, to keep them)</p>")
    root = store.root
    if samples:
        body.append('<div class="grids two samples">' + "".join(
            _grid(p, f"{_trial_of(p, trials, 'trial_name')}: {p.stem.replace('_', ' ')}", root, p in embedded)
            for p in samples) + "</div>")
    for prompt in dict.fromkeys(p.stem for p in prompts):  # prompt by prompt, each pair's grid at full width
        body.append(f"<h4>prompt: {html.escape(prompt.replace('_', ' '))}</h4>" + "".join(
            _grid(p, _trial_of(p, trials, "pair"), root, p in embedded, photo=True) for p in prompts if p.stem == prompt))
    body.append(f"<details><summary>text summary</summary><pre>{html.escape(text)}</pre></details>")
    body.append(f"<h3>runs</h3>{_runs(everything, study)}")
    return "".join(body)


def _trial_of(grid: Path, trials: pd.DataFrame, column: str) -> str:
    """`column` (trial_name, pair) of the trial whose artifacts hold `grid` (<attempt>/<kind>/<file>)."""
    attempt = grid.parent.parent.name
    rows = trials[trials["attempt"] == attempt] if "attempt" in trials else trials.iloc[:0]
    return str(rows[column].iloc[0]) if len(rows) and column in rows and pd.notna(rows[column].iloc[0]) else attempt


def write_html(store: ResultStore, run_id: str | None = None) -> Path:
    sections = [s for s in (_section(study, store, run_id) for study in WORKLOADS) if s]
    if not sections:
        sections.append("<p>No results yet: run <code>python -m orchestrator run all</code>.</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>orchestrator report</title>"
            f"<style>{STYLE}</style></head><body><h1>Study report</h1>"
            f"<p>{html.escape(str(store.root.resolve()))}, written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
            + "".join(sections) + f"<script>{SORT}</script></body></html>")
    path = store.root / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
