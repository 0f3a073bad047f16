"""The CLIP comparison: --sweep and --seeds, frozen-encoder trials as plain Tune trials with features
cached per encoder (not per pair), and the report that compares pairs over seeds."""

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.studies import resolve
from orchestrator.engine.plan import path_segment
from orchestrator.reports.clip import comparison, conclusion, difference
from orchestrator.studies import SpecError
from tests.browser import assert_report_renders


def test_sweep_is_a_grid_over_the_named_fields_replacing_the_profiles(capsys):
    (gan,) = resolve("gan", "local", [], sweeps=["lr=1e-4,2e-4", "beta1=0.5,0.9"])
    configs = gan.trial_configs()
    assert [(c.lr, c.beta1) for c in configs] == [(1e-4, 0.5), (1e-4, 0.9), (2e-4, 0.5), (2e-4, 0.9)]
    (clip,) = resolve("clip", "local", [], sweeps=["image_model=pkg:efficientnet-lite0,pkg:efficientnet-lite2",
                                                   "text_model=pkg:all-minilm-l6-v2,pkg:all-mpnet-base-v2"])
    assert len(clip.trial_configs()) == 4 * 3  # 2 x 2 pairs, the profile's 3 seeds each
    assert "replacing the local profile's 3" in capsys.readouterr().out
    minimax, gan, clip = resolve("all", "local", [], sweeps=["gan.lr=1e-4,2e-4"], seeds=2)
    assert len(gan.trial_configs()) == 2 * 2 and minimax.seeds == 1  # minimax has no seed: --seeds skips it


def test_seeds_run_each_configuration_seed_major():
    (gan,) = resolve("gan", "local", [], sweeps=["lr=1e-4,2e-4"], seeds=3)
    assert [(c.seed, c.lr) for c in gan.trial_configs()] == [(42, 1e-4), (42, 2e-4), (43, 1e-4), (43, 2e-4),
                                                            (44, 1e-4), (44, 2e-4)]
    (one,) = resolve("clip", "local", [], seeds=1)
    assert len(one.trial_configs()) == 3  # the profile's 3 pairs, one seed


@pytest.mark.parametrize("sweeps, seeds, message", [
    (["lr=1e-4,abc"], None, "lr='abc': expected a number"),
    (["lr="], None, "expected FIELD=V1,V2"),
    (["lrr=1e-4"], None, "unknown config field"),
    (["num_workers=1,2"], None, "a scaling setting: use --set"),
    (["sample_epochs=1,2"], None, "cannot be swept"),
    (["lr=-1,1e-4"], None, "lr must be > 0"),
    ([], 0, "--seeds must be >= 1"),
])
def test_bad_sweeps_fail_before_ray_with_one_line(sweeps, seeds, message):
    with pytest.raises(SpecError, match=message):
        resolve("gan", "local", [], sweeps=sweeps, seeds=seeds)


