"""Fetch every pretrained weight and tokenizer a profile's CLIP trials load, into this machine's
caches (timm's and Hugging Face's), so that nodes built from it never download at run time.

    python -m orchestrator.clusters.prefetch --profile paper      # the Dockerfile runs this at build time

Then run with HF_HUB_OFFLINE=1: a model missing from the cache fails at once instead of reaching for
the network from a GPU node.
"""

from __future__ import annotations

import argparse
import sys


def encoder_names(profile: str) -> list[tuple[str, str]]:
    """The (image_model, text_model) pairs of the profile's CLIP trials, each once."""
    from orchestrator.studies import resolve

    (exp,) = resolve("clip", profile, [], say=lambda _: None)
    return list(dict.fromkeys((c.image_model, c.text_model) for c in exp.trial_configs()))


def prefetch(profile: str, say=print) -> int:
    """Build each encoder with its pretrained weights and each tokenizer once (downloads where the
    cache lacks them); returns how many pairs."""
    from workloads.clip import encoders

    pairs = encoder_names(profile)
    for image_model, text_model in pairs:
        say(f"prefetch: {image_model} + {text_model}")
        encoders.build_image_encoder(image_model, pretrained=True)
        encoders.build_text_encoder(text_model, pretrained=True)
        encoders.build_tokenizer(text_model)
    return len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper", help="the experiments' profile (default: paper)")
    args = parser.parse_args(argv)
    print(f"prefetch: {prefetch(args.profile)} encoder pairs of the {args.profile} profile cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
