"""The matrix-free route for large QN (flowlab.linalg._nystrom): products by D and Dᵀ, the
Nyström approximation and preconditioner, conjugate residuals, and NystromSolver (float64)."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.linalg import (
    CholeskySolver,
    DenseGram,
    NystromSolver,
    conjugate_residual,
    jacobian_products,
    nystrom_preconditioner,
)


def mlp_problem(n=40, q=1, hidden=(32, 32), use_bias=True, par="standard", seed=0, in_size=3):
    model = fl.MLP(in_size, q, hidden, "tanh", use_bias=use_bias, parametrization=par,
                   key=jr.key(seed))
    data = fl.smooth_regression(jr.key(seed + 1), n, in_size, out_size=q)
    return fl.LeastSquaresProblem(model, data)


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("q,use_bias,par", [(1, True, "standard"), (2, False, "ntk")])
def test_mlp_products_equal_the_dense_jacobian(q, use_bias, par):
    p = mlp_problem(12, q, (7, 5), use_bias, par)
    theta = p.theta0 + 0.2 * jr.normal(jr.key(3), p.theta0.shape)
    u = jr.normal(jr.key(4), theta.shape)
    w = jr.normal(jr.key(5), (p.num_outputs,))
    examples = jnp.array([1, 4, 9])

    @eqx.filter_jit
    def run(problem, theta):
        pr = jacobian_products(problem, theta)
        return pr.jvp(u), pr.vjp(w), pr.columns(examples), problem.jacobian(theta)

    du, dtw, cols, d = run(p, theta)
    rows = (examples[:, None] * q + jnp.arange(q)[None, :]).reshape(-1)
    assert rel(du, d @ u) < 1e-12
    assert rel(dtw, d.T @ w) < 1e-12
    assert rel(cols, (d @ d.T)[:, rows]) < 1e-12


def _gram(problem, theta):
    d = problem.jacobian(theta)
    return d @ d.T


@pytest.mark.parametrize("sketch_kind", ["columns", "gaussian"])
def test_nystrom_approximation_is_below_theta_and_exact_at_full_rank(sketch_kind):
    """Θ̂ = ΘΩ(ΩᵀΘΩ)⁻¹ΩᵀΘ satisfies 0 ≼ Θ̂ ≼ Θ (a Schur complement) and equals Θ when
    l ≥ rank Θ."""
    p = mlp_problem(30, 1, (16,))
    gram = _gram(p, p.theta0)
    n = gram.shape[0]
    lam_max = float(jnp.linalg.eigvalsh(gram)[-1])

    def approx(size):
        if sketch_kind == "columns":
            idx = jnp.sort(jr.choice(jr.key(size), n, (size,), replace=False))
            pre = nystrom_preconditioner(gram[:, idx], idx)
        else:
            test, _ = jnp.linalg.qr(jr.normal(jr.key(size), (n, size)))
            pre = nystrom_preconditioner(gram @ test, test)
        return pre, (pre.basis * pre.eigenvalues[None, :]) @ pre.basis.T

    pre, hat = approx(10)
    gap = jnp.linalg.eigvalsh(gram - hat)
    assert float(gap[0]) > -1e-9 * lam_max  # Θ − Θ̂ ⪰ 0
    assert float(jnp.linalg.eigvalsh(hat)[0]) > -1e-9 * lam_max
    assert int(pre.rank) == 10
    pre, hat = approx(n)
    assert float(jnp.linalg.norm(gram - hat) / jnp.linalg.norm(gram)) < 1e-7


def test_preconditioner_formula_and_conditioning():
    """P⁻¹ = (λ̂_l + μ)U(Λ̂ + μ)⁻¹Uᵀ + (I − UUᵀ): built as a matrix it matches the formula, and
    with the exact sketch (l = n, μ = λ_n) P⁻¹Θ has eigenvalues 2λ_nλ_i/(λ_i + λ_n) in
    [λ_n, 2λ_n], so cond(P⁻¹Θ) ≤ 2 while cond Θ > 1e6."""
    p = mlp_problem(30, 1, (16,))
    gram = _gram(p, p.theta0)
    n = gram.shape[0]
    idx = jnp.arange(n)
    pre = nystrom_preconditioner(gram, idx)
    u, lam, mu = pre.basis, pre.eigenvalues, pre.shift
    formula = (lam[-1] + mu) * (u / (lam + mu)[None, :]) @ u.T + jnp.eye(n) - u @ u.T
    as_matrix = jax.vmap(pre)(jnp.eye(n)).T
    assert rel(as_matrix, formula) < 1e-10
    eig = np.sort(np.linalg.eigvals(np.asarray(as_matrix @ gram)).real)
    ev_theta = np.linalg.eigvalsh(np.asarray(gram))
    assert ev_theta[-1] / ev_theta[0] > 1e6
    assert eig[-1] / eig[0] < 2.0 + 1e-6


def test_conjugate_residual_solves_and_never_increases_the_residual():
    a = jr.normal(jr.key(0), (60, 60))
    spd = a @ a.T + 1e-3 * jnp.eye(60)
    b = jr.normal(jr.key(1), (60,))
    exact = jnp.linalg.solve(spd, b)
    out = conjugate_residual(lambda v: spd @ v, b, rtol=1e-11, max_steps=400)
    assert float(out.relative_residual) <= 1e-11
    assert rel(spd @ out.solution, b) <= 1e-11 * 1.01  # reported residual is the true one
    assert rel(out.solution, exact) < 1e-6
    history = [float(conjugate_residual(lambda v: spd @ v, b, rtol=0.0, max_steps=k)
                     .relative_residual) for k in range(1, 40, 3)]
    assert all(y <= x * (1 + 1e-12) for x, y in itertools.pairwise(history))


@pytest.fixture(scope="module")
def wide():
    """N = 60, K = 1 201: cond Θ ≈ 1e8 at θ0 (smooth targets, fast NTK spectrum decay)."""
    return mlp_problem(60, 1, (32, 32))


def test_nystrom_solver_is_the_pseudo_inverse(wide):
    theta = wide.theta0
    g = wide.residual(theta)

    @eqx.filter_jit
    def run(problem, theta, g):
        exact = CholeskySolver(DenseGram()).solve(problem, theta, g)[0]
        full = NystromSolver(rank=60, rtol=1e-7).solve_with_stats(problem, theta, g)
        low = NystromSolver(rank=24, rtol=1e-10, max_steps=30).solve_with_stats(problem, theta, g)
        plain = conjugate_residual(lambda w: jacobian_products(problem, theta).jvp(
            jacobian_products(problem, theta).vjp(w)), g, None, 1e-10, 30)
        return exact, full, low, plain, problem.jacobian(theta)

    exact, (v, stats), (_, low), plain, d = run(wide, theta, g)
    assert rel(v, exact) < 1e-6
    # the reported residual is |g − D v|/|g| for the returned v = Dᵀw
    assert abs(rel(d @ v, g) - float(stats.relative_residual)) < 1e-9
    assert float(stats.relative_residual) <= 1e-7 and int(stats.num_steps) <= 30
    # a rank-24 preconditioner beats none at the same 30 steps (measured 0.0079 against 0.050)
    assert float(low.relative_residual) < 0.25 * float(plain.relative_residual)


class _Net(eqx.Module):
    """Not a flowlab.MLP: the generic route (Gaussian sketch by products with Θ)."""

    inner: eqx.nn.MLP

    def __call__(self, x):
        return self.inner(x)


def test_nystrom_solver_generic_model():
    data = fl.smooth_regression(jr.key(1), 20, 3)
    model = _Net(eqx.nn.MLP(3, 1, 16, 2, jnp.tanh, key=jr.key(0)))
    p = fl.LeastSquaresProblem(model, data)
    assert jacobian_products(p, p.theta0).columns is None
    g = p.residual(p.theta0)

    @eqx.filter_jit
    def run(problem, theta, g):
        return (NystromSolver(rank=20, rtol=1e-10).solve(problem, theta, g)[0],
                CholeskySolver(DenseGram()).solve(problem, theta, g)[0])

    v, ref = run(p, p.theta0, g)
    assert rel(v, ref) < 1e-6


def test_adapted_steps_with_nystrom_follow_the_output_law():
    """Discrete adapted steps with an inexact solve (rtol 0.1) still reach 1e-8·C(0); a small
    step h changes X by −hκ(r − e) with |e| ≤ 0.1·|r| up to O(h²)."""
    p = mlp_problem(48, 1, (64, 64))
    flow = fl.AdaptedFlow(solver=NystromSolver(rank=16, rtol=0.1, max_steps=200))
    tr = fl.euler_steps(p, flow, num_steps=12, cost_target_relative=1e-8, diagnostics=False)
    assert tr.stop_reason == "cost_target"
    h = 1e-3 / p.kappa

    @eqx.filter_jit
    def output_step(problem, theta):
        theta1 = theta + h * flow.velocity(problem, theta)
        return problem.outputs(theta1) - problem.outputs(theta), problem.residual(theta)

    dx, r0 = output_step(p, p.theta0)
    assert rel(dx / (h * p.kappa), -r0) < 0.1 + 1e-2


def test_nystrom_solver_checks():
    with pytest.raises(ValueError, match="rank"):
        NystromSolver(rank=0)
    with pytest.raises(ValueError, match="rtol"):
        NystromSolver(rtol=1.5)
    under = mlp_problem(40, 1, (2,))
    with pytest.raises(ValueError, match="K >= QN"):
        fl.AdaptedFlow(solver="nystrom").check(under)
