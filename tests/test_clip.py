"""The CLIP study: loss and metric definitions, tokenizers of two families through one code path,
the data split, a real 2-worker DDP trial with an injected failure, and the offline pretrained pair."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from orchestrator.cli import main
from orchestrator.results import ResultStore
from workloads.clip import data, encoders, loop
from workloads.clip.config import Config
from workloads.clip.metrics import retrieval_metrics
from workloads.clip.model import CLIP, ProjectionHead, clip_loss, pool_text


def test_aligned_embeddings_give_a_lower_loss_than_shuffled():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(32, 16), dim=-1)
    text = F.normalize(image + 0.1 * torch.randn(32, 16), dim=-1)
    scale = torch.tensor(1 / 0.07)
    aligned, shuffled = clip_loss(image, text, scale), clip_loss(image, text[torch.randperm(32)], scale)
    assert aligned < 0.1 * shuffled
    # symmetric: swapping the roles of images and texts gives the same loss
    assert torch.isclose(clip_loss(text, image, scale), aligned)


def test_temperature_is_learnable_and_capped_after_the_step():
    model = CLIP(None, None, 8, 8, 4, 0.0, 1 / 0.07, 100.0, "cls")
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.logit_scale.requires_grad
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # e^10 >> 100
    image, text, scale = model(image_features=torch.randn(6, 8), text_features=torch.randn(6, 8))
    clip_loss(image, text, scale).backward()
    assert model.logit_scale.grad.abs() > 0  # above the cap the scale still learns (a clamp in forward: 0)
    model.clamp_scale_()
    assert float(model.scale().detach()) == pytest.approx(100.0)


def test_the_training_step_caps_the_temperature():
    """The loop's own step caps the scale after the optimizer moved it past the cap."""
    from workloads.clip.loop import train_step

    model = CLIP(None, None, 8, 8, 4, 0.0, 1 / 0.07, 100.0, "cls")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # e^10 >> 100
    opt = torch.optim.SGD([model.logit_scale], lr=0.0)  # the step leaves it where it is: above the cap
    train_step(model, opt, {"image_features": torch.randn(6, 8), "text_features": torch.randn(6, 8)})
    assert float(model.scale().detach()) == pytest.approx(100.0)


def test_no_weight_decay_on_biases_norms_and_the_temperature():
    from workloads.clip.config import Config
    from workloads.clip.loop import optimizer

    model = CLIP(None, None, 8, 8, 4, 0.0, 1 / 0.07, 100.0, "cls")
    groups = optimizer(model, Config(train_image_encoder=False, train_text_encoder=False)).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.logit_scale) not in decayed and id(model.image_head.norm.weight) not in decayed
    assert id(model.image_head.project.bias) not in decayed and id(model.image_head.project.weight) in decayed


def test_projection_head_and_pooling():
    head = ProjectionHead(12, 256, 0.1)
    assert head(torch.randn(3, 12)).shape == (3, 256)
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float).view(2, 3, 1)  # (B=2, L=3, H=1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool_text(hidden, mask, "cls").flatten().tolist() == [0.0, 3.0]
    assert pool_text(hidden, mask, "mean").flatten().tolist() == [0.5, 4.0]  # padding ignored


def test_retrieval_metrics_on_hand_made_similarities():
    # 3 images, 2 captions each; rows: captions, columns: images
    image_of = np.array([0, 0, 1, 1, 2, 2])
    sim = np.array([
        [0.9, 0.1, 0.0],  # caption of image 0, ranks it 1st
        [0.2, 0.5, 0.1],  # caption of image 0, ranks it 2nd
        [0.1, 0.3, 0.8],  # caption of image 1, ranks it 2nd
        [0.0, 0.2, 0.9],  # caption of image 1, 2nd
        [0.0, 0.1, 0.7],  # caption of image 2, 1st
        [0.5, 0.4, 0.1],  # caption of image 2, 3rd
    ])
    m = retrieval_metrics(sim, image_of, ks=(1, 2))
    assert m["t2i_r1"] == pytest.approx(2 / 6) and m["t2i_r2"] == pytest.approx(5 / 6)
    assert m["t2i_median_rank"] == 2.0 and m["t2i_mean_rank"] == pytest.approx(11 / 6)
    # image -> text: image 0's best caption (0.9) ranks 1st among its column; image 1's best own
    # caption (0.3) is beaten by 0.5 and 0.4... column 1 scores: [.1,.5,.3,.2,.1,.4] -> 3rd;
    # image 2's best own caption (0.7) is beaten by 0.8 and 0.9 -> 3rd
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["i2t_r2"] == pytest.approx(1 / 3)
    assert m["i2t_median_rank"] == 3.0 and m["i2t_mean_rank"] == pytest.approx(7 / 3)
    perfect = retrieval_metrics(np.eye(4), np.arange(4))
    assert perfect["t2i_r1"] == 1.0 and perfect["i2t_r1"] == 1.0


