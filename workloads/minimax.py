"""Minimax on a quadratic: which first-order methods find the saddle, for which learning rates.

f(x, y) = a x^2 + b x y + c y^2, minimised over x and maximised over y.
Gradients: fx = 2a x + b y, fy = b x + 2c y. With a > 0 > c the saddle is (0, 0)
(the unique stationary point whenever 4ac - b^2 != 0).

Every algorithm here is, on a quadratic, a linear map of its state, so two independent answers
exist for "does it converge at this lr": run the update rule (measured `rate`) and take the spectral
radius of its matrix (`spectral_radius`). The study's write-up claims ascent on y gives
y_{t+1} = (1 + 8 lr) y_t; with c = -4 it is y + lr * fy = y + lr * (-8 y) = (1 - 8 lr) y, the same
factor as x. Plain descent on y (`gd`) is what gives (1 + 8 lr) and diverges.

Learning rates are vectorised: a run is a batch of lanes, one per lr, advanced together in NumPy.
Diverging lanes are frozen once their distance passes `diverge_above` (no inf/NaN ever reaches a
table); lanes that underflow to (near) zero are frozen too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

ALGORITHMS = ("gda", "alt_gda", "gd", "extragradient", "optimistic")
TINY = 1e-300  # below this a lane has converged to machine zero; freeze it before it underflows


@dataclass(frozen=True)
class Config:
    a: float = 4.0  # coefficient of x^2 (the study: 4)
    b: float = 0.0  # coefficient of x*y; b != 0 couples the players (a = c = 0: bilinear game)
    c: float = -4.0  # coefficient of y^2 (the study: -4)
    x0: float = 1.0  # start point x
    y0: float = 1.0  # start point y
    steps: int = 1000  # T, iterations per run
    algorithms: tuple[str, ...] = ALGORITHMS  # which methods to run (see ALGORITHMS)
    lr_min: float = 1e-3  # smallest learning rate of the grid
    lr_max: float = 0.5  # largest learning rate of the grid
    num_lrs: int = 240  # grid size: half log-spaced, half linear (dense where methods switch)
    lrs: tuple[float, ...] = ()  # an explicit grid; when set it replaces lr_min/lr_max/num_lrs
    diverge_above: float = 1e12  # a lane whose distance to the saddle passes this is stopped
    record_points: int = 40  # log-spaced steps at which distance is reported (steps table)
    reach_tol: float = 1e-6  # a lane "reached" the saddle when its distance fell below this within `steps`

    def __post_init__(self) -> None:
        unknown = [name for name in self.algorithms if name not in ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown algorithm {unknown[0]!r}; choose from {', '.join(ALGORITHMS)}")
        if not self.algorithms:
            raise ValueError("algorithms must name at least one algorithm")
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")
        if self.record_points < 2:
            raise ValueError(f"record_points must be >= 2, got {self.record_points}")
        if any(not lr > 0 or not math.isfinite(lr) for lr in self.lrs):
            raise ValueError(f"every lr must be a finite number > 0, got {self.lrs}")
        if not self.lrs:
            if not 0 < self.lr_min <= self.lr_max or not math.isfinite(self.lr_max):
                raise ValueError(f"need 0 < lr_min <= lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}")
            if self.num_lrs <= 0:
                raise ValueError(f"num_lrs must be > 0, got {self.num_lrs}")
        if not self.reach_tol > 0:
            raise ValueError(f"reach_tol must be > 0, got {self.reach_tol}")
        if not self.diverge_above > 0:
            raise ValueError(f"diverge_above must be > 0, got {self.diverge_above}")

    def lr_grid(self) -> np.ndarray:
        """The learning rates of the study, sorted and unique."""
        if self.lrs:
            return np.unique(np.asarray(self.lrs, dtype=float))
        # linear half (dense near the switches, all at lr ~ 1/(|a|+|c|) scale) includes both ends;
        # the log half (resolves small lrs) fills the interior
        n_log = self.num_lrs // 2
        grid = np.concatenate([
            np.linspace(self.lr_min, self.lr_max, self.num_lrs - n_log),
            np.geomspace(self.lr_min, self.lr_max, n_log + 2)[1:-1],
        ])
        return np.unique(grid)

    def saddle(self) -> tuple[float, float]:
        """The stationary point: solve H z = 0 with H = [[2a, b], [b, 2c]] -> (0, 0) when det != 0."""
        det = 4 * self.a * self.c - self.b**2
        if det == 0:
            return (math.nan, math.nan)  # a line of stationary points: no unique saddle
        return (0.0, 0.0)


# ---- update rules, written with gradients (the measured side) ----------------------------------
# Each takes lanes x, y (shape (n,)) and lrs (n,), returns the next x, y. `optimistic` also carries
# the previous gradients.

def _grads(cfg: Config, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 2 * cfg.a * x + cfg.b * y, cfg.b * x + 2 * cfg.c * y


def _gda(cfg, x, y, lr, state):
    gx, gy = _grads(cfg, x, y)
    return x - lr * gx, y + lr * gy, state  # descent on x, ascent on y, simultaneous


def _alt_gda(cfg, x, y, lr, state):
    gx, _ = _grads(cfg, x, y)
    x = x - lr * gx
    _, gy = _grads(cfg, x, y)  # y sees the new x
    return x, y + lr * gy, state


def _gd(cfg, x, y, lr, state):
    gx, gy = _grads(cfg, x, y)
    return x - lr * gx, y - lr * gy, state  # descent on both: the study's part d


def _extragradient(cfg, x, y, lr, state):
    gx, gy = _grads(cfg, x, y)
    xh, yh = x - lr * gx, y + lr * gy  # extrapolate
    gx, gy = _grads(cfg, xh, yh)
    return x - lr * gx, y + lr * gy, state  # update from the start with the look-ahead gradient


def _optimistic(cfg, x, y, lr, state):
    gx, gy = _grads(cfg, x, y)
    px, py = state if state is not None else (gx, gy)  # first step: previous gradient = current
    return x - lr * (2 * gx - px), y + lr * (2 * gy - py), (gx, gy)


UPDATES: dict[str, Callable] = {
    "gda": _gda, "alt_gda": _alt_gda, "gd": _gd, "extragradient": _extragradient, "optimistic": _optimistic,
}


# ---- the analytic side: each update as a matrix -------------------------------------------------

def update_matrices(cfg: Config, algorithm: str, lrs: np.ndarray) -> np.ndarray:
    """(n, k, k) matrices M with state_{t+1} = M state_t; k = 2, or 4 for `optimistic` (z, z_prev)."""
    lrs = np.asarray(lrs, dtype=float)[:, None, None]
    hess = np.array([[2 * cfg.a, cfg.b], [cfg.b, 2 * cfg.c]])
    field = np.diag([1.0, -1.0]) @ hess  # descent-ascent direction: z+ = z - lr * field @ z
    eye = np.eye(2)
    if algorithm == "gda":
        return eye - lrs * field
    if algorithm == "gd":
        return eye - lrs * hess
    if algorithm == "alt_gda":
        a, b, c = cfg.a, cfg.b, cfg.c
        x_step = np.broadcast_to(eye, lrs.shape[:1] + (2, 2)).copy()  # x+ = (1 - 2a lr) x - b lr y
        x_step[:, 0, 0] = 1 - 2 * a * lrs[:, 0, 0]
        x_step[:, 0, 1] = -b * lrs[:, 0, 0]
        y_step = np.broadcast_to(eye, lrs.shape[:1] + (2, 2)).copy()  # y+ = y + lr (b x+ + 2c y)
        y_step[:, 1, 0] = b * lrs[:, 0, 0]
        y_step[:, 1, 1] = 1 + 2 * c * lrs[:, 0, 0]
        return y_step @ x_step
    if algorithm == "extragradient":
        step = eye - lrs * field
        return eye - lrs * field @ step  # z+ = z - lr F (I - lr F) z
    if algorithm == "optimistic":
        # z+ = z - lr F (2 z - z_prev): state (z, z_prev) -> [[I - 2 lr F, lr F], [I, 0]]
        top = np.concatenate([eye - 2 * lrs * field, lrs * field], axis=2)
        bottom = np.broadcast_to(np.concatenate([eye, np.zeros((2, 2))], axis=1), top.shape)
        return np.concatenate([top, bottom], axis=1)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def spectral_radius(cfg: Config, algorithm: str, lrs: np.ndarray) -> np.ndarray:
    """max |eigenvalue| of each lr's update matrix: < 1 iff the method converges from any start."""
    return np.abs(np.linalg.eigvals(update_matrices(cfg, algorithm, lrs))).max(axis=-1)


