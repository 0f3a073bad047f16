"""The CLIP study's comparison: encoder pairs side by side (mean ± std over seeds, and a 95% t
confidence interval on the headline recall), the published figures on the same test set, and a
conclusion computed from the numbers.

A configuration is a trial's config without its seed (and without machine-local fields); its seeds
are the trials of that configuration. Two configurations are compared on their seeds: where both
ran the same seeds (a seed draws the same captions and initial heads on either side) with a paired
t-test on the per-seed differences, else with Welch's t-test (scipy.stats). A report makes several
comparisons at once (each encoder's effect, each step of the ranking, the study's claim), so their
p-values are corrected together with Holm's step-down method; a difference "exceeds seed noise" when
its corrected p-value is below 0.05. With 3 seeds a side a t-test has 2 (paired) or ~4 (Welch)
degrees of freedom: a difference must be ~3-4 standard errors, not 2.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

# Published on the 1000 official Flickr8k test images, 5 captions each (../shared/data/flickr8k/README.md).
PUBLISHED = pd.DataFrame([
    ("DeViSE (Frome et al. 2013)", 0.059, 0.201, 0.296, 0.048, 0.165, 0.273),
    ("DVSA (Karpathy & Fei-Fei 2015)", 0.118, 0.321, 0.447, 0.165, 0.406, 0.542),
    ("UVSE, VGG (Kiros et al. 2014)", 0.125, 0.370, 0.515, 0.180, 0.409, 0.550),
], columns=["model", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"])
RECALLS = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"]
IDENTITY_EXCLUDE = {"seed", "data_dir", "cache_dir", "prompts", "fail_at_epoch"}
HEADLINE = "t2i_r10"  # the study's metric (the registry's too)


def configurations(trials: pd.DataFrame, without: str = "") -> pd.Series:
    """A label per row naming its configuration: the pair, plus whatever else differs between rows.
    `without="image_model"` (or text_model): the label of everything but that encoder."""
    from workloads.clip.config import Config

    fields = [f.name for f in dataclasses.fields(Config) if f.name not in IDENTITY_EXCLUDE and f.name in trials]
    varying = [f for f in fields if trials[f].astype(str).nunique() > 1 and f not in ("image_model", "text_model")]
    if without:
        other = "text_model" if without == "image_model" else "image_model"
        label = trials[other].astype(str).str.removeprefix("pkg:")
    else:
        label = trials["pair"].astype(str)
    for field in varying:
        label = label + f" {field}=" + trials[field].astype(str)
    return label


def _mean_std(values: pd.Series) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return ""
    return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def comparison(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: seeds, mean ± std of each recall and the median rank, sizes, speed."""
    trials = trials.assign(configuration=configurations(trials))
    rows = []
    for name, group in trials.groupby("configuration", sort=False):
        row = {"pair": name, "seeds": len(group)}
        for column in [*RECALLS, "t2i_median_rank"]:
            if column in group:
                row[column] = _mean_std(group[column])
        for column in ("image_params", "text_params"):
            if column in group:
                row[column] = f"{group[column].iloc[0] / 1e6:.1f}M"
        if "images_per_s" in group:  # frozen encoders: the heads train on cached features
            frozen = not group.get("train_image_encoder", pd.Series([True])).any() and \
                not group.get("train_text_encoder", pd.Series([True])).any()
            row["heads img/s" if frozen else "train img/s"] = f"{group['images_per_s'].mean():.0f}"
        if "selected_epoch" in group:
            row["chosen epochs"] = ",".join(str(int(e)) for e in group["selected_epoch"].dropna())
        row[f"{HEADLINE} 95% CI"] = mean_ci(group[HEADLINE])  # what a claim about the mean may say
        row["_mean"] = group[HEADLINE].mean()
        rows.append(row)
    return pd.DataFrame(rows).sort_values("_mean", ascending=False)