@pytest.fixture(scope="module")
def roberta_tokenizer(tmp_path_factory):
    """A RoBERTa-family tokenizer (byte-level BPE, <s> </s>) trained here: roberta-base's files need the hub."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    corpus = ["A dog runs in the park .", "Two men skateboarding in the city", "food on a table"] * 50
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    out = tmp_path_factory.mktemp("roberta_tok")
    RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                         unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>").save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("family", ["distilbert-base-uncased", "bert-base-uncased", "roberta-base"])
def test_tokenizers_and_text_models_of_each_family_share_one_code_path(family, roberta_tokenizer):
    tokenizer = encoders.build_tokenizer(family, roberta_tokenizer if family == "roberta-base" else "")
    text = encoders.build_text_encoder(family, pretrained=False, layers=2, width=64)
    model = CLIP(None, text, 8, text.config.hidden_size, 16, 0.0, 1 / 0.07, 100.0, "mean")
    batch = loop.tokenize(tokenizer, ["A dog runs in the park .", "food"], 40, "cpu")
    ids = batch["input_ids"]
    if family == "roberta-base":
        assert ids[0, 0] == tokenizer.bos_token_id == 0 and tokenizer.pad_token_id == 1
    else:
        assert tokenizer.convert_ids_to_tokens(ids[0, :3].tolist()) == ["[CLS]", "a", "dog"]
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # padded
    feats = model.text_features(**batch)
    assert feats.shape == (2, 64) and text.config.num_hidden_layers == 2
    assert torch.isfinite(model.embed_texts(feats)).all()


@pytest.fixture(scope="module")
def kaggle_layout(data_dir, tmp_path_factory):
    """A few real images in the Kaggle layout (Images/ + captions.txt, no split file)."""
    source = f"{data_dir}/flickr8k_subset"
    captions = pd.read_csv(f"{source}/captions.csv")
    names = list(dict.fromkeys(captions["image"]))[:20]
    root = tmp_path_factory.mktemp("data") / "flickr8k"
    (root / "Images").mkdir(parents=True)
    for name in names:
        shutil.copy(f"{source}/images/{name}", root / "Images" / name)
    captions[captions["image"].isin(names)].to_csv(root / "captions.txt", index=False)
    return root


def test_split_is_80_10_10_by_image_when_no_split_file(kaggle_layout):
    cfg = Config(data_dir=str(kaggle_layout.parent), dataset="flickr8k", images_subdir="Images",
                 captions_file="captions.txt", splits_file="")
    train, val, test = data.load_splits(cfg)
    assert (len(train.images), len(val.images), len(test.images)) == (16, 2, 2)
    assert not set(train.images) & set(test.images) and not set(val.images) & (set(train.images) | set(test.images))
    assert len(train.captions) == 5 * 16 and len(test.captions) == 5 * 2  # every caption follows its image
    again, _, _ = data.load_splits(Config(**{**cfg.__dict__, "seed": 7}))
    assert again.images == train.images  # the same split for every training seed (split_seed)


def test_missing_image_fails_with_its_name(kaggle_layout, tmp_path, capsys):
    broken = tmp_path / "flickr8k"
    shutil.copytree(kaggle_layout, broken)
    victim = sorted((broken / "Images").iterdir())[0]
    victim.unlink()
    with pytest.raises(data.DataError, match=victim.name):
        data.load_image(victim, data.image_transform(32, (0.5,) * 3, (0.5,) * 3))
    # and before Ray starts: `run clip` stops in preflight with one line naming it
    code = main(["run", "clip", "--data-dir", str(tmp_path), "--set", "dataset=flickr8k", "--set", "images_subdir=Images",
                 "--set", "captions_file=captions.txt", "--set", "splits_file=", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "1 image(s) named in the captions are missing" in err and victim.name in err, err
    assert err.count("\n") == 1 and not (tmp_path / "r" / "clip").exists()


def test_unknown_offline_encoders_are_one_line(capsys, tmp_path):
    assert main(["run", "clip", "--sweep", "image_model=pkg:efficientnet-lite9", "--results", str(tmp_path)]) == 2
    assert "unknown image_model 'pkg:efficientnet-lite9'; offline ones: pkg:efficientnet-lite0" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    assert main(["run", "clip", "--data-dir", str(tmp_path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Flickr8k not found" in err and err.count("\n") == 1


TINY = ["--seeds", "1", "--sweep", "image_model=resnet18", "--set", "pretrained=false", "--set", "text_model=bert-base-uncased",
        "--set", "text_layers=2", "--set", "text_width=64", "--set", "image_size=64", "--set", "train_images=32",
        "--set", "test_images=16", "--set", "val_images=16", "--set", "epochs=2", "--set", "batch_size=16",
        "--set", "train_image_encoder=true", "--set", "train_text_encoder=true",
        "--set", "image_mean=0.5,0.5,0.5", "--set", "image_std=0.5,0.5,0.5", "--set", "text_pooling=cls"]


@pytest.fixture(scope="module")
def ddp_clip(ray_session, data_dir, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    code = main(["run", "clip", "--results", str(results), "--data-dir", data_dir, *TINY, "--set", f"cache_dir={cache}",
                 "--set", "num_workers=2", "--set", "cpus_per_worker=1", "--set", "fail_at_epoch=2", "--no-dashboard"])
    assert code == 0
    return results


def test_a_ddp_clip_trial_resumed_after_a_crash_ends_with_its_uninterrupted_twins_numbers(ddp_clip, data_dir,
                                                                                          tmp_path):
    """2 Train workers, rank 0 crashing in epoch 2 (the group restarts from epoch 1's checkpoint) vs the
    same trial uninterrupted: every loss, recall and the selected epoch bit for bit (issue 22)."""
    results = tmp_path / "twin"
    code = main(["run", "clip", "--results", str(results), "--data-dir", data_dir, *TINY, "--set",
                 f"cache_dir={tmp_path / 'cache'}", "--set", "num_workers=2", "--set", "cpus_per_worker=1",
                 "--no-dashboard"])
    assert code == 0
    for table, columns in (("steps", ["epoch", "loss", "temperature", "val_rsum", "val_t2i_r10", "val_i2t_r1"]),
                           ("trials", ["selected_epoch", "t2i_r1", "t2i_r10", "i2t_r10", "val_rsum", "world_size"])):
        twin = pd.read_parquet(results / "clip" / f"{table}.parquet")[columns].sort_values(columns[0])
        resumed = pd.read_parquet(ddp_clip / "clip" / f"{table}.parquet")[columns].sort_values(columns[0])
        pd.testing.assert_frame_equal(resumed.reset_index(drop=True), twin.reset_index(drop=True), check_exact=True)


def test_ddp_clip_trial_resumes_and_writes_every_table(ddp_clip):
    trials = pd.read_parquet(ddp_clip / "clip" / "trials.parquet")
    steps = pd.read_parquet(ddp_clip / "clip" / "steps.parquet")
    prompts = pd.read_parquet(ddp_clip / "clip" / "prompts.parquet")
    (row,) = trials.to_dict("records")
    assert row["status"] == "TERMINATED" and row["world_size"] == 2 and row["resumed_from_epoch"] == 1
    assert row["pair"] == "resnet18+bert-base-uncased" and row["test_images"] == 16 and row["val_images"] == 16
    assert row["image_params"] > 1e7 and 0 < row["text_params"] < 1e7 and row["head_params"] > 0
    assert sorted(steps["epoch"]) == [1, 2]
    for column in ("val_t2i_r1", "val_t2i_r5", "val_t2i_r10", "val_i2t_r1", "val_i2t_r10", "val_t2i_median_rank", "loss"):
        assert steps[column].between(0, 1e6).all(), column
    assert "t2i_r10" not in steps  # per epoch: validation only; the test split is evaluated once
    assert (steps["val_t2i_r10"] >= steps["val_t2i_r5"]).all() and (steps["val_t2i_r5"] >= steps["val_t2i_r1"]).all()
    # the tested epoch is the one validation chose, across the failure and resume (the best travels in the checkpoint)
    assert row["selected_on"] == "val rsum"
    assert row["selected_epoch"] == int(steps.sort_values("epoch").loc[steps["val_rsum"].idxmax(), "epoch"])
    assert 0 <= row["t2i_r1"] <= row["t2i_r5"] <= row["t2i_r10"] <= 1
    assert not Path(row["embeddings_path"]).is_absolute()  # stored relative to the results root
    saved = np.load(ddp_clip / row["embeddings_path"])
    assert saved["image"].shape == (16, 256) and saved["text"].shape == (len(saved["image_of"]), 256)
    assert set(saved["image_of"]) == set(range(16))
    sim = saved["text"] @ saved["image"].T  # re-analysis without retraining gives the row's numbers
    assert retrieval_metrics(sim, saved["image_of"])["t2i_r10"] == pytest.approx(row["t2i_r10"], abs=1e-6)
    assert len(prompts) == 5 * 9 and sorted(prompts["rank"].unique()) == list(range(1, 10))
    assert prompts.groupby("prompt")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    grids = sorted((ddp_clip / "clip" / "artifacts").glob("*/prompts/*.png"))
    assert len(grids) == 5 and all(g.stat().st_size > 5000 for g in grids)


def test_a_copied_clip_results_folder_reports_its_own_files(ddp_clip, tmp_path):
    """Rows hold paths relative to the results root: a copy (as `ray rsync-down` makes) reads its own
    embeddings and prompt grids, and the report embeds them from there."""
    from orchestrator.reports.study import study_report

    copy = tmp_path / "elsewhere"
    shutil.copytree(ddp_clip, copy, symlinks=True)
    store = ResultStore(copy)
    (row,) = store.read("clip", "trials").to_dict("records")
    assert Path(row["embeddings_path"]).is_relative_to(copy) and Path(row["embeddings_path"]).exists()
    grids = store.read("clip", "prompts")["grid"].unique()
    assert len(grids) == 5 and all(Path(g).is_relative_to(copy) and Path(g).exists() for g in grids)
    _, images, _ = study_report("clip", store)
    assert sum(Path(i).suffix == ".png" and Path(i).is_relative_to(copy) and "prompts" in str(i) for i in images) == 5


def test_offline_pretrained_pair_retrieves_well_above_chance(data_dir, tmp_path):
    """The local default's first trial (frozen EfficientNet-Lite0 + MiniLM, heads trained, the epoch
    chosen on val) on half the official split: 1500 train, 500 val, the first 500 test images."""
    import dataclasses

    from orchestrator.studies import EXPERIMENTS
    from workloads.runtime import LocalRuntime

    cfg = EXPERIMENTS["clip"]["local"].trial_configs()[0]
    assert cfg.pair == "efficientnet-lite0+all-minilm-l6-v2" and cfg.dataset == "flickr8k"
    cfg = dataclasses.replace(cfg, data_dir=data_dir, cache_dir=str(tmp_path / "cache"), train_images=1500,
                              val_images=500, test_images=500)
    runtime = LocalRuntime(artifact_dir=str(tmp_path / "artifacts"))
    loop.train_loop(cfg, runtime)
    (final,) = runtime.finals
    assert final["test_images"] == 500 and final["val_images"] == 500
    assert final["t2i_r10"] >= 0.50  # chance: 10 / 500 = 0.02
    assert final["t2i_r1"] > 10 * (1 / 500)
    best = max(runtime.steps, key=lambda s: s["val_rsum"])
    assert final["selected_epoch"] == best["epoch"]


def test_collapsed_embeddings_score_chance_not_perfect_recall():
    from math import comb

    n = 50
    image_of = np.repeat(np.arange(n), 5)
    m = retrieval_metrics(np.zeros((5 * n, n)), image_of)  # every score equal: the collapse the README warns of
    for k in (1, 5, 10):
        assert m[f"t2i_r{k}"] == pytest.approx(k / n)  # chance, exactly
        assert m[f"i2t_r{k}"] == pytest.approx(1 - comb(5 * n - 5, k) / comb(5 * n, k))  # chance for 5 of 5n captions
    assert m["t2i_mean_rank"] == pytest.approx((n + 1) / 2)


def test_tied_ranks_equal_the_average_over_random_tie_breaking():
    rng = np.random.default_rng(0)
    image_of = np.repeat(np.arange(6), 2)
    sim = rng.integers(0, 3, size=(12, 6)).astype(float)  # coarse scores: many ties
    m = retrieval_metrics(sim, image_of, ks=(1, 2))
    draws = [retrieval_metrics(sim + 1e-9 * rng.random(sim.shape), image_of, ks=(1, 2)) for _ in range(3000)]
    for key in ("t2i_r1", "t2i_r2", "i2t_r1", "i2t_r2", "t2i_mean_rank", "i2t_mean_rank"):
        assert m[key] == pytest.approx(np.mean([d[key] for d in draws]), abs=0.02), key


def test_images_decoded_once_into_the_cache_give_the_old_tensors(data_dir, tmp_path):
    from pathlib import Path

    from workloads.clip import data, images

    root = Path(data_dir) / "flickr8k_subset" / "images"
    names = sorted(p.name for p in root.glob("*.jpg"))[:6]
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    array = images.image_array(root, names, 64, cache_dir=str(tmp_path), workers=2)
    assert array.shape == (6, 64, 64, 3) and array.dtype == np.uint8 and isinstance(array, np.memmap)
    old = torch.stack([data.load_image(root / name, data.image_transform(64, mean, std)) for name in names])
    new = images.Normalise(mean, std, "cpu")(images.collate([images.ArrayImages(array)[i] for i in range(6)]))
    assert torch.allclose(old, new, atol=1e-6) and new.is_contiguous(memory_format=torch.channels_last)
    (cached,) = (tmp_path / "clip_images").glob("*.npy")
    stamp = cached.stat().st_mtime_ns
    images.image_array(root, names, 64, cache_dir=str(tmp_path))  # every later trial and epoch: the same file
    assert cached.stat().st_mtime_ns == stamp


def test_a_diverged_models_nan_scores_never_look_perfect():
    m = retrieval_metrics(np.full((10, 5), np.nan), np.repeat(np.arange(5), 2))
    assert m["t2i_r1"] == pytest.approx(1 / 5) and m["t2i_mean_rank"] == pytest.approx(3.0)  # chance, not 1.0


def test_a_preemption_checkpoint_mid_epoch_resumes_to_the_uninterrupted_numbers(data_dir, tmp_path):
    """Fine-tuned encoders, a notice in epoch 2's second batch: the resumed run ends with exactly the
    uninterrupted run's losses and recalls (CPU)."""
    import dataclasses

    from workloads.runtime import LocalRuntime

    config = Config(data_dir=data_dir, cache_dir=str(tmp_path / "cache"), image_model="resnet18", pretrained=False,
                    text_model="bert-base-uncased", text_layers=2, text_width=64, image_size=64, train_images=64,
                    val_images=16, test_images=16, epochs=2, batch_size=16, train_image_encoder=True,
                    train_text_encoder=True, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, text_pooling="cls")
    config = dataclasses.replace(config, seed=3)
    twin = LocalRuntime(artifact_dir=str(tmp_path / "twin"))
    loop.train_loop(config, twin)

    class Reclaimed(Exception):
        pass

    class Preempted(LocalRuntime):
        def checkpoint_now(self, checkpoint):
            super().checkpoint_now(checkpoint)
            raise Reclaimed

    first = Preempted(artifact_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "ckpt"), notice_at=4 + 2)
    with pytest.raises(Reclaimed):
        loop.train_loop(config, first)
    resumed = LocalRuntime(artifact_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "ckpt"))
    loop.train_loop(config, resumed)
    assert [s["epoch"] for s in resumed.steps] == [2]
    assert resumed.steps[0]["loss"] == twin.steps[1]["loss"], (resumed.steps, twin.steps)
    for key in ("t2i_r1", "t2i_r10", "i2t_r10", "selected_epoch"):
        assert resumed.finals[0][key] == twin.finals[0][key], key
    # a checkpoint that does not fit the model (other code, another config) fails in one line, never in part
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    for change in ({"foreign.weight": torch.zeros(1)}, "drop"):
        model = dict(state["model"])
        model.update(change) if isinstance(change, dict) else model.pop(next(iter(model)))
        torch.save({**state, "model": model}, tmp_path / "ckpt" / "state.pt")
        with pytest.raises(RuntimeError, match="does not fit this CLIP model.*--fresh"):
            loop.train_loop(config, LocalRuntime(artifact_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "ckpt")))


def test_a_transformers_that_cannot_use_this_torch_fails_preflight_in_one_line(monkeypatch, tmp_path, capsys):
    """transformers 5 turns torch < 2.6 off (is_torch_available() False; every model class then fails):
    preflight builds the text model on the meta device before Ray starts, and stops there in one line."""
    from transformers.utils import import_utils

    encoders.check_text_model("bert-base-uncased", layers=2, width=64)  # builds here, on the meta device
    monkeypatch.setattr(import_utils, "is_torch_available", lambda: False)
    assert main(["run", "clip", "--results", str(tmp_path), *TINY, "--no-dashboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot use torch {torch.__version__} (needs torch>=" in err, err
    assert "cluster-requirements.txt" in err
