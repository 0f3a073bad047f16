"""A toy workload, written as docs/design.md says a new one is: a frozen Config with every default
once, and a plain loop that knows nothing of Ray. It fits y = w x by gradient descent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    lr: float = 0.1  # gradient step on the squared error
    steps: int = 5  # epochs, one report each
    target: float = 3.0  # the true slope w*
    seed: int = 0  # unused randomness (lets --seeds apply)


def train_loop(config: Config, runtime) -> None:
    w = 0.0
    for step in range(1, config.steps + 1):
        w -= config.lr * 2 * (w - config.target)  # d/dw (w - w*)^2 on x = 1
        runtime.report({"step": step, "loss": (w - config.target) ** 2})
    runtime.report({"final_loss": (w - config.target) ** 2, "w": w}, final=True)
