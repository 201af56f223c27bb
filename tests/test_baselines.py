"""flowlab.baselines: the one-loop forms and scipy's least_squares against the libraries
called directly (float64)."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest
from scipy.optimize import least_squares

import flowlab as fl
from flowlab import baselines as bl
from flowlab import mgh


def _small_fit():
    """Under-parametrised (K = 10 < N = 24): a positive minimum, so "the same minimum" is a
    statement about a point, not about reaching zero."""
    data = fl.smooth_regression(jr.key(0), 24, 1)
    return fl.LeastSquaresProblem(fl.MLP(1, 1, [3], "tanh", key=jr.key(1)), data)


@pytest.mark.parametrize("method, name", [("trf", "bard"), ("lm", "bard"), ("trf", "fit")])
def test_scipy_least_squares_matches_scipy_called_directly(method, name):
    """Same start, same algorithm and tolerances: the same minimiser (|Δx| ≤ 1e-8·(1 + |x|))
    and the same cost (relative 1e-10)."""
    p = _small_fit() if name == "fit" else mgh.residual_problem(name)
    assert p.theta0.dtype == jnp.float64
    x0 = np.asarray(p.theta0)
    residual = lambda x: p.residual(x)
    fun = jax.jit(residual)
    jac = jax.jit(jax.jacfwd(residual))
    direct = least_squares(lambda x: np.asarray(fun(x)), x0, jac=lambda x: np.asarray(jac(x)),
                           method=method, ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=2000)
    run = bl.scipy_least_squares(p, method=method, jac_mode="fwd", max_nfev=2000)
    c_direct = 0.5 * p.kappa * float(direct.fun @ direct.fun)
    assert run.cost[-1] == pytest.approx(c_direct, rel=1e-10)
    assert run.info["cost"] == run.cost[-1]
    assert run.cost[0] == pytest.approx(float(p.cost(p.theta0)), rel=1e-12)
    x = run.thetas[-1]
    assert np.max(np.abs(x - direct.x)) <= 1e-8 * (1 + np.max(np.abs(direct.x)))
    assert run.stop == "converged" and run.info["status"] == direct.status
    # a positive minimum: not a start point that happened to be a zero
    assert c_direct > 1e-6 * run.cost[0]
    np.testing.assert_array_equal(run.thetas[0], x0)


def test_scipy_least_squares_weighted_cost_target():
    """weighted: scipy's cost is C itself; the callback stops at the first iterate with
    C ≤ cost_target."""
    p = mgh.residual_problem("rosenbrock", kappa=0.5)
    c0 = float(p.cost(p.theta0))
    run = bl.scipy_least_squares(p, weighted=True, cost_target=1e-6 * c0)
    assert run.stop == "cost_target"
    assert run.cost[-1] <= 1e-6 * c0
    assert run.cost[-1] == pytest.approx(float(p.cost(jnp.asarray(run.thetas[-1]))), rel=1e-9)


def test_until_done_is_optimistix_least_squares():
    """The optimistix methods in one while loop take optimistix.least_squares' steps."""
    p = _small_fit()
    scale = math.sqrt(p.kappa)
    for method, solver in ((bl.gauss_newton(1e-10, 1e-10, jac="bwd", weighted=True),
                            optx.GaussNewton(rtol=1e-10, atol=1e-10)),
                           (bl.levenberg_marquardt(1e-10, 1e-10, jac="bwd", weighted=True),
                            optx.LevenbergMarquardt(rtol=1e-10, atol=1e-10))):
        sol = optx.least_squares(lambda th, a: scale * p.residual(th), solver, p.theta0,
                                 options={"jac": "bwd"}, max_steps=50, throw=False)
        theta, steps = jax.jit(bl.until_done(method, p, 50))(p.theta0)
        assert int(steps) == int(sol.stats["num_steps"])
        np.testing.assert_allclose(theta, sol.value, rtol=1e-12, atol=1e-12)


def test_adam_to_target_takes_the_steps_of_adam():
    """adam_to_target's iterate after n steps is adam's after n steps (the same update)."""
    p = _small_fit()
    n = 40
    steps, cost = jax.jit(bl.adam_to_target(p, 1e-2, 0.0))(p.theta0, n)
    assert int(steps) == n  # the target 0 is never met: the limit
    run = bl.run(bl.adam(1e-2), p, max_steps=n, chunk=n)
    assert float(cost) == pytest.approx(run.cost[-1], rel=1e-12)
    # a reachable target: the count is that of the first iterate with C ≤ target
    target = 0.5 * run.cost[-1]
    steps, cost = jax.jit(bl.adam_to_target(p, 1e-2, target))(p.theta0, 10_000)
    assert float(cost) <= target
    per_step = bl.run(bl.adam(1e-2), p, max_steps=int(steps), chunk=1)
    assert per_step.cost[-1] == pytest.approx(float(cost), rel=1e-12)
    assert np.all(per_step.cost[:-1] > target)


def test_until_done_stops_at_a_failed_step_as_optimistix_does():
    """Plain Gauss–Newton from the README fit's start at width 16 (K = 337 > N = 64) leaves
    for infinity and its step fails after a few steps: both loops stop there."""
    data = fl.smooth_regression(jr.key(0), 64, in_size=2)
    p = fl.LeastSquaresProblem(fl.MLP(2, 1, [16, 16], "tanh", key=jr.key(1)), data)
    scale = math.sqrt(p.kappa)
    sol = optx.least_squares(lambda th, a: scale * p.residual(th),
                             optx.GaussNewton(rtol=1e-13, atol=1e-13), p.theta0,
                             options={"jac": "bwd"}, max_steps=100, throw=False)
    assert sol.result != optx.RESULTS.successful and int(sol.stats["num_steps"]) < 100
    method = bl.gauss_newton(1e-13, 1e-13, jac="bwd", weighted=True)
    theta, steps = jax.jit(bl.until_done(method, p, 100))(p.theta0)
    assert int(steps) == int(sol.stats["num_steps"])
    np.testing.assert_array_equal(np.isfinite(theta), np.isfinite(sol.value))
