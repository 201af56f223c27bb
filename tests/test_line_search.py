"""Safeguards of the discrete steps: backtracking with an Armijo condition, ENGD's grid line
search, and the 'no_descent' stop when no tried step lowers the cost."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl


@pytest.fixture(scope="module")
def problem():
    model = fl.MLP(2, 1, [8], "tanh", key=jr.key(0))  # K = 33 ≥ QN = 6
    x = jr.normal(jr.key(1), (6, 2))
    return fl.LeastSquaresProblem(model, fl.Dataset(x, jnp.sin(3 * x[:, :1])))


def test_grid_search_picks_the_lowest_cost(problem):
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), step_size=8 / problem.kappa, num_steps=12,
                        grid_search=12, diagnostics=False, cost_target_relative=1e-20)
    c = np.asarray(tr.cost)[np.asarray(tr.valid)]
    assert np.all(np.diff(c) < 0)
    # h = 8/κ overshoots: the search settles on h·2^-3 = 1/κ, the Gauss–Newton step
    h = np.diff(np.asarray(tr.ts)[np.asarray(tr.valid)])
    assert np.any(np.isclose(h, 1 / problem.kappa))
    assert tr.stop_reason in ("cost_target", "no_descent")


def test_armijo_backtracking(problem):
    v = fl.AdaptedFlow()
    plain = fl.euler_steps(problem, v, step_size=3 / problem.kappa, num_steps=3,
                           backtracking=True, diagnostics=False)
    armijo = fl.euler_steps(problem, v, step_size=3 / problem.kappa, num_steps=3,
                            backtracking=True, sufficient_decrease=0.5, diagnostics=False)
    # the Armijo condition asks for more than a decrease: at least as many halvings
    assert int(armijo.num_rejected_steps) >= int(plain.num_rejected_steps)
    c = np.asarray(armijo.cost)[np.asarray(armijo.valid)]
    assert np.all(np.diff(c) < 0)


def test_no_descent_stops_the_run():
    # an uphill field: no step along it lowers C, so the first step already ends the run
    class Uphill(fl.GradientFlow):
        def velocity(self, problem, theta):
            return -super().velocity(problem, theta)

    model = fl.MLP(1, 1, [3], key=jr.key(0))
    p = fl.LeastSquaresProblem(model, fl.Dataset(jnp.ones((2, 1)), jnp.zeros((2, 1)) + 1.0))
    for kw in ({"backtracking": True, "max_backtracks": 5}, {"grid_search": 5}):
        tr = fl.euler_steps(p, Uphill(), num_steps=10, diagnostics=False, **kw)
        assert tr.stop_reason == "no_descent"
        assert int(tr.num_accepted_steps) == 0
        np.testing.assert_array_equal(tr.theta_final, p.theta0)


def test_setting_checks():
    with pytest.raises(ValueError, match="choose one line search"):
        fl.IntegratorOptions(backtracking=True, grid_search=10)
    with pytest.raises(ValueError, match="grid_search"):
        fl.IntegratorOptions(grid_search=0)
    with pytest.raises(ValueError, match="sufficient_decrease"):
        fl.IntegratorOptions(sufficient_decrease=1.5)
