"""Summaries and plots from the Parquet store (never from Ray's trial directories)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from orchestrator.reports import cost
from orchestrator.results.store import STOPPED, ResultStore, StoreError


def study_report(study: str, store: ResultStore, run_id: str | None = None) -> tuple[str, list[Path], pd.DataFrame]:
    """(summary text, images, the trial rows they summarise) of a study's current results (for each trial
    of its latest spec, the latest finished rows, whichever run produced them), or of one run; writes the
    plots. Trials a scheduler stopped early are named in the text, not summarised."""
    trials, missing = store.current(study, run_id)
    trials, stopped = split_stopped(trials)
    if trials.empty:
        raise StoreError(f"no finished trial of {study}'s latest run spec yet ({missing} to run"
                         f"{f', {len(stopped)} stopped early' if len(stopped) else ''}): run it, or pick a run with --run")
    trials = trials.assign(attempt=attempts(trials))
    out_dir = store.root / study / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    text, images = REPORTS[study](store, trials, out_dir)
    text += "\n" + "\n".join(cost.cost_lines(trials, cost.load_prices(store.root / cost.PRICES_FILE)))
    runs = sorted(trials["run_id"].unique())
    where = (f"run {run_id}" if run_id else
             f"current results: {trials['trial_key'].nunique()} trials from run{'s' if len(runs) > 1 else ''} "
             f"{', '.join(runs)}" + (f"; {missing} trials of the latest spec not finished yet" if missing else ""))
    if len(stopped):  # ASHA's early stops are not results to average: named here, left out above
        names = stopped.get("trial_name", stopped["trial_key"]).fillna(stopped["trial_key"]).unique()
        text += f"\n{len(names)} trials stopped early by the scheduler (left out above): {', '.join(map(str, names))}"
    return f"{study} ({where})\n{text}", images, trials


def split_stopped(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of trials that ran to their end, rows of trials a scheduler stopped early)."""
    stopped = trials["status"] == STOPPED if "status" in trials else pd.Series(False, index=trials.index)
    return trials[~stopped].reset_index(drop=True), trials[stopped].reset_index(drop=True)


def attempts(frame: pd.DataFrame) -> pd.Series:
    """Each row's attempt (the trial's file name); rows written before the column existed: the trial key."""
    return frame["attempt"].fillna(frame["trial_key"]) if "attempt" in frame else frame["trial_key"]


def steps_of(store: ResultStore, study: str, trials: pd.DataFrame) -> pd.DataFrame:
    """The steps rows of these trial rows: those of the same attempt (its files, across resumed runs)
    written up to the row's run (`report --run` of a failed run shows its curves, not a later run's),
    under the row's trial key (a kept format-2 row's is today's). Reads only the parts of the runs
    that name these trials, and of those the rows of their keys (pushed down)."""
    keys = sorted({*trials["trial_key"], *trials.get("stored_key", pd.Series(dtype=object)).dropna()})
    steps = store.read(study, "steps", where=ds.field("trial_key").isin(keys), runs=store.naming(study, keys))
    if steps.empty:
        return steps
    rows = trials.drop_duplicates("attempt").set_index("attempt")
    steps = steps.assign(attempt=attempts(steps))
    steps = steps[steps["attempt"].isin(rows.index)]
    steps = steps[steps["run_id"] <= steps["attempt"].map(rows["run_id"])]
    return steps.assign(trial_key=steps["attempt"].map(rows["trial_key"])).reset_index(drop=True)


def _label(trials: pd.DataFrame) -> str:
    """A name for the plot files of these rows: one run id, or a digest of the set."""
    import hashlib

    runs = sorted(trials["run_id"].unique())
    return runs[0] if len(runs) == 1 else "current-" + hashlib.sha1(",".join(sorted(trials["attempt"].unique())).encode()).hexdigest()[:8]


# ---- minimax ------------------------------------------------------------------------------------

def _interval_text(intervals: list[tuple[float, float]]) -> str:
    if not intervals:
        return "none"
    return " U ".join(f"({lo:.4g}, {hi:.4g})" if lo == 0 else f"[{lo:.4g}, {hi:.4g})" for lo, hi in intervals)


def _grid_ranges(lrs: np.ndarray, ok: np.ndarray) -> str:
    """Runs of consecutive converged grid points, as [first, last] ranges."""
    if not ok.any():
        return "none"
    ranges, start = [], None
    for i, flag in enumerate(ok):
        if flag and start is None:
            start = i
        if (not flag or i == len(ok) - 1) and start is not None:
            end = i if flag else i - 1
            ranges.append(f"[{lrs[start]:.4g}, {lrs[end]:.4g}]")
            start = None
    return " U ".join(ranges)


