"""The CLIP study's comparison: encoder pairs side by side (mean ± std over seeds), the published
figures on the same test set, and a conclusion computed from the numbers.

A configuration is a trial's config without its seed (and without machine-local fields); its seeds
are the trials of that configuration. A difference between two configurations "exceeds seed noise"
when Welch's two-sided t-test rejects equal means at 5%: |d| > t(0.975, df) * SE, with
SE = sqrt(s1^2/n1 + s2^2/n2) and the Welch-Satterthwaite df (with 3 seeds a side, df ~ 4 and
t ~ 2.8: a difference must be ~2.8 standard errors, not 2).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
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
        row["_mean"] = group[HEADLINE].mean()
        rows.append(row)
    return pd.DataFrame(rows).sort_values("_mean", ascending=False)


def _stats(group: pd.Series) -> tuple[float, float, int]:
    values = group.dropna().astype(float)
    return values.mean(), (values.std(ddof=1) if len(values) > 1 else float("nan")), len(values)


def difference(a: pd.Series, b: pd.Series) -> tuple[float, float, bool]:
    """(mean(b) - mean(a), its standard error, whether Welch's t-test rejects equal means at 5%)."""
    from scipy import stats

    (ma, sa, na), (mb, sb, nb) = _stats(a), _stats(b)
    if na < 2 or nb < 2:
        return mb - ma, float("nan"), False
    se = math.sqrt(sa ** 2 / na + sb ** 2 / nb)
    if se == 0:
        return mb - ma, se, mb != ma
    test = stats.ttest_ind(b.dropna().astype(float), a.dropna().astype(float), equal_var=False)  # Welch
    return mb - ma, se, bool(test.pvalue < 0.05)


def _effect(trials: pd.DataFrame, side: str) -> list[str]:
    """Smallest -> largest encoder on `side` ("image" / "text"), within each configuration of
    everything else (the other encoder, any other swept setting) run with both."""
    size = f"{side}_params"
    lines = []
    for fixed, group in trials.groupby(configurations(trials, without=f"{side}_model")):
        models = group.groupby(f"{side}_model")[size].first().sort_values()
        if len(models) < 2:
            continue
        small, large = models.index[0], models.index[-1]
        delta, se, real = difference(group[group[f"{side}_model"] == small][HEADLINE],
                                     group[group[f"{side}_model"] == large][HEADLINE])
        lines.append(f"{side} encoder {_short(small)} -> {_short(large)} (with {fixed}): R@10 {delta:+.3f}"
                     + (f" ± {se:.3f} ({'exceeds' if real else 'within'} seed noise)" if se == se else " (one seed)"))
    return lines


def _short(name: str) -> str:
    return str(name).removeprefix("pkg:")


def conclusion(trials: pd.DataFrame) -> list[str]:
    """What the numbers say about the study's question, set beside the study's own claims."""
    if not {"image_model", "text_model", "image_params", "text_params", HEADLINE} <= set(trials):
        return []
    trials = trials.assign(configuration=configurations(trials))
    image, text = _effect(trials, "image"), _effect(trials, "text")
    lines = ["conclusion (text->image R@10 on the test split: difference ± its standard error over seeds; "
             "'exceeds seed noise': Welch's t-test at 5%):"]
    lines += [f"  {line}" for line in image + text]
    if not text:
        lines.append("  text side: not compared in this run (one text encoder; the mpnet extra and a --sweep add it)")
    means = trials.groupby("configuration")[HEADLINE].apply(list)
    order = means.apply(np.mean).sort_values(ascending=False)
    ranked = []
    for higher, lower in zip(order.index, order.index[1:]):
        _, se, real = difference(pd.Series(means[lower]), pd.Series(means[higher]))
        ranked.append(f"{higher} {'>' if real else '~' if se == se else '?'} ")
    lines.append("  ranking: " + "".join(ranked) + str(order.index[-1])
                 + "   (>: beyond seed noise; ~: within it; ?: one seed, not tested)")
    lines.append("  the study's claims: the pair with the largest image encoder won (A: ResNet-50 + DistilBERT > "
                 "C: ResNet-34 + RoBERTa > B: ResNet-18 + BERT), and a larger text encoder did not rescue a small "
                 "image encoder: the image side matters most")
    lines.append(f"  here: {_verdict(trials, order, means)}")
    return lines


def _verdict(trials: pd.DataFrame, order: pd.Series, means: pd.Series) -> str:
    """Does this run bear out the study's claim that the largest image encoder's pair wins? The best
    pair with the largest image encoder against the best of the others, tested both ways alike."""
    params = trials.groupby("configuration")["image_params"].first()
    if params.nunique() < 2:
        return "not tested (one image encoder size)"
    largest = [c for c in order.index if params[c] == params.max()][0]  # `order`: best first
    other = [c for c in order.index if params[c] != params.max()][0]
    diff, se, real = difference(pd.Series(means[other]), pd.Series(means[largest]))  # largest - other
    if se != se:
        return f"not tested (one seed): the best pair with the largest image encoder, {largest}, ranks " \
               f"{list(order.index).index(largest) + 1} of {len(order)}"
    if not real:
        return f"not shown: {largest} (largest image encoder) and {other} are within seed noise ({diff:+.3f} ± {se:.3f})"
    if diff > 0:
        return f"the claim holds: {largest} (largest image encoder) beats {other}, beyond seed noise ({diff:+.3f} ± {se:.3f})"
    return f"the claim does not hold: {other} beats {largest} (largest image encoder), beyond seed noise ({diff:+.3f} ± {se:.3f})"


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
