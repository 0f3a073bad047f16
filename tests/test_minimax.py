"""The facts of the minimax study, pinned on the workload itself (no Ray)."""

import numpy as np
import pytest

from workloads import minimax
from workloads.minimax import ALGORITHMS, UPDATES, Config, simulate, spectral_radius, stable_intervals, update_matrices
from workloads.runtime import LocalRuntime

STUDY = Config()  # f = 4x^2 - 4y^2 from (1, 1)


def test_saddle_is_origin():
    assert STUDY.saddle() == (0.0, 0.0)
    # gradients vanish there and f is a min in x, a max in y
    gx, gy = minimax._grads(STUDY, np.array([0.0]), np.array([0.0]))
    assert gx[0] == 0 and gy[0] == 0
    assert STUDY.a > 0 > STUDY.c


@pytest.mark.parametrize("lr", [0.01, 0.1, 0.2, 0.3])
def test_gda_multiplies_both_coordinates_by_one_minus_8lr(lr):
    # the study's write-up says (1 + 8 lr) for y: ascent on -4y^2 gives y + lr * (-8 y) = (1 - 8 lr) y
    x, y, _ = UPDATES["gda"](STUDY, np.array([0.7]), np.array([-1.3]), np.array([lr]), None)
    assert x[0] == pytest.approx((1 - 8 * lr) * 0.7, rel=1e-14)
    assert y[0] == pytest.approx((1 - 8 * lr) * -1.3, rel=1e-14)


def test_gda_converges_exactly_for_lr_below_a_quarter():
    lrs = np.array([1e-3, 0.01, 0.1, 0.124, 0.125, 0.2, 0.249, 0.2499, 0.25, 0.2501, 0.26, 0.4])
    rows, _ = simulate(STUDY, "gda", lrs)
    assert rows["converged"].tolist() == (lrs < 0.25).tolist()
    assert stable_intervals(STUDY, "gda", 0.5) == [(0.0, pytest.approx(0.25, abs=1e-12))]
    # at lr = 1/8 the factor is 0: the saddle is reached in one step
    assert rows["final_distance"][lrs == 0.125][0] == 0.0
    # "reached" asks more: within T = STUDY.steps the distance fell below reach_tol. Near the edge
    # (|1 - 8 lr| = 0.992 at lr = 0.249, 0.9992 at 0.2499) and at lr = 1e-3 (0.992) the run contracts
    # too slowly: sqrt(2) * 0.992^T > 1e-6 for T = 1000
    factor = np.abs(1 - 8 * lrs)
    with np.errstate(over="ignore"):  # diverging factors overflow to inf: not reached
        expected = np.sqrt(2) * factor ** STUDY.steps < STUDY.reach_tol
    assert rows["reached"].tolist() == expected.tolist()
    assert rows["converged"][lrs == 0.249][0] and not rows["reached"][lrs == 0.249][0]
    assert rows["reached"][lrs == 0.1][0] and not rows["reached"][lrs == 1e-3][0]


def test_plain_gd_diverges_in_y_for_every_lr():
    lrs = Config().lr_grid()
    rows, _ = simulate(STUDY, "gd", lrs)
    assert not rows["converged"].any()
    assert rows["diverged"].all() or (np.abs(rows["final_y"]) > 1).all()
    assert (np.abs(rows["final_y"]) > 1).all()  # |y| grows like (1 + 8 lr)^t
    # ... while x, a true descent, shrinks wherever GDA converges
    small = lrs < 0.25
    assert (np.abs(rows["final_x"][small]) < 1).all()
    assert stable_intervals(STUDY, "gd", 0.5) == []
    # with y0 = 0, y stays 0 and gd is just descent on x: converges for lr < 1/4
    rows0, _ = simulate(Config(y0=0.0), "gd", np.array([0.01, 0.2]))
    assert rows0["converged"].all()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_spectral_radius_agrees_with_measured_convergence_on_the_whole_grid(algorithm):
    lrs = STUDY.lr_grid()
    rows, _ = simulate(STUDY, algorithm, lrs)
    rho = spectral_radius(STUDY, algorithm, lrs)
    assert rows["converged"].tolist() == (rho < 1).tolist()
    measurable = rho > 1e-3  # below that the lane hits machine zero within a few steps
    np.testing.assert_allclose(rows["rate"][measurable], rho[measurable], rtol=1e-4)


