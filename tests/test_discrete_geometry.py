"""Forward-Euler steps of the adapted flow (MATH §6): per-step contraction (1 − hκ)² and the
minimum-norm Gauss–Newton step at hκ = 1."""

import jax.random as jr
import numpy as np
import pytest

import flowlab as fl


@pytest.fixture(scope="module")
def problem():
    return fl.LeastSquaresProblem(fl.MLP(2, 1, (8,), key=jr.PRNGKey(1)),
                                  fl.teacher(jr.PRNGKey(0), 6, 2), kappa=1.0)


@pytest.mark.parametrize("hk", [0.1, 0.5])
def test_cost_ratio_tends_to_linearised_contraction(problem, hk):
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), step_size=hk / problem.kappa, num_steps=30,
                        diagnostics=False)
    c = np.asarray(tr.cost)
    ratio = c[1:] / c[:-1]
    # r_{k+1} = (1 − hκ) r_k + O(h|r_k|²): the ratio tends to (1 − hκ)² as r → 0
    err = np.abs(ratio - (1 - hk) ** 2)
    assert err[-1] < 2e-6 and err[-1] < 0.1 * err[0]


def test_unit_step_is_gauss_newton_with_quadratic_convergence(problem):
    flow = fl.AdaptedFlow()
    tr = fl.euler_steps(problem, flow, num_steps=6, diagnostics=False, save_theta=True)
    th = np.asarray(tr.theta)
    # the step is the minimum-norm solution of the linearised problem D δ = −(X − Y)
    d = np.asarray(problem.jacobian(th[0]))
    step = np.linalg.lstsq(d, -np.asarray(problem.residual(th[0])), rcond=None)[0]
    np.testing.assert_allclose(th[1] - th[0], step, atol=1e-10)
    r = np.sqrt(2 * np.asarray(tr.cost) / problem.kappa)  # |X − Y|
    live = np.nonzero(r[1:] > 1e-13)[0]  # steps before the float64 floor
    assert live.size >= 3
    m = r[1:][live] / r[:-1][live] ** 2  # |r_{k+1}| / |r_k|²: bounded under quadratic convergence
    assert np.max(m[1:]) < 20 * np.min(m[1:])
    assert r[4] < 1e-12 * r[0]  # four steps; a linear rate of 1/2 would need ~40