def stable_intervals(cfg: Config, algorithm: str, lr_max: float, points: int = 20001) -> list[tuple[float, float]]:
    """The lr intervals in (0, lr_max] where the spectral radius is < 1, endpoints refined by bisection."""
    grid = np.linspace(lr_max / points, lr_max, points)
    stable = spectral_radius(cfg, algorithm, grid) < 1
    intervals, start = [], None
    edges = lambda lo, hi: _bisect(cfg, algorithm, lo, hi)  # noqa: E731
    for i, ok in enumerate(stable):
        if ok and start is None:
            start = 0.0 if i == 0 else edges(grid[i - 1], grid[i])
        if not ok and start is not None:
            intervals.append((start, edges(grid[i - 1], grid[i])))
            start = None
    if start is not None:
        intervals.append((start, lr_max))
    return intervals


def _bisect(cfg: Config, algorithm: str, lo: float, hi: float) -> float:
    """The lr in [lo, hi] where stability flips (rho crosses 1)."""
    lo_stable = spectral_radius(cfg, algorithm, np.array([lo]))[0] < 1
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if (spectral_radius(cfg, algorithm, np.array([mid]))[0] < 1) == lo_stable:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---- the run ------------------------------------------------------------------------------------

def record_steps(steps: int, points: int) -> np.ndarray:
    """Log-spaced steps 0 .. T at which distances are reported."""
    return np.unique(np.concatenate([[0], np.round(np.geomspace(1, steps, points - 1)).astype(int)]))