def minimax_ranges(trials: pd.DataFrame) -> pd.DataFrame:
    """Per algorithm: the learning rates at which the runs reached the saddle within T steps (rows of
    older versions, without `reached`: those that converged), the analytic stable ones (spectral
    radius < 1), how many grid points converged (rate < 1) and reached, and at how many grid points
    reaching and the analytic verdict disagree (near an edge: contracting, too slowly for T)."""
    from workloads import minimax

    games = _game_columns(trials)
    several = len(trials.groupby(games)) > 1  # a sweep over the game's settings: one block per game
    rows = []
    for game, rows_of_game in trials.groupby(games, sort=False):
        first = rows_of_game.iloc[0]
        cfg = minimax.Config(a=float(first["a"]), b=float(first["b"]), c=float(first["c"]), lrs=(1.0,))
        for algorithm in [a for a in minimax.ALGORITHMS if a in set(rows_of_game["algorithm"])]:
            sub = rows_of_game[rows_of_game["algorithm"] == algorithm].sort_values("lr")
            reached = sub["reached"] if "reached" in sub and sub["reached"].notna().all() else sub["converged"]
            lrs, ok = sub["lr"].to_numpy(), reached.to_numpy(bool)
            agree = (sub["spectral_radius"].to_numpy() < 1) == ok
            row = {"game": " ".join(f"{k}={v:g}" for k, v in zip(games, game))} if several else {}
            rows.append({**row, "algorithm": algorithm, "measured": _grid_ranges(lrs, ok),
                         "analytic": _interval_text(minimax.stable_intervals(cfg, algorithm, float(lrs.max()))),
                         "grid points": len(sub), "converged": int(sub["converged"].to_numpy(bool).sum()),
                         "reached": int(ok.sum()), "disagree": int((~agree).sum())})
    return pd.DataFrame(rows)


def _game_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in ("a", "b", "c", "x0", "y0", "steps") if c in trials]  # a game: its ranges are read within one


