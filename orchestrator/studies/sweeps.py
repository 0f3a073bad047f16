"""The `--sweep` grammar: grids and random search over config fields, drawn before Ray starts.

    --sweep lr=1e-4,2e-4             a grid axis (the product of every grid axis)
    --sweep lr=loguniform(1e-5,1e-3) a random axis: log-uniform between the bounds
    --sweep dropout=uniform(0,0.5)   uniform between the bounds (int fields: an integer in [A, B])
    --sweep beta1=choice(0.5,0.9)    one of the values, uniformly
    --samples N                      N draws of the random axes for each point of the grid (Tune's
                                     num_samples semantics: N x grid size trials)

Values and bounds are parsed with the field's type, like `--set`. Random values are drawn here, once,
from a generator seeded by the study, the axes and `--sample-seed` (not by the clock): the same command
draws the same trials, so an interrupted run resumes them, and a larger N keeps the first N draws.
Floats are rounded to 4 significant digits, within [A, B) (a name like `lr=0.0002371` is the exact
value trained).
The draws are recorded in the run's spec (`runs` table: `params`, `trial_name`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

DISTRIBUTIONS = ("loguniform", "uniform", "choice")
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")


class SweepError(ValueError):
    """A bad --sweep / --samples: one line for the user."""


@dataclass(frozen=True)
class Axis:
    name: str
    kind: str  # "grid" or one of DISTRIBUTIONS
    values: tuple  # grid / choice: the values; loguniform / uniform: (low, high)
    hint: Any  # the field's type

    @property
    def random(self) -> bool:
        return self.kind != "grid"

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        for _ in range(100):  # a float rounded onto the open upper bound is drawn again
            x = self._draw(rng, low, high)
            if self.hint is int or low <= x < high:
                return x
        return float(low)

    def _draw(self, rng: np.random.Generator, low, high) -> Any:
        if self.hint is int:  # integers: uniform over [low, high], or log-uniform then rounded
            if self.kind == "uniform":
                return int(rng.integers(low, high + 1))
            return int(min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high)))))))
        x = math.exp(rng.uniform(math.log(low), math.log(high))) if self.kind == "loguniform" else rng.uniform(low, high)
        return float(f"{x:.4g}")

    def text(self) -> str:
        shown = ",".join(format_value(v) for v in self.values)
        return f"{self.name}={shown}" if self.kind == "grid" else f"{self.name}={self.kind}({shown})"


def is_random(raw: str) -> bool:
    """Is this `--sweep` value a distribution (drawn with --samples), not a grid?"""
    call = _CALL.match(raw)
    return call is not None and call.group(1) in DISTRIBUTIONS


def _distinct(name: str, raw: str, values: list) -> tuple:
    """The values, refused where one repeats (1e-4,0.0001 too): a repeated value would repeat its trials."""
    seen = []
    for value in values:
        if value in seen:
            raise SweepError(f"--sweep {name}={raw}: {value!r} is listed twice (a sweep that repeats trials is refused)")
        seen.append(value)
    return tuple(seen)


def parse_axis(name: str, raw: str, hint: Any, parse) -> Axis:
    """`raw` of one `--sweep name=raw`; `parse(raw_value)` converts a value with the field's type."""
    if typing.get_origin(hint) is tuple:
        raise SweepError(f"--sweep {name}: a list-valued setting cannot be swept (set it with --set)")
    call = _CALL.match(raw)
    if call is None and "(" in raw:
        raise SweepError(f"--sweep {name}={raw}: unbalanced parentheses; expected e.g. {name}=loguniform(A,B)")
    if call is None:  # a grid: V1,V2,...
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        if not parts:
            raise SweepError(f"--sweep {name}={raw!r}: expected FIELD=V1,V2,... or FIELD=loguniform(A,B) / "
                             "uniform(A,B) / choice(A,B,...)")
        return Axis(name, "grid", _distinct(name, raw, [parse(p) for p in parts]), hint)
    kind, inner = call.group(1), [p.strip() for p in call.group(2).split(",") if p.strip()]
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"--sweep {name}={raw}: unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    values = tuple(dict.fromkeys(parse(p) for p in inner))
    if kind == "choice":
        values = _distinct(name, raw, [parse(p) for p in inner])
        if len(values) < 2:
            raise SweepError(f"--sweep {name}={raw}: choice needs at least two different values")
        return Axis(name, kind, values, hint)
    if hint not in (int, float):
        raise SweepError(f"--sweep {name}={raw}: {kind} needs a numeric field ({name} is not): use choice(...)")
    if len(inner) != 2:
        raise SweepError(f"--sweep {name}={raw}: {kind} takes two bounds, {kind}(LOW,HIGH)")
    low, high = (parse(p) for p in inner)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SweepError(f"--sweep {name}={raw}: the bounds must be finite numbers")
    if not low < high:
        raise SweepError(f"--sweep {name}={raw}: the bounds must satisfy LOW < HIGH")
    if kind == "loguniform" and not low > 0:
        raise SweepError(f"--sweep {name}={raw}: loguniform needs LOW > 0")
    return Axis(name, kind, (low, high), hint)


def expand(study: str, axes: list[Axis], samples: int | None, sample_seed: int = 0) -> list[dict]:
    """The trials' overrides: the product of the grid axes, times `samples` draws of the random axes
    (draw-major, as Tune orders num_samples: the whole grid with the first draw, then the next)."""
    random_axes = [a for a in axes if a.random]
    if random_axes and samples is None:
        raise SweepError(f"{study}: --sweep {random_axes[0].text()} draws at random: say how many with --samples N")
    if samples is not None and not random_axes:
        raise SweepError(f"{study}: --samples {samples} needs a random axis (--sweep FIELD=loguniform(A,B), "
                         "uniform(A,B) or choice(...))")
    if samples is not None and samples < 1:
        raise SweepError(f"--samples must be >= 1, got {samples}")
    grid_axes = [a for a in axes if not a.random]
    grid = [dict(zip([a.name for a in grid_axes], combo)) for combo in itertools.product(*(a.values for a in grid_axes))]
    if not random_axes:
        return grid
    digest = hashlib.sha1("|".join([study, *sorted(a.text() for a in axes)]).encode()).digest()
    rng = np.random.default_rng([sample_seed, int.from_bytes(digest[:8], "little")])
    out = []
    for _ in range(samples):
        for point in grid:  # one draw per (sample, grid point), in a fixed order
            drawn = {a.name: a.draw(rng) for a in random_axes}
            out.append({a.name: drawn[a.name] if a.random else point[a.name] for a in axes})  # the user's order
    # a draw equal to an earlier one (choice axes, rounded floats) is the same trial: kept once
    return [dict(t) for t in dict.fromkeys(tuple(o.items()) for o in out)]


def format_value(value: Any) -> str:
    """A value as a trial name shows it: floats in 4 significant digits, `pkg:` dropped, a tuple as
    its one item or its range (minimax's lr chunks: 0.001..0.0612(128))."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value.removeprefix("pkg:")
    if isinstance(value, tuple):
        if len(value) == 1:
            return format_value(value[0])
        return f"{format_value(value[0])}..{format_value(value[-1])}({len(value)})" if value else "()"
    return str(value)


def trial_name(study: str, overrides: dict, seed: int | None = None) -> str:
    """`gan-lr=0.0002,beta1=0.5` (and `,seed=43` when the study runs several seeds)."""
    parts = [f"{k}={format_value(v)}" for k, v in overrides.items()]
    if seed is not None:
        parts.append(f"seed={seed}")
    return f"{study}-{','.join(parts)}" if parts else study