def simulate(cfg: Config, algorithm: str, lrs: np.ndarray) -> tuple[dict, dict]:
    """Run one algorithm for every lr in `lrs` (vectorised lanes).

    Returns (rows, trace): per-lane columns, and the distance curve of every lane at the
    log-spaced `record_steps` while it runs (columns step, lr, x, y, distance).

    rate: the measured per-step contraction of the distance to the saddle over the second half of a
    lane's run, (d_s / d_{s/2})^(1 / (s - s/2)), s = the lane's last step. For a linear map this tends
    to the spectral radius (equal when the start has a component along the top eigenvector).
    """
    lrs = np.asarray(lrs, dtype=float)
    n = lrs.size
    sx, sy = cfg.saddle()
    sx, sy = (0.0, 0.0) if math.isnan(sx) else (sx, sy)
    x, y = np.full(n, cfg.x0), np.full(n, cfg.y0)
    dist = lambda x, y: np.hypot(x - sx, y - sy)  # noqa: E731
    d0 = dist(x, y)
    d_end = d0.copy()  # each lane's distance when it stopped (at T for lanes that ran to the end)
    stopped_at = np.full(n, cfg.steps)
    diverged = np.zeros(n, dtype=bool)
    active = np.ones(n, dtype=bool)
    update, state = UPDATES[algorithm], None
    recorded = set(record_steps(cfg.steps, cfg.record_points).tolist())
    trace = [(np.zeros(n, dtype=int), np.arange(n), x, y, d0)]
    for t in range(1, cfg.steps + 1):
        nx, ny, state = update(cfg, x, y, lrs, state)
        x, y = np.where(active, nx, x), np.where(active, ny, y)  # frozen lanes keep their values
        d = dist(x, y)
        d_end = np.where(active, d, d_end)
        blown = active & ~(d <= cfg.diverge_above)  # also catches inf / NaN
        vanished = active & (d < TINY)
        ended = blown | vanished
        if t in recorded:
            lanes = np.flatnonzero(active)  # lanes still running at t (incl. those ending now)
            trace.append((np.full(lanes.size, t), lanes, x[lanes], y[lanes], d[lanes]))
        if ended.any():
            stopped_at[ended] = t
            diverged |= blown
            active &= ~ended
        if not active.any():
            break
    half = stopped_at // 2
    d_half = _distances_at(cfg, algorithm, lrs, half, (sx, sy))
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(d_half > 0, (d_end / d_half) ** (1.0 / np.maximum(stopped_at - half, 1)), 0.0)
    rows = {
        "lr": lrs,
        "final_x": x, "final_y": y, "final_distance": d_end, "initial_distance": d0,
        # converged: contracting (asymptotically at the saddle); reached: there within T steps. Near a
        # stability edge a rate of 0.9999 is "converged" while the distance after T steps is still O(1)
        "rate": rate, "converged": rate < 1.0, "reached": d_end < cfg.reach_tol, "diverged": diverged,
        "stopped_at": stopped_at,
        "spectral_radius": spectral_radius(cfg, algorithm, lrs),
    }
    step, lane, tx, ty, td = (np.concatenate(column) for column in zip(*trace))
    return rows, {"step": step, "lr": lrs[lane], "x": tx, "y": ty, "distance": td}


