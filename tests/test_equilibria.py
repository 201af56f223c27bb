"""Equilibria and rank loss (MATH §4): the toy model u·v·a and an underparametrised MLP."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl

A = jnp.array([1.0, 2.0, -0.5, 0.7])
Y = jnp.array([0.3, 1.0, 0.2, -0.4])
W_STAR = float(A @ Y / (A @ A))
STARTS = np.array([[0.8, -0.3], [-1.2, 0.5], [0.2, 1.5], [1.0, 0.1]])


def _toy_problem():
    return fl.LeastSquaresProblem(fl.ScalarProductModel(1.0, 1.0),
                                  fl.Dataset(A[:, None], Y[:, None]), kappa=1.0)


def test_toy_predicted_end_points_are_equilibria():
    pb = _toy_problem()
    for u0, v0 in STARTS:
        th = jnp.asarray(fl.product_model_endpoint(u0, v0, A, Y))
        np.testing.assert_allclose(th[0] * th[1], W_STAR, rtol=1e-14)
        np.testing.assert_allclose(th[0] ** 2 - th[1] ** 2, u0**2 - v0**2, rtol=1e-12)
        eq = fl.analyse_equilibrium(pb, th)
        assert eq.rank == 1 and eq.stationarity_relative < 1e-14
        assert eq.hessian_null_count == eq.expected_null_dim == 1
        # Hessian κ|a|²(v, u)(v, u)ᵀ: the nonzero eigenvalue is κ|a|²(u² + v²)
        np.testing.assert_allclose(eq.hessian_eigenvalues[1], float(A @ A) * float(th @ th),
                                   rtol=1e-12)
    # the standard and adapted fields are both ∝ (v, u): u² − v² is conserved
    th = jnp.array([0.8, -0.3])
    for flow in (fl.GradientFlow(), fl.AdaptedFlow(solver="svd")):
        v = flow.velocity(pb, th)
        assert abs(float(th[0] * v[0] - th[1] * v[1])) < 1e-14


@pytest.fixture(scope="module")
def toy_runs():
    pb = _toy_problem()
    flow = fl.AdaptedFlow(solver=fl.SVDSolver(rcond=1e-10))
    tr = fl.simulate(pb, flow, jnp.asarray(STARTS), t1=40.0, num_saves=41, rtol=1e-12,
                     atol=1e-12, max_condition=None)
    return pb, tr


def test_toy_ends_on_hyperbola_at_predicted_point(toy_runs):
    pb, tr = toy_runs
    assert pb.num_params == 2
    end = np.asarray(tr.theta_final)
    # every start ends on u v = <a, Y>/|a|², at the point fixed by the conserved u² − v²
    np.testing.assert_allclose(end[:, 0] * end[:, 1], W_STAR, atol=1e-9)
    for (u0, v0), e in zip(STARTS, end):
        np.testing.assert_allclose(e, fl.product_model_endpoint(u0, v0, A, Y), atol=1e-8)
    # distinct starts end at distinct points: the equilibria are not isolated
    assert np.min(np.abs(np.diff(end[:, 0]))) > 0.05


def test_toy_cost_decays_to_the_floor_at_rate_2kappa(toy_runs):
    _, tr = toy_runs
    c_star = float(0.5 * (Y @ Y - (A @ Y) ** 2 / (A @ A)))
    # w = u v obeys w' = −κ(w − w*) exactly, so C(s) − C* = e^{−2κs}(C(0) − C*)
    s = np.asarray(tr.ts[0])[:15]
    excess = np.asarray(tr.cost)[:, :15] - c_star
    np.testing.assert_allclose(excess, (np.asarray(tr.cost0) - c_star)[:, None] * np.exp(-2 * s),
                               rtol=1e-7, atol=1e-14)


def test_toy_equilibrium_analysis(toy_runs):
    pb, tr = toy_runs
    for th in np.asarray(tr.theta_final):
        eq = fl.analyse_equilibrium(pb, th)
        assert eq.cost > 0.1 and eq.rank == 1 and eq.rank_deficient
        assert eq.stationarity_relative < 1e-10
        # Hessian κ|a|²(v, u)(v, u)ᵀ: one zero eigenvalue (K − r = 1), the other κ|a|²(u² + v²)
        assert eq.hessian_null_count == eq.expected_null_dim == 1
        np.testing.assert_allclose(eq.hessian_eigenvalues[1], float(A @ A) * (th @ th), rtol=1e-8)


def test_non_equilibrium_is_reported_as_such():
    pb = _toy_problem()
    eq = fl.analyse_equilibrium(pb, jnp.array([0.8, -0.3]))
    assert eq.stationarity_relative > 0.1
    with pytest.raises(ValueError, match="shape"):
        fl.analyse_equilibrium(pb, jnp.zeros(3))


def _bottleneck():
    """A linear bottleneck MLP (4 -> 2 -> 3, biases): K = 19 < QN = 24. Its model set is the
    affine maps of rank ≤ 2, so its best fit is the reduced-rank regression fit."""
    ds = fl.random_labels(jr.PRNGKey(3), 8, 4, 3)
    pb = fl.LeastSquaresProblem(fl.MLP(4, 3, (2,), "identity", key=jr.PRNGKey(0)), ds, kappa=1.0)
    x, y = np.asarray(ds.inputs), np.asarray(ds.targets)
    xc, yc = x - x.mean(0), y - y.mean(0)
    b_ols = np.linalg.lstsq(xc, yc, rcond=None)[0]
    _, sv, vt = np.linalg.svd(xc @ b_ols, full_matrices=False)
    c_star = 0.5 * (np.sum((yc - xc @ b_ols) ** 2) + np.sum(sv[2:] ** 2))
    v2 = vt[:2].T  # (Q, 2)
    w1, w2 = (b_ols @ v2).T, v2
    b2 = y.mean(0) - w2 @ w1 @ x.mean(0)
    net = eqx.tree_at(lambda m: (m.weights, m.biases), pb.model(),
                      ([jnp.asarray(w1), jnp.asarray(w2)], [jnp.zeros(2), jnp.asarray(b2)]))
    return pb, pb.flatten(net), c_star


def test_rank_deficient_equilibrium_of_an_mlp():
    pb, theta_star, c_star = _bottleneck()
    assert pb.num_params < pb.num_outputs
    eq = fl.analyse_equilibrium(pb, theta_star)
    np.testing.assert_allclose(eq.cost, c_star, rtol=1e-12)
    assert eq.cost > 1.0 and eq.stationarity_relative < 1e-12
    # rank D = K − 6 < QN (GL(2) acting on the hidden layer: 4, b1 absorbed by b2: 2)
    assert eq.rank == pb.num_params - 6 and eq.rank_deficient
    # the critical set has dimension K − r: exactly that many zero Hessian eigenvalues, and a gap
    assert eq.hessian_null_count == eq.expected_null_dim == 6
    lam = np.sort(np.abs(eq.hessian_eigenvalues))
    assert lam[5] < 1e-10 * lam[-1] < lam[6] * 1e-4


def test_adapted_flow_converges_to_the_reduced_rank_fit():
    pb, _, c_star = _bottleneck()
    tr = fl.simulate(pb, fl.AdaptedFlow(solver=fl.SVDSolver(rcond=1e-10)), t1=60.0,
                     num_saves=7, rtol=1e-11, atol=1e-11, max_condition=None, diagnostics=False)
    assert tr.stop_reason == "t1_reached"
    cost = np.asarray(tr.cost)
    assert np.all(np.diff(cost) <= 1e-12 * cost[0])  # X' = −P∇C: C non-increasing
    eq = fl.analyse_equilibrium(pb, tr.theta_final)
    np.testing.assert_allclose(eq.cost, c_star, rtol=1e-9)
    assert eq.stationarity_relative < 1e-9 and eq.rank < pb.num_outputs
    assert eq.hessian_null_count == eq.expected_null_dim == 6
