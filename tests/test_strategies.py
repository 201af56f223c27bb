"""Gram strategies and pseudo-inverse solvers agree: layerwise Θ = dense Θ, and every strategy
gives the same θ' = −D⁺∇_X C (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.linalg import (
    QR_FALLBACK_SIZE,
    AutoGram,
    BlockedGram,
    CGSolver,
    CholeskySolver,
    DenseGram,
    GramOrQRSolver,
    LayerwiseGram,
    NormalCholeskySolver,
    NystromSolver,
    QRSolver,
    SVDSolver,
    auto_gram,
    auto_solver,
    resolve_solver,
)


def mlp_problem(n, q, hidden, activation="tanh", use_bias=True, parametrization="standard",
                in_size=2, seed=0):
    model = fl.MLP(in_size, q, hidden, activation, use_bias=use_bias,
                   parametrization=parametrization, key=jr.key(seed))
    x = jr.normal(jr.key(seed + 1), (n, in_size))
    y = jr.normal(jr.key(seed + 2), (n, q))
    return fl.LeastSquaresProblem(model, fl.Dataset(x, y))


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@eqx.filter_jit
def _grams(problem, theta, w):
    g1, t1 = LayerwiseGram()(problem, theta)
    d = problem.jacobian(theta, "rev")
    return g1, t1(w), d @ d.T, d.T @ w


GRAM_CASES = [  # tanh, with bias, Q = 1, ntk is covered by the `wide` tests below
    ("relu", False, 3, "ntk", [6, 5]),
    ("gelu", True, 2, "standard", [5, 4, 3]),
]


@pytest.mark.parametrize("activation,use_bias,q,par,hidden", GRAM_CASES)
def test_layerwise_gram_equals_dense(activation, use_bias, q, par, hidden):
    p = mlp_problem(6, q, hidden, activation, use_bias, par)
    theta = p.theta0 + 0.3 * jr.normal(jr.key(7), p.theta0.shape)  # off the init point
    w = jr.normal(jr.key(8), (p.num_outputs,))
    g_layer, dtw_layer, g_dense, dtw_dense = _grams(p, theta, w)
    assert g_layer.shape == (6 * q, 6 * q)
    np.testing.assert_allclose(g_layer, g_dense, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(g_dense))))
    np.testing.assert_allclose(dtw_layer, dtw_dense, rtol=0, atol=1e-12 * float(jnp.linalg.norm(dtw_dense)))


@pytest.fixture(scope="module")
def wide():
    """K = 1185 ≥ QN = 8; cond(D) ≈ 26 at θ0, so CG converges to float64 accuracy."""
    return mlp_problem(8, 1, [32, 32], parametrization="ntk")


@eqx.filter_jit
def _velocities(problem, theta, solvers):
    return [fl.AdaptedFlow(s).velocity(problem, theta) for s in solvers]


def test_overparametrised_strategies_agree(wide):
    solvers = [
        CholeskySolver(DenseGram("rev")),
        CholeskySolver(LayerwiseGram()),
        "auto",  # Cholesky of the AutoGram -> layerwise
        CGSolver(),
        NystromSolver(rank=4, rtol=1e-13),
        SVDSolver(),
    ]
    theta = wide.theta0
    vs = _velocities(wide, theta, solvers)
    ref = vs[-1]  # SVD
    for s, v in zip(solvers, vs):
        assert rel(v, ref) < 1e-9, (s, rel(v, ref))
    # and it is the adapted field: D θ' = −∇_X C
    x_dot = jax.jvp(wide.outputs, (theta,), (vs[1],))[1]
    g = wide.output_gradient(wide.outputs(theta))
    assert rel(x_dot, -g) < 1e-9


def test_underparametrised_strategies_agree():
    p = mlp_problem(40, 1, [2], in_size=3, seed=2)  # K = 11 < QN = 40, cond(D) ≈ 35
    assert p.num_params < p.num_outputs
    theta = p.theta0
    solvers = [NormalCholeskySolver(), QRSolver(), SVDSolver(), CGSolver()]
    sigma = fl.singular_values(p, theta)
    vs = _velocities(p, theta, solvers)
    # the normal equations square cond(D); keep this test inside their accuracy
    assert float(sigma[-1] / sigma[0]) < 1e3
    for s, v in zip(solvers, vs):
        assert rel(v, vs[2]) < 1e-9, (s, rel(v, vs[2]))


def test_damped_flow_layerwise_equals_dense(wide):
    @eqx.filter_jit
    def both(problem, theta):
        return (fl.DampedFlow(damping=1e-2).velocity(problem, theta),
                fl.DampedFlow(damping=1e-2, gram=DenseGram()).velocity(problem, theta))

    v_auto, v_dense = both(wide, wide.theta0)
    assert rel(v_auto, v_dense) < 1e-9


def test_singular_values_default_uses_layerwise(wide):
    @eqx.filter_jit
    def both(problem, theta):
        return (fl.singular_values(problem, theta),
                fl.singular_values(problem, theta, DenseGram()),
                jnp.linalg.svd(problem.jacobian(theta), compute_uv=False)[::-1])

    s_auto, s_dense, s_svd = both(wide, wide.theta0)
    np.testing.assert_allclose(s_auto, s_svd, rtol=1e-9)
    np.testing.assert_allclose(s_dense, s_svd, rtol=1e-9)


class _Quadratic(eqx.Module):
    """Not an MLP: f(x) = a·x + b (a·x)²."""

    a: jax.Array
    b: jax.Array

    def __call__(self, x):
        u = self.a @ x
        return jnp.stack([u + self.b * u**2])


def test_auto_choices(wide):
    # MLP, K ≥ QN, D small: Cholesky of the layerwise Gram with QR of D as its fallback
    s = resolve_solver("auto", wide)
    assert isinstance(s, GramOrQRSolver) and isinstance(s.gram, AutoGram)
    assert wide.num_params * wide.num_outputs <= QR_FALLBACK_SIZE
    assert isinstance(auto_gram(wide), LayerwiseGram)
    assert isinstance(fl.AdaptedFlow().solver, str)  # resolved lazily, per problem
    # Θ too big for the memory budget: matrix-free, Nyström-preconditioned
    assert isinstance(auto_solver(wide, memory_budget_bytes=8 * 63), NystromSolver)
    assert isinstance(auto_solver(wide, memory_budget_bytes=8 * 64), GramOrQRSolver)
    # underparametrised: QR of D
    under = mlp_problem(40, 1, [2], in_size=3, seed=2)
    # underparametrised: the SVD of D with the auto cutoff (QR's result at full column rank)
    svd = resolve_solver("auto", under)
    assert isinstance(svd, SVDSolver) and svd.rcond == pytest.approx(2.2e-16 ** (2 / 3), rel=1e-2)
    # not an MLP: the blocked Gram, and LayerwiseGram refuses with a clear error
    model = _Quadratic(jnp.array([0.5, -1.0, 2.0]), jnp.array(0.3))
    x = jr.normal(jr.key(0), (2, 3))
    p = fl.LeastSquaresProblem(model, fl.Dataset(x, jnp.ones((2, 1))))
    assert isinstance(auto_gram(p), BlockedGram)
    with pytest.raises(ValueError, match="MLP"):
        LayerwiseGram()(p, p.theta0)
    with pytest.raises(ValueError, match="K <= QN"):
        resolve_solver("normal_cholesky", wide)
    with pytest.raises(ValueError, match="unknown solver"):
        fl.AdaptedFlow(solver="lsmr")
    assert isinstance(fl.AdaptedFlow(solver="cg").solver, str)


def test_cg_respects_max_steps(wide):
    """An unconverged CG solve returns its iterate (no exception), and it is not yet D⁺g."""
    g = wide.output_gradient(wide.outputs(wide.theta0))

    @eqx.filter_jit
    def run(problem, theta, g):
        return (CGSolver(max_steps=1).solve(problem, theta, g)[0],
                SVDSolver().solve(problem, theta, g)[0])

    v1, ref = run(wide, wide.theta0, g)
    assert jnp.all(jnp.isfinite(v1)) and rel(v1, ref) > 1e-6


def test_auto_choices_cholesky_alone_for_large_d(wide, monkeypatch):
    import flowlab.linalg._solvers as solvers

    monkeypatch.setattr(solvers, "QR_FALLBACK_SIZE", wide.num_params * wide.num_outputs - 1)
    assert isinstance(auto_solver(wide), CholeskySolver)


class _Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.atleast_1d(self.w @ x)


def _ill_conditioned(cond=1e9, n=8, m=12):
    """X_j = w·x_j with the data's singular values from 1 to 1/cond: D is the data, fixed;
    targets from a teacher w*, so the flow's end point stays at |θ| = O(1)."""
    u, _ = jnp.linalg.qr(jr.normal(jr.key(0), (n, n)))
    v, _ = jnp.linalg.qr(jr.normal(jr.key(1), (m, n)))
    x = u @ jnp.diag(jnp.logspace(0, -jnp.log10(cond), n)) @ v.T
    data = fl.Dataset(x, (x @ jr.normal(jr.key(2), (m,)))[:, None])
    return fl.LeastSquaresProblem(_Linear(jr.normal(jr.key(3), (m,))), data, kappa=1.0)