@dataclasses.dataclass(frozen=True)
class Difference:
    """mean(b) - mean(a) over seeds, its standard error and 95% CI, the test's p-value (nan: one seed)."""

    delta: float
    se: float
    pvalue: float
    paired: bool
    ci: tuple[float, float]

    def text(self, adjusted: float) -> str:
        if self.se != self.se:
            return f"{self.delta:+.3f} (one seed, not tested)"
        verdict = "exceeds" if adjusted < 0.05 else "within"
        return (f"{self.delta:+.3f} ± {self.se:.3f}, 95% CI [{self.ci[0]:+.3f}, {self.ci[1]:+.3f}] "
                f"({verdict} seed noise: {'paired' if self.paired else 'Welch'} p={self.pvalue:.2g}, Holm {adjusted:.2g})")


def _by_seed(rows: pd.DataFrame) -> pd.Series:
    """The headline per seed (the index), the mean where a seed repeats."""
    values = rows.assign(_seed=rows["seed"] if "seed" in rows else range(len(rows)))
    return values.groupby("_seed")[HEADLINE].mean().dropna().astype(float)


def difference(a: pd.Series, b: pd.Series) -> Difference:
    """b against a, each a value per seed (the index): paired where both have the same >= 2 seeds,
    Welch otherwise."""
    from scipy import stats

    a, b = a.dropna().astype(float), b.dropna().astype(float)
    delta = b.mean() - a.mean()
    paired = len(a) >= 2 and set(a.index) == set(b.index)
    if paired:
        d = (b - a.reindex(b.index)).to_numpy()
        se = d.std(ddof=1) / math.sqrt(len(d))
        if se == 0:
            return Difference(delta, 0.0, 0.0 if delta else 1.0, True, (delta, delta))
        test = stats.ttest_rel(b.to_numpy(), a.reindex(b.index).to_numpy())
    else:
        if len(a) < 2 or len(b) < 2:
            return Difference(delta, float("nan"), float("nan"), False, (float("nan"), float("nan")))
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        if se == 0:
            return Difference(delta, 0.0, 0.0 if delta else 1.0, False, (delta, delta))
        test = stats.ttest_ind(b.to_numpy(), a.to_numpy(), equal_var=False)
    low, high = test.confidence_interval(0.95)
    return Difference(delta, se, float(test.pvalue), paired, (float(low), float(high)))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan): the i-th smallest of m is multiplied by
    m - i, and the adjusted values are made non-decreasing in that order."""
    tested = [(p, i) for i, p in enumerate(pvalues) if p == p]
    adjusted, running = list(pvalues), 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def mean_ci(values: pd.Series) -> str:
    """`0.601 [0.589, 0.613]`: the mean and its 95% t confidence interval over seeds."""
    from scipy import stats

    values = values.dropna().astype(float)
    if len(values) < 2:
        return f"{values.mean():.3f}" if len(values) else ""
    low, high = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    return f"{values.mean():.3f} [{low:.3f}, {high:.3f}]"


def _effects(trials: pd.DataFrame, side: str) -> list[tuple[str, Difference]]:
    """Smallest -> largest encoder on `side` ("image" / "text"), within each configuration of
    everything else (the other encoder, any other swept setting) run with both."""
    size = f"{side}_params"
    out = []
    for fixed, group in trials.groupby(configurations(trials, without=f"{side}_model")):
        models = group.groupby(f"{side}_model")[size].first().sort_values()
        if len(models) < 2:
            continue
        small, large = models.index[0], models.index[-1]
        diff = difference(_by_seed(group[group[f"{side}_model"] == small]), _by_seed(group[group[f"{side}_model"] == large]))
        out.append((f"{side} encoder {_short(small)} -> {_short(large)} (with {fixed}): R@10", diff))
    return out


def _short(name: str) -> str:
    return str(name).removeprefix("pkg:")


def conclusion(trials: pd.DataFrame) -> list[str]:
    """What the numbers say about the study's question, set beside the study's own claims; every
    test of the report Holm-corrected together."""
    if not {"image_model", "text_model", "image_params", "text_params", HEADLINE} <= set(trials):
        return []
    trials = trials.assign(configuration=configurations(trials))
    effects = _effects(trials, "image") + _effects(trials, "text")
    seeds = {name: _by_seed(group) for name, group in trials.groupby("configuration")}
    order = pd.Series({name: v.mean() for name, v in seeds.items()}).sort_values(ascending=False)
    steps = [(higher, lower, difference(seeds[lower], seeds[higher])) for higher, lower in zip(order.index, order.index[1:])]
    claim = _claim(trials, order, seeds)
    tests = [d for _, d in effects] + [d for *_, d in steps] + ([claim[2]] if claim else [])
    adjusted = iter(holm([d.pvalue for d in tests]))
    lines = ["conclusion (text->image R@10 on the test split: difference of means over seeds ± its standard error; "
             f"'exceeds seed noise': p < 0.05 after Holm's correction over this report's {len(tests)} tests):"]
    lines += [f"  {label} {diff.text(next(adjusted))}" for label, diff in effects]
    if not any(label.startswith("text") for label, _ in effects):
        lines.append("  text side: not compared in this run (one text encoder; the mpnet extra and a --sweep add it)")
    ranked = [f"{higher} {'?' if d.se != d.se else '>' if p < 0.05 else '~'} "
              for (higher, _, d), p in zip(steps, adjusted)]
    lines.append("  ranking: " + "".join(ranked) + str(order.index[-1])
                 + "   (>: beyond seed noise; ~: within it; ?: one seed, not tested)")
    lines.append("  the study's claims: the pair with the largest image encoder won (A: ResNet-50 + DistilBERT > "
                 "C: ResNet-34 + RoBERTa > B: ResNet-18 + BERT), and a larger text encoder did not rescue a small "
                 "image encoder: the image side matters most")
    lines.append(f"  here: {_verdict(claim, next(adjusted, float('nan')), order)}")
    return lines


def _claim(trials: pd.DataFrame, order: pd.Series, seeds: dict) -> tuple[str, str, Difference] | None:
    """The study's claim as a test: the best pair with the largest image encoder against the best of
    the others (largest - other); None with one image encoder size."""
    params = trials.groupby("configuration")["image_params"].first()
    if params.nunique() < 2:
        return None
    largest = [c for c in order.index if params[c] == params.max()][0]  # `order`: best first
    other = [c for c in order.index if params[c] != params.max()][0]
    return largest, other, difference(seeds[other], seeds[largest])


def _verdict(claim, adjusted: float, order: pd.Series) -> str:
    if claim is None:
        return "not tested (one image encoder size)"
    largest, other, d = claim
    if d.se != d.se:
        return f"not tested (one seed): the best pair with the largest image encoder, {largest}, ranks " \
               f"{list(order.index).index(largest) + 1} of {len(order)}"
    shown = f"({d.delta:+.3f}, 95% CI [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}], Holm p={adjusted:.2g})"
    if adjusted >= 0.05:
        return f"not shown: {largest} (largest image encoder) and {other} are within seed noise {shown}"
    if d.delta > 0:
        return f"the claim holds: {largest} (largest image encoder) beats {other}, beyond seed noise {shown}"
    return f"the claim does not hold: {other} beats {largest} (largest image encoder), beyond seed noise {shown}"


def comparable(test_images: int, dataset: str) -> bool:
    """Are this run's recalls on the test set the published figures were measured on?"""
    return test_images == 1000 and dataset == "flickr8k"


def published_rows(test_images: int, dataset: str) -> str:
    if not comparable(test_images, dataset):
        return "(published figures are on the 1000 official test images: not comparable with this run's test split)"
    return "published on the same 1000 test images:\n" + PUBLISHED.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def text_report(trials: pd.DataFrame) -> list[str]:
    table = comparison(trials).drop(columns="_mean")
    n = int(trials["test_images"].max()) if "test_images" in trials else 0
    dataset = str(trials["dataset"].iloc[0]) if "dataset" in trials else ""
    selected = set(trials.get("selected_on", pd.Series(dtype=str)).dropna())
    lines = [f"text->image (t2i) and image->text (i2t) retrieval on {n} test images of {dataset}, mean ± std over seeds; "
             f"epoch chosen by {', '.join(sorted(selected)) or 'last epoch'}; chance R@10 {10 / max(n, 1):.3f}",
             table.to_string(index=False), "", published_rows(n, dataset), ""]
    return lines + conclusion(trials)
