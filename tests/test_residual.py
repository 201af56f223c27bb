"""Residual problems (MATH §8): any r(θ), C = (κ/2)|r|², J = ∂r/∂θ. The adapted flow gives
r(s) = e^{−κs} r(0) at full row rank; its Euler step h = 1/κ is the minimum-norm Gauss–Newton
step; bad residual functions are refused with a clear message (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab import pde
from flowlab.linalg import gram_matrix


@pytest.fixture(scope="module")
def poisson():
    """−u'' = π² sin(πx): 4 interior points and 2 boundary points (P = 6), K = 49, cond(J) ≈ 145."""
    return pde.poisson_1d(fl.MLP(1, 1, [16], "tanh", key=jr.key(0)), num_interior=4)


@eqx.filter_jit
def _jacobians(p, theta):
    return p.jacobian(theta), jax.jacrev(p.residual)(theta)


def test_residual_problem_is_a_problem(poisson):
    p = poisson
    assert (p.num_params, p.num_outputs) == (49, 6) and p.overparametrised
    assert p.kappa == 1.0 and np.all(np.asarray(p.targets) == 0)
    r = p.residual(p.theta0)
    np.testing.assert_allclose(float(p.cost(p.theta0)), 0.5 * float(r @ r), rtol=1e-14)
    # the rows by one reverse pass per collocation point equal jacrev of the whole residual
    rows, full = _jacobians(p, p.theta0)
    np.testing.assert_allclose(rows, full, rtol=0, atol=1e-12)
    assert set(p.residual_terms(p.theta0)) == {"interior", "boundary"}
    # θ <-> model round trip
    np.testing.assert_array_equal(p.flatten(p.model(p.theta0)), p.theta0)


def test_residual_law_on_poisson_1d(poisson):
    """|log C(s)/C(0) + 2κs| ≤ 1e-5 along the adapted flow (r(s) = e^{−κs} r(0)), and the
    run stops at the a priori T_ε."""
    eps = 1e-8
    t_eps = fl.theory.stopping_time(1.0, eps, poisson.kappa)
    tr = fl.simulate(poisson, fl.AdaptedFlow(), t1=1.2 * t_eps, num_saves=21,
                     cost_target_relative=eps, rtol=1e-10, atol=1e-10, diagnostics=False,
                     check_finite=False, max_condition=None)  # fewer guards: a faster compile
    assert tr.stop_reason == "cost_target"
    ok = np.asarray(tr.valid)
    s, c = np.asarray(tr.ts)[ok], np.asarray(tr.cost)[ok]
    assert len(s) >= 15
    law = np.abs(np.log(c / float(tr.cost0)) + 2 * poisson.kappa * s)
    assert np.max(law) <= 1e-5, np.max(law)
    # the residual itself moves on the straight segment r(s) = e^{−κs} r(0)
    r = np.asarray(tr.outputs)[ok]
    np.testing.assert_allclose(r, np.exp(-poisson.kappa * s)[:, None] * np.asarray(tr.outputs0),
                               rtol=0, atol=1e-6 * float(np.max(np.abs(tr.outputs0))))
    np.testing.assert_allclose(float(tr.t_final), t_eps, rtol=1e-4)
    out = fl.theory.compare(tr, epsilon_relative=eps)
    assert out["rate_relative_error"] < 1e-5


def _tiny(model_key, num_points):
    """r(θ) = tanh(A θ_w) ⊙ b + θ_c x²: a small, generic (non-pointwise) residual."""

    class Tiny(eqx.Module):
        w: jax.Array
        c: jax.Array

        def __call__(self, x):
            return jnp.tanh(x @ self.w) + self.c * x[:, 0] ** 2

    x = jr.normal(jr.key(5), (num_points, 3))
    model = Tiny(jr.normal(model_key, (3,)), jnp.asarray(0.3))
    return model, (lambda m: m(x) - jnp.sin(x[:, 1]))


@pytest.mark.parametrize("num_points", [2, 7])  # K = 4 ≥ P = 2 (min-norm), K < P = 7 (lstsq)
def test_discrete_step_is_min_norm_least_squares(num_points):
    model, residual = _tiny(jr.key(1), num_points)
    p = fl.ResidualProblem(model, residual, kappa=0.7)
    solver = "auto" if p.overparametrised else "qr"
    tr = fl.euler_steps(p, fl.AdaptedFlow(solver), num_steps=1, save_theta=True,
                        diagnostics=False)
    step = np.asarray(tr.theta[1] - tr.theta[0])
    j = np.asarray(jax.jacrev(p.residual)(p.theta0))
    r = np.asarray(p.residual(p.theta0))
    expected = -np.linalg.lstsq(j, r, rcond=None)[0]  # h = 1/κ: the Gauss–Newton step
    np.testing.assert_allclose(step, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(tr.ts[1]), 1 / 0.7, rtol=1e-14)


def test_any_residual_plugs_into_flows_and_theory():
    model, residual = _tiny(jr.key(2), 3)
    p = fl.ResidualProblem(model, residual)  # κ = 1/P
    assert p.kappa == pytest.approx(1 / 3) and p.structured_rows is False
    np.testing.assert_allclose(gram_matrix(p, p.theta0), np.asarray(p.jacobian(p.theta0))
                               @ np.asarray(p.jacobian(p.theta0)).T, rtol=1e-12)
    tr = fl.simulate(p, fl.GradientFlow(), t1=1.0, num_saves=3, diagnostics=False)
    assert tr.stop_reason == "t1_reached" and float(tr.cost_final) < float(tr.cost0)
    tr = fl.euler_steps(p, fl.DampedFlow(damping=1e-3), num_steps=3, backtracking=True)
    assert float(tr.cost_final) < float(tr.cost0) and np.all(np.isfinite(tr.sigma_min))
    assert fl.AdaptedFlow().rate_bound(p) == pytest.approx(2 / 3)


# --- bad residual functions ------------------------------------------------------------------


@pytest.fixture(scope="module")
def net():
    return fl.MLP(1, 1, [4], "tanh", key=jr.key(3))


X = jnp.linspace(0.0, 1.0, 5)[:, None]


def test_wrong_shape(net):
    with pytest.raises(ValueError, match=r"1-D array of shape \(P,\).*got shape \(5, 1\)"):
        fl.ResidualProblem(net, lambda m: jax.vmap(m)(X))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        fl.ResidualProblem(net, lambda m: jnp.sum(jax.vmap(m)(X)))
    with pytest.raises(ValueError, match="one array"):
        fl.ResidualProblem(net, lambda m: (jax.vmap(m)(X)[:, 0], X[:, 0]))


def test_non_finite(net):
    with pytest.raises(ValueError, match=r"non-finite values .* entries \[2\]"):
        fl.ResidualProblem(net, lambda m: jax.vmap(m)(X)[:, 0] / (X[:, 0] - 0.5))


def test_not_depending_on_theta(net):
    frozen = jax.vmap(net)(X)[:, 0]
    with pytest.raises(ValueError, match="does not depend on θ"):
        fl.ResidualProblem(net, lambda m: frozen - 1.0)
    with pytest.raises(ValueError, match=r"entries \[5\] .* do not depend on θ"):
        fl.ResidualProblem(net, lambda m: jnp.append(jax.vmap(m)(X)[:, 0], 1.0))


def test_other_mistakes(net):
    with pytest.raises(TypeError, match="function of the model"):
        fl.ResidualProblem(net, jnp.zeros(3))
    with pytest.raises(ValueError, match="fails on the model"):
        fl.ResidualProblem(net, lambda m: m(jnp.zeros(7)))
    with pytest.raises(ValueError, match="floating-point"):
        fl.ResidualProblem(net, lambda m: (jax.vmap(m)(X)[:, 0] > 0).astype(jnp.int32))
    with pytest.raises(TypeError, match="equinox Module"):
        fl.ResidualProblem(lambda x: x, lambda m: X[:, 0])
    with pytest.raises(ValueError, match="kappa"):
        fl.ResidualProblem(net, lambda m: jax.vmap(m)(X)[:, 0], kappa=-1.0)