def test_auto_route_factorises_d_where_the_gram_cannot():
    """cond(D) = 1e9: Θ = DDᵀ has cond 1e18 > 1/eps, so Cholesky of Θ is useless, while the
    SVD of D resolves it. 'auto' takes the SVD there, matches numpy's pseudo-inverse, and the
    adapted flow runs at 2κ instead of stopping at s = 0; no rank guard by default."""
    problem = _ill_conditioned()
    theta, g = problem.theta0, problem.output_gradient(problem.outputs(problem.theta0))
    solver = resolve_solver("auto", problem)
    assert isinstance(solver, GramOrQRSolver)
    assert isinstance(solver.fallback, SVDSolver)
    assert fl.AdaptedFlow().resolve(problem).default_max_condition(problem) is None

    @eqx.filter_jit
    def solve(s):
        return s.solve(problem, theta, g)[0]

    ref = solve(SVDSolver())
    assert rel(solve(solver), ref) < 1e-5
    chol = solve(CholeskySolver())
    assert not bool(jnp.all(jnp.isfinite(chol))) or rel(chol, ref) > 1e-2
    eps = 1e-6
    tr = fl.simulate(problem, fl.AdaptedFlow(), t1=1.2 * np.log(1 / eps) / 2,
                     cost_target_relative=eps, rtol=1e-10, atol=1e-10)
    assert tr.stop_reason == "cost_target"
    assert float(tr.t_final) == pytest.approx(np.log(1 / eps) / 2, rel=1e-3)
    valid = np.asarray(tr.valid)
    smin, smax = np.asarray(tr.sigma_min)[valid], np.asarray(tr.sigma_max)[valid]
    np.testing.assert_allclose(smin / smax, 1e-9, rtol=1e-6)  # measured by SVD, not the Gram