def minimax_report(store: ResultStore, trials: pd.DataFrame, out_dir: Path) -> tuple[str, list[Path]]:
    """The stable learning-rate ranges per algorithm (measured and analytic), a convergence map and
    distance curves (of the first game where the run swept the game's settings)."""
    from workloads import minimax

    first, label = trials.iloc[0], _label(trials)
    cfg = minimax.Config(a=float(first["a"]), b=float(first["b"]), c=float(first["c"]), lrs=(1.0,))
    lines = [
        f"f = {cfg.a:g} x^2 {cfg.b:+g} xy {cfg.c:+g} y^2, saddle {cfg.saddle()}, "
        f"start ({first['x0']:g}, {first['y0']:g}), T = {int(first['steps'])}",
        f"{'algorithm':<14} {'lrs reaching the saddle in T steps':<40} stable lrs (analytic, rho < 1)",
    ]
    ranges = minimax_ranges(trials)
    for row in ranges.to_dict("records"):
        lines.append(f"{row['algorithm']:<14} {row['measured']:<40} {row['analytic']}"
                     + (f"   [{row['game']}]" if "game" in row else ""))
        if row["disagree"]:
            slow = row["converged"] - row["reached"]  # contracting, too slowly to get there within T
            lines.append(f"{'':<14} reaching and analytic disagree at {row['disagree']} grid points"
                         + (f" ({slow} contracting but not there after T steps)" if slow > 0 else ""))
    if "game" in ranges:
        lines.append(f"{ranges['game'].nunique()} games (a sweep over their settings): each range is read within its "
                     "game; the plots show the first")
        games = _game_columns(trials)
        trials = trials[(trials[games] == trials.iloc[0][games]).all(axis=1)]
    algorithms = [a for a in minimax.ALGORITHMS if a in set(trials["algorithm"])]
    map_path = _convergence_map(trials, algorithms, out_dir / f"convergence_map-{label}.png")
    curve_path = _distance_curves(steps_of(store, "minimax", trials), algorithms, int(first["steps"]),
                                  out_dir / f"distance_curves-{label}.png")
    lines += [f"plots: {map_path}", f"       {curve_path}"]
    return "\n".join(lines), [map_path, curve_path]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _convergence_map(trials: pd.DataFrame, algorithms: list[str], path: Path) -> Path:
    """One band per algorithm, colour = log10 distance to the saddle after T steps."""
    from workloads import minimax

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1 + 0.6 * len(algorithms)))
    for row, algorithm in enumerate(algorithms):
        sub = trials[trials["algorithm"] == algorithm].sort_values("lr")
        lrs = sub["lr"].to_numpy()
        edges = np.concatenate([[lrs[0]], np.sqrt(lrs[1:] * lrs[:-1]), [lrs[-1]]])
        dist = np.log10(np.clip(sub["final_distance"].to_numpy(float), 1e-300, None))
        # diverged lanes stopped early: show them at the divergence threshold, not below it
        dist = np.where(sub["diverged"].to_numpy(bool), np.log10(sub["diverge_above"].to_numpy(float)), dist)
        mesh = ax.pcolormesh(edges, [row - 0.5, row + 0.5], dist[None, :], cmap="RdBu_r", vmin=-20, vmax=12, shading="flat")
        first = sub.iloc[0]  # the analytic boundary beside the measured colours: spectral radius = 1
        cfg = minimax.Config(a=float(first["a"]), b=float(first["b"]), c=float(first["c"]), lrs=(1.0,))
        for lo, hi in minimax.stable_intervals(cfg, algorithm, float(lrs.max())):
            ax.vlines([e for e in (lo, hi) if lrs[0] < e < lrs[-1]], row - 0.5, row + 0.5, colors="k", linewidths=1.5)
    ax.set_xscale("log")
    ax.set_yticks(range(len(algorithms)), algorithms)
    ax.set_xlabel("learning rate")
    ax.set_title(f"log10 distance to the saddle after {int(trials.iloc[0]['steps'])} steps (blue: reached, red: diverged; black: analytic edge, spectral radius 1)")
    fig.colorbar(mesh, ax=ax, label="log10 distance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _distance_curves(steps: pd.DataFrame, algorithms: list[str], total_steps: int, path: Path) -> Path:
    """Distance vs step for a few learning rates per algorithm: the same learning rates (the grid's
    nearest to each target) in every panel, so one legend serves all. Targets with distinct GDA
    contraction factors |1 - 8 lr| (0.05 and 0.2 share 0.6: their curves coincide). Three panels a
    row (readable on a laptop), the legend in the grid's spare cell or below it."""
    plt = _pyplot()
    ncols = min(3, len(algorithms))
    nrows = -(-len(algorithms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), sharey=True, squeeze=False)
    targets = (0.01, 0.05, 0.1, 0.22, 0.3)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, algorithm in zip(axes.flat, algorithms):
        sub = steps[steps["algorithm"] == algorithm]
        grid = np.sort(sub["lr"].unique())
        for target, colour in zip(targets, colours):
            if grid.size == 0:
                break
            lr = grid[np.abs(np.log(grid / target)).argmin()]
            curve = sub[sub["lr"] == lr].sort_values("step")
            ax.plot(curve["step"].clip(lower=1), curve["distance"].clip(lower=1e-300), color=colour,
                    label=f"lr ≈ {target:g}")
        ax.set(xscale="log", yscale="log", title=algorithm, xlabel="step", ylabel="distance to the saddle")
        ax.set_ylim(1e-30, 1e13)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    spare = list(axes.flat)[len(algorithms):]
    for ax in spare:
        ax.axis("off")
    if spare:
        spare[0].legend(handles, labels, loc="center", fontsize=11, frameon=False, title="learning rate")
    else:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"distance to the saddle over {total_steps} steps (log-log; above 1e12: diverged, stopped)", fontsize=11)
    fig.tight_layout(rect=(0, 0 if spare else 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- GAN and CLIP --------------------------------------------------------------------------------

def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    present = [c for c in columns if c in frame]
    return frame[present].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def gan_report(store: ResultStore, trials: pd.DataFrame, out_dir: Path) -> tuple[str, list[Path]]:
    """Final scores per trial, and the loss / FID curves over epochs as one PNG."""
    plt = _pyplot()

    run_id = _label(trials)
    steps = steps_of(store, "gan", trials).sort_values("epoch")
    fig, (ax_loss, ax_fid) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = dict(zip(trials["trial_key"], trials["trial_name"] if "trial_name" in trials else trials["trial_key"]))
    for key, curve in steps.groupby("trial_key"):
        label = str(names.get(key, key)).removeprefix("gan-")
        ax_loss.plot(curve["epoch"], curve["loss_d"], label=f"D {label}")
        ax_loss.plot(curve["epoch"], curve["loss_g"], "--", label=f"G {label}")
        scored = curve.dropna(subset=["fid"]) if "fid" in curve else curve.iloc[:0]
        ax_fid.plot(scored["epoch"], scored["fid"], "o-", label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_fid):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: 1, 2, 3, not 1.5
    ax_loss.set(xlabel="epoch", ylabel="mean BCE loss", title="losses")
    ax_fid.set(xlabel="epoch", ylabel="FID (FashionMNIST-classifier features)", title="FID, lower is better")
    ax_loss.legend(fontsize=7)
    ax_fid.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"curves-{run_id}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    columns = ["trial_name" if "trial_name" in trials else "trial_key", "lr", "beta1", "epochs_done", "fid_images",
               "val_fid", "fid", "class_coverage", "class_entropy", "d_x", "d_g_z", "images_per_s", "wall_time_s"]
    lines = [_table(trials, [c for c in columns if c in trials]),
             "val_fid: FID against the first half of the test images (selects: ASHA, PBT, the best trial); fid: "
             "against the second half, never used to select (the number to report)"]
    if fid_counts(trials):
        lines.append(fid_counts(trials))
    lines += gan_over_seeds(trials)
    images = [path]
    for generator in trials.get("generator_path", pd.Series(dtype=str)).dropna():
        samples = Path(generator).parent / "samples"
        lines.append(f"samples: {samples}")
        images += sorted(samples.glob("epoch_*.png"))
    lines.append(f"plot: {path}")
    return "\n".join(lines), images


def fid_counts(trials: pd.DataFrame) -> str:
    """A warning where the trials' FIDs come from different sample counts (FID is biased by the
    count: fewer samples, higher FID), which must not be ranked side by side; "" otherwise."""
    if "fid_images" not in trials or trials["fid_images"].nunique() < 2:
        return ""
    counts = ", ".join(str(int(n)) for n in sorted(trials["fid_images"].dropna().unique()))
    return (f"not comparable across rows: FIDs from different sample counts (fid_images {counts}); "
            "compare only trials of one fid_images (over seeds: grouped by it below)")


def gan_over_seeds(trials: pd.DataFrame) -> list[str]:
    """Configurations run with several seeds: mean ± std over seeds of the final FID and coverage."""
    from workloads.gan.config import Config

    if "seed" not in trials or trials["seed"].nunique() < 2:
        return []
    fields = [f.name for f in dataclasses.fields(Config)
              if f.name not in ("seed", "data_dir", "cache_dir", "fail_at_epoch") and f.name in trials]
    varying = [f for f in fields if trials[f].astype(str).nunique() > 1]
    groups = trials.groupby([trials[f].astype(str) for f in varying]) if varying else [("all", trials)]
    lines = ["over seeds (mean ± std of the final epoch):"]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ",".join(f"{f}={v}" for f, v in zip(varying, key)) or "every trial"
        stats = "  ".join(f"{m} {group[m].mean():.4g} ± {group[m].std(ddof=1):.2g}" for m in ("fid", "class_coverage")
                          if m in group and group[m].notna().sum() > 1)
        lines.append(f"  {label}: {stats}  ({len(group)} seeds)")
    return lines


def clip_report(store: ResultStore, trials: pd.DataFrame, out_dir: Path) -> tuple[str, list[Path]]:
    """The pairs compared (reports/clip.py); the prompt grids of each configuration's first seed,
    prompt by prompt, the pairs side by side."""
    from orchestrator.reports import clip as compare

    lines = compare.text_report(trials)
    prompts = store.read("clip", "prompts")
    grids = []
    if len(prompts):
        first = trials.assign(configuration=compare.configurations(trials))
        first = first.sort_values("seed").drop_duplicates("configuration") if "seed" in first else first
        prompts = prompts[attempts(prompts).isin(set(first["attempt"]))]
        rank = {label: i for i, label in enumerate(compare.comparison(trials)["pair"])}  # the table's order
        at = dict(zip(first["attempt"], first["configuration"].map(rank)))
        shown = prompts.drop_duplicates("grid")
        grids = [Path(g) for g in shown.assign(at=attempts(shown).map(at)).sort_values(["prompt", "at"])["grid"]]
        lines.append(f"prompt grids ({len(grids)}): {grids[0].parent.parent.parent if grids else ''}")
    curves = clip_curves(store, trials, out_dir)
    if curves:
        lines.append(f"plot: {curves}")
    return "\n".join(lines), ([curves] if curves else []) + grids


def clip_curves(store: ResultStore, trials: pd.DataFrame, out_dir: Path) -> Path | None:
    """Training loss and val text->image R@10 per epoch, one line per configuration (mean over its
    seeds, a band for min..max), one legend for both panels."""
    from orchestrator.reports import clip as compare

    steps = steps_of(store, "clip", trials)
    if steps.empty or "loss" not in steps:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()

    label = dict(zip(trials["attempt"], compare.configurations(trials)))
    steps = steps.assign(configuration=attempts(steps).map(label))
    panels = [("loss", "training loss (symmetric InfoNCE)")]
    if "val_t2i_r10" in steps and steps["val_t2i_r10"].notna().any():
        panels.append(("val_t2i_r10", "val text->image R@10"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        for name, group in steps.groupby("configuration", sort=False):
            by_epoch = group.groupby("epoch")[column]
            mean = by_epoch.mean()
            line, = ax.plot(mean.index, mean.values, label=name)
            ax.fill_between(mean.index, by_epoch.min().values, by_epoch.max().values, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="epoch", ylabel=column, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 3), 1, 1))
    path = out_dir / f"curves-{_label(trials)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


REPORTS = {"minimax": minimax_report, "gan": gan_report, "clip": clip_report}
