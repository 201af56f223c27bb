"""Discrete adapted steps: h = 1/κ is the minimum-norm Gauss–Newton step (quadratic convergence
near a full-rank solution); small steps contract the cost by (1 − hκ)² to first order."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl


@pytest.fixture(scope="module")
def problem():
    model = fl.MLP(2, 1, [16], "tanh", key=jr.key(0))  # K = 65 ≥ QN = 8
    x = jr.normal(jr.key(1), (8, 2))
    return fl.LeastSquaresProblem(model, fl.Dataset(x, jnp.sin(2 * x[:, :1]) * x[:, 1:]))


def test_gauss_newton_steps_converge_quadratically(problem):
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), num_steps=25, cost_target_relative=1e-10,
                        diagnostics=False)
    assert tr.stop_reason == "cost_target"
    assert float(tr.cost_final) <= 1e-10 * float(tr.cost0)
    c = np.asarray(tr.cost)[np.asarray(tr.valid)]
    assert len(c) - 1 == int(tr.num_steps) <= 15
    # near the solution each step squares the relative residual: ratios collapse
    ratios = c[1:] / c[:-1]
    assert ratios[-1] < 1e-3 and ratios[-1] < ratios[-2]
    # ts accumulates h = 1/κ per step
    np.testing.assert_allclose(float(tr.t_final), int(tr.num_steps) / problem.kappa, rtol=1e-12)


def test_small_steps_contract_like_the_flow(problem):
    h = 0.01 / problem.kappa
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), step_size=h, num_steps=3, diagnostics=False)
    c = np.asarray(tr.cost)
    # C_{k+1}/C_k = (1 − hκ)² + O(h²): the linearised contraction of the adapted field
    np.testing.assert_allclose(c[1:] / c[:-1], (1 - h * problem.kappa) ** 2, rtol=1e-3)


def test_backtracking_makes_cost_monotone(problem):
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), step_size=20 / problem.kappa, num_steps=8,
                        backtracking=True, diagnostics=False)
    c = np.asarray(tr.cost)[np.asarray(tr.valid)]
    assert np.all(np.diff(c) < 0)
    assert int(tr.num_rejected_steps) > 0  # h = 20/κ overshoots and is halved


def test_bad_step_size(problem):
    with pytest.raises(ValueError, match="step_size"):
        fl.euler_steps(problem, fl.AdaptedFlow(), step_size=-1.0)