def test_bad_sweeps_on_the_command_line(tmp_path, capsys):
    assert main(["run", "minimax", "--seeds", "2", "--results", str(tmp_path)]) == 2
    assert main(["run", "all", "--sweep", "lr=1e-4,2e-4", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "no random seed" in err[0] and "STUDY.lr" in err[1]


def test_differences_are_welch_tested_apart_and_paired_over_matched_seeds():
    from scipy import stats

    a, b = pd.Series([0.50, 0.52, 0.51], index=[1, 2, 3]), pd.Series([0.60, 0.61, 0.59], index=[4, 5, 6])
    d = difference(a, b)  # other seeds: Welch
    assert not d.paired and d.delta == pytest.approx(0.09) and d.se == pytest.approx(np.sqrt(0.01 ** 2 / 3 * 2))
    assert d.pvalue == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue) and d.pvalue < 0.05
    assert d.ci[0] > 0  # the whole 95% interval above 0
    noise = difference(pd.Series([0.50, 0.58, 0.54]), pd.Series([0.55, 0.51, 0.59], index=[5, 6, 7]))
    assert noise.pvalue > 0.05 and noise.ci[0] < 0 < noise.ci[1]
    # the same seeds on both sides, seeds far apart, b always ~0.01 above: Welch sees noise, the paired test sees
    # the consistent shift (a seed draws the same captions and initial heads on either side)
    seeds = [42, 43, 44, 45]
    a = pd.Series([0.50, 0.56, 0.53, 0.59], index=seeds)
    b = pd.Series([0.511, 0.569, 0.541, 0.601], index=seeds)
    assert stats.ttest_ind(b, a, equal_var=False).pvalue > 0.5
    paired = difference(a, b)
    assert paired.paired and paired.pvalue < 0.01 and paired.ci[0] > 0


def test_holm_corrects_the_reports_tests_together():
    from orchestrator.reports.clip import holm

    assert holm([0.01, 0.04, 0.02]) == pytest.approx([0.03, 0.04, 0.04])  # 3 x 0.01, 2 x 0.02, 1 x 0.04
    assert holm([0.01, 0.03, 0.04]) == pytest.approx([0.03, 0.06, 0.06])  # step-down: stops after the first
    assert holm([0.5, float("nan"), 0.001])[0] == pytest.approx(0.5) and np.isnan(holm([float("nan")])[0])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1; never decreasing in rank order


def test_a_difference_that_one_test_shows_is_noise_among_many():
    """Alone, a pair 0.02 apart over 3 matched seeds is beyond noise (paired p ~ 0.03); in a report
    of three configurations of which a third is far off, the ranking's second step is not, after
    Holm's correction."""
    rows = [dict(pair=f"{m}+t", image_model=m, text_model="t", image_params=p, text_params=2e7, t2i_r10=v, seed=s)
            for m, p, values in (("big", 5e6, (0.600, 0.620, 0.640)), ("mid", 4e6, (0.586, 0.600, 0.614)),
                                 ("small", 3e6, (0.300, 0.320, 0.340)))
            for s, v in zip((1, 2, 3), values)]
    lines = conclusion(pd.DataFrame(rows))
    ranking = next(line for line in lines if line.startswith("  ranking:"))
    assert ranking.startswith("  ranking: big+t ~ mid+t > small+t"), lines
    assert "Holm" in lines[0] and "paired p=" in lines[1]


TINY_FROZEN = ["--set", "dataset=flickr8k", "--set", "train_images=48", "--set", "val_images=24",
               "--set", "test_images=24", "--set", "epochs=3", "--set", "batch_size=16", "--seeds", "2",
               "--sweep", "image_model=pkg:efficientnet-lite0,pkg:efficientnet-lite1", "--no-dashboard"]


@pytest.fixture(scope="module")
def frozen_run(ray_session, data_dir, tmp_path_factory):
    results, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cache")
    assert main(["run", "clip", "--results", str(results), "--data-dir", data_dir, "--set", f"cache_dir={cache}",
                 *TINY_FROZEN]) == 0
    return results, cache


def test_frozen_pairs_run_as_plain_tune_trials_with_features_cached_per_encoder(frozen_run):
    results, cache = frozen_run
    trials = pd.read_parquet(results / "clip" / "trials.parquet")
    assert len(trials) == 2 * 2 and (trials["status"] == "TERMINATED").all()
    assert sorted(trials["seed"]) == [42, 42, 43, 43] and trials["pair"].nunique() == 2
    assert (trials["world_size"] == 1).all()
    assert not any(list((results / "_ray").glob(f"*-{key}")) for key in trials["trial_key"])  # no Train run
    # two image encoders x 3 splits, one text encoder x 3 splits: 9 extractions for 4 trials
    assert len(list((cache / "clip_features" / "image").glob("*.pt"))) == 2 * 3
    assert len(list((cache / "clip_features" / "text").glob("*.pt"))) == 1 * 3
    assert (trials["selected_on"] == "val rsum").all() and trials["embeddings_path"].map(lambda p: p.endswith(".npz")).all()


def test_report_compares_the_pairs_over_seeds(frozen_run, capsys):
    results, _ = frozen_run
    assert main(["report", "clip", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite1+all-minilm-l6-v2" in out and " ± " in out
    assert "image encoder efficientnet-lite0 -> efficientnet-lite1 (with all-minilm-l6-v2): R@10" in out
    assert "text side: not compared in this run" in out
    assert "published figures are on the 1000 official test images" in out  # 24 test images here
    trials = pd.read_parquet(results / "clip" / "trials.parquet")
    table = comparison(trials)
    assert list(table["seeds"]) == [2, 2]
    assert any(line.startswith("  ranking:") for line in conclusion(trials))
    assert any(line.startswith("  here: ") for line in conclusion(trials))  # the study's claim, with a verdict
    assert main(["report", "--results", str(results)]) == 0  # the HTML page: the pairs, curves, prompt grids
    page = (results / "clip" / ".." / "report.html").resolve().read_text()
    assert '<p class="key">Best pair efficientnet-lite' in page and page.count("<img") == 1 + 2 * 5
    assert_report_renders(results / "report.html")


def test_clip_trials_log_loss_and_val_recall_to_tensorboard(frozen_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results, _ = frozen_run
    trials = pd.read_parquet(results / "clip" / "trials.parquet")
    (run_id,) = trials["run_id"].unique()
    view = results / "clip" / "tensorboard" / run_id  # the run's trials by name, for one `tensorboard --logdir`
    assert sorted(p.name for p in view.iterdir()) == sorted(path_segment(n, portable=False) for n in trials["trial_name"])
    for name, selected in zip(trials["trial_name"], trials["selected_epoch"]):
        events = EventAccumulator(str(view / path_segment(name, portable=False))).Reload()
        assert [e.step for e in events.Scalars("Val/rsum")] == [1, 2, 3]  # every epoch
        assert [e.step for e in events.Scalars("Loss/train")] == [1, 2, 3]
        assert [e.step for e in events.Scalars("Test/t2i_r10")] == [selected]  # once, at the chosen epoch


@pytest.mark.parametrize("large, small, verdict", [
    ((0.60, 0.61, 0.62), (0.50, 0.51, 0.52), "here: the claim holds: big+t (largest image encoder) beats small+t"),
    ((0.50, 0.51, 0.52), (0.60, 0.61, 0.62), "here: the claim does not hold: small+t beats big+t"),
    ((0.55, 0.57, 0.56), (0.56, 0.55, 0.57), "here: not shown: big+t (largest image encoder) and small+t are within"),
])
def test_the_conclusion_gives_a_verdict_on_the_studys_claim_tested_both_ways(large, small, verdict):
    rows = [dict(pair=f"{model}+t", image_model=model, text_model="t", image_params=params, text_params=2e7,
                 t2i_r10=value, seed=seed)
            for model, params, values in (("big", 5e6, large), ("small", 3e6, small))
            for seed, value in zip((1, 2, 3), values)]
    assert conclusion(pd.DataFrame(rows))[-1].strip().startswith(verdict.strip())