def _distances_at(cfg: Config, algorithm: str, lrs: np.ndarray, at: np.ndarray, saddle: tuple) -> np.ndarray:
    """Each lane's distance to the saddle at its own step `at` (<= T / 2), by running the update again:
    memory O(lanes) instead of a (T + 1) x lanes history (T = 1e6 would be ~1 GB per trial), for half
    the steps once more. A lane is active until `at` < its stop, so the values are those of the run."""
    x, y = np.full(lrs.size, cfg.x0), np.full(lrs.size, cfg.y0)
    found = np.where(at == 0, np.hypot(x - saddle[0], y - saddle[1]), np.nan)
    update, state = UPDATES[algorithm], None
    with np.errstate(all="ignore"):  # lanes past their `at` may run off to inf: their value is kept
        for t in range(1, int(at.max()) + 1):
            x, y, state = update(cfg, x, y, lrs, state)
            found = np.where(at == t, np.hypot(x - saddle[0], y - saddle[1]), found)
    return found


def train_loop(config: Config, runtime) -> None:
    """Run every algorithm of `config` over its lr grid; report distance curves, then one row per lr.

    Reports are columnar (every value a scalar or an (n,) array): two reports per algorithm.
    """
    lrs = config.lr_grid()
    sx, sy = config.saddle()
    for algorithm in config.algorithms:
        rows, trace = simulate(config, algorithm, lrs)
        runtime.report({"algorithm": algorithm, **trace})  # one batch of step rows
        runtime.report({"algorithm": algorithm, **rows, "saddle_x": sx, "saddle_y": sy}, final=True)


# One step of one algorithm over a vector of learning rates (simulate): ~20 us of NumPy call overhead
# plus ~25 ns per lane, measured on a 2-core VM (AMD EPYC) at T = 1e5 and 1-1024 lanes.
STEP_S, LANE_STEP_S = 20e-6, 25e-9


def estimated_seconds(config: Config) -> float:
    """A trial's compute on one core, roughly (the registry's `estimate`: how the orchestrator knows a
    study's trials are short enough to run on the nodes already up instead of booting more)."""
    return len(config.algorithms) * config.steps * (STEP_S + LANE_STEP_S * config.lr_grid().size)