@pytest.mark.parametrize("cfg", [
    Config(b=3.0, y0=0.5),  # coupled
    Config(a=0.0, b=1.0, c=0.0, y0=0.5),  # bilinear: GDA diverges for every lr, EG / OGDA converge for small lr
    Config(a=1.0, b=-2.0, c=-0.5, x0=-0.3, y0=2.0),
], ids=["coupled", "bilinear", "asymmetric"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_spectral_radius_agrees_with_measurement_on_general_quadratics(cfg, algorithm):
    # Starts are generic (not on an eigenvector). Within 1e-3 of rho = 1 (e.g. alternating GDA on a
    # bilinear game, |eigenvalues| = 1: a bounded cycle) 1000 steps cannot tell the two apart.
    lrs = cfg.lr_grid()
    rows, _ = simulate(cfg, algorithm, lrs)
    rho = spectral_radius(cfg, algorithm, lrs)
    decidable = np.abs(rho - 1) > 1e-3
    assert decidable.sum() > lrs.size // 2 or algorithm == "alt_gda"
    assert rows["converged"][decidable].tolist() == (rho[decidable] < 1).tolist()
    measurable = decidable & (rho > 1e-3)
    np.testing.assert_allclose(rows["rate"][measurable], rho[measurable], rtol=2e-2)


def test_bilinear_game_separates_the_methods():
    cfg = Config(a=0.0, b=1.0, c=0.0)
    assert stable_intervals(cfg, "gda", 0.5) == []
    assert stable_intervals(cfg, "extragradient", 0.5)[0][0] == 0.0
    assert stable_intervals(cfg, "optimistic", 0.5)[0][0] == 0.0


@pytest.mark.parametrize("algorithm", ["gda", "alt_gda", "gd", "extragradient"])
def test_update_matrix_is_one_step_of_the_update_rule(algorithm):
    cfg = Config(a=1.5, b=0.7, c=-2.0)
    lrs = np.array([0.03, 0.2])
    z = np.array([0.4, -1.1])
    x, y, _ = UPDATES[algorithm](cfg, np.full(2, z[0]), np.full(2, z[1]), lrs, None)
    expected = update_matrices(cfg, algorithm, lrs) @ z
    np.testing.assert_allclose(np.stack([x, y], axis=1), expected, rtol=1e-12)


def test_diverging_runs_stop_without_inf_or_nan():
    lrs = np.array([0.5, 1.0, 5.0, 100.0])
    for algorithm in ALGORITHMS:
        rows, trace = simulate(STUDY, algorithm, lrs)
        for column in ("final_x", "final_y", "final_distance", "rate"):
            assert np.isfinite(rows[column]).all(), (algorithm, column)
        assert np.isfinite(trace["distance"]).all()
        assert rows["diverged"].all() and (rows["stopped_at"] < STUDY.steps).all()


def test_train_loop_reports_steps_then_one_final_row_per_lr():
    cfg = Config(num_lrs=20, steps=50, algorithms=("gda", "gd"))
    runtime = LocalRuntime()
    minimax.train_loop(cfg, runtime)
    assert [f["algorithm"] for f in runtime.finals] == ["gda", "gd"]
    assert all(len(f["lr"]) == cfg.lr_grid().size for f in runtime.finals)
    steps = runtime.steps[0]
    assert steps["step"].min() == 0 and steps["step"].max() == 50


def test_lr_grid_is_dense_and_covers_the_range():
    grid = Config().lr_grid()
    assert grid.size >= 200
    assert grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(0.5)
    assert ((grid > 0.2) & (grid < 0.3)).sum() >= 10  # dense where GDA switches (lr = 1/4)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lrs=(0.1, -0.1)), dict(lr_min=0.0), dict(algorithms=("sgd",))])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Config(**bad)


def test_report_reads_each_games_ranges_within_that_game():
    """A sweep over the game's coefficients: each algorithm's analytic range is that game's, never the first's."""
    import pandas as pd

    from orchestrator.reports.study import minimax_ranges

    rows = []
    for a in (4.0, 2.0):
        config = minimax.Config(a=a, c=-a, lrs=tuple(np.linspace(0.01, 0.6, 60)), algorithms=("gda",), steps=200)
        for lr in config.lrs:
            rho = float(minimax.spectral_radius(config, "gda", np.array([lr]))[0])
            rows.append({"a": a, "b": 0.0, "c": -a, "x0": 1.0, "y0": 1.0, "steps": 200, "algorithm": "gda", "lr": lr,
                         "converged": rho < 1, "spectral_radius": rho})
    ranges = minimax_ranges(pd.DataFrame(rows))
    assert list(ranges["game"]) == ["a=4 b=0 c=-4 x0=1 y0=1 steps=200", "a=2 b=0 c=-2 x0=1 y0=1 steps=200"]
    assert list(ranges["analytic"]) == ["(0, 0.25)", "(0, 0.5)"] and (ranges["disagree"] == 0).all()
