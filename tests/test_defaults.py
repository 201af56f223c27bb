"""The defaults on rank-deficient problems (#19): `AdaptedFlow()` with no settings follows the
paper's flow on the retained modes instead of stopping at s = 0, the rate-bound guard fires only
where its full-rank premise holds, and a config's t1 reaches its cost target (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.study.config import parse_config


class _Linear(eqx.Module):
    theta: jax.Array


def _rank_deficient(p=30, k=40, rank=20, seed=0):
    """r(θ) = Aθ − b with rank A = 20 < P = 30 ≤ K = 40, singular values 1 … 1e-3."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(p, rank)))
    v, _ = np.linalg.qr(rng.normal(size=(k, rank)))
    a = u @ np.diag(np.geomspace(1.0, 1e-3, rank)) @ v.T
    b = rng.normal(size=p)
    problem = fl.ResidualProblem(_Linear(jnp.asarray(rng.normal(size=k))),
                                 lambda m: jnp.asarray(a) @ m.theta - jnp.asarray(b))
    return problem, a, b, u


def test_auto_steps_land_on_the_truncated_least_squares_solution():
    problem, a, b, _ = _rank_deficient()
    theta0 = np.asarray(problem.theta0)
    # numpy's minimum-norm correction: θ* = θ0 − A⁺(Aθ0 − b)
    expected = theta0 - np.linalg.pinv(a, rcond=1e-10) @ (a @ theta0 - b)
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), num_steps=5)
    assert tr.stop_reason in ("no_descent", "t1_reached")
    np.testing.assert_allclose(np.asarray(tr.theta_final), expected, rtol=0, atol=1e-9)
    c_star = 0.5 * problem.kappa * np.sum((a @ expected - b) ** 2)
    assert float(tr.cost_final) == pytest.approx(c_star, rel=1e-9)


def test_auto_ode_follows_the_law_on_the_retained_modes_and_runs_to_t1():
    """The default simulate neither stops at s = 0 (rank_loss) nor on the bound guard: the
    residual's part in range(A) decays as e^{−κs}, the rest stays (MATH §5)."""
    problem, a, b, u = _rank_deficient()
    t1 = 40.0 / problem.kappa * 0.25
    tr = fl.simulate(problem, fl.AdaptedFlow(), t1=t1, num_saves=11, rtol=1e-10, atol=1e-10)
    assert tr.stop_reason == "t1_reached"
    r = np.asarray(tr.outputs)  # X = r(θ), Y = 0
    s = np.asarray(tr.ts)
    retained, rest = r @ u, r - (r @ u) @ u.T
    np.testing.assert_allclose(retained, np.exp(-problem.kappa * s)[:, None] * retained[0],
                               rtol=1e-6, atol=1e-9 * np.abs(retained[0]).max())
    np.testing.assert_allclose(rest, np.broadcast_to(rest[0], rest.shape), atol=1e-8)
    # the saved rank records the deficiency
    assert np.all(np.asarray(tr.rank)[np.asarray(tr.valid)] == 20)


def _duplicated_inputs():
    """A tanh net on 6 points of which two pairs coincide with different targets: rank D = 4 <
    QN = 6 everywhere, C* = (κ/4)Σ(y_i − y_j)² over the pairs (the fibre minimiser of the paper's
    rank-deficient case)."""
    x = jr.normal(jr.key(1), (4, 2))
    x = jnp.concatenate([x, x[:2]])
    y = jnp.asarray([0.3, -0.2, 0.5, 0.1, -0.4, 0.6])[:, None]
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [32, 32], "tanh", key=jr.key(2)),
                                     fl.Dataset(x, y))
    c_star = problem.kappa / 4 * ((0.3 + 0.4) ** 2 + (-0.2 - 0.6) ** 2)
    return problem, c_star


def test_rank_deficient_run_is_not_stopped_by_the_bound_guard():
    problem, c_star = _duplicated_inputs()
    t1 = 30 / problem.kappa
    tr = fl.simulate(problem, fl.AdaptedFlow(), t1=t1, rtol=1e-10, atol=1e-10)
    assert tr.stop_reason == "t1_reached"
    assert float(tr.cost_final) == pytest.approx(c_star, rel=1e-6)


class _HalfSpeed(fl.AdaptedFlow):
    """A corrupted field: half the adapted velocity, so C = e^{−κs}C(0) above the bound."""

    def velocity_details(self, problem, theta):
        v, result, full_rank = super().velocity_details(problem, theta)
        return 0.5 * v, result, full_rank

    def resolve(self, problem, *, stepping=False):
        return self


def test_full_rank_run_with_a_corrupted_field_is_stopped_by_the_bound_guard():
    x = jr.normal(jr.key(3), (6, 2))
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [32, 32], "tanh", key=jr.key(4)),
                                     fl.Dataset(x, jnp.sin(x[:, :1])))
    flow = _HalfSpeed(fl.CholeskySolver())
    tr = fl.simulate(problem, flow, t1=20 / problem.kappa)
    assert tr.stop_reason == "bound_violated"
    honest = fl.simulate(problem, fl.AdaptedFlow(), t1=20 / problem.kappa)
    assert honest.stop_reason == "t1_reached"


def _poisson_on_equinox_mlp(width=16, n=24):
    """−u'' = π² sin πx on (0, 1), u(0) = u(1) = 0, written by hand on an equinox.nn.MLP (not
    flowlab.pde): J is numerically rank-deficient at θ0."""
    net = eqx.nn.MLP(1, 1, width, 2, activation=jnp.tanh, key=jr.key(7))
    xi = jnp.linspace(0.0, 1.0, n + 2)[1:-1]

    def residual(model):
        u = lambda x: model(jnp.stack([x]))[0]  # noqa: E731
        uxx = jax.vmap(jax.grad(jax.grad(u)))(xi)
        interior = (-uxx - jnp.pi**2 * jnp.sin(jnp.pi * xi)) / jnp.sqrt(n)
        return jnp.concatenate([interior, jnp.stack([u(0.0), u(1.0)]) / jnp.sqrt(2.0)])

    problem = fl.ResidualProblem(net, residual)
    grid = jnp.linspace(0.0, 1.0, 501)

    def error(theta):
        model = problem.model(theta)
        got = jax.vmap(lambda x: model(jnp.stack([x]))[0])(grid)
        exact = jnp.sin(jnp.pi * grid)
        return float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact))

    return problem, error


def test_pinn_defaults_fit_a_rank_deficient_residual():
    problem, error = _poisson_on_equinox_mlp()
    sigma = np.linalg.svd(np.asarray(problem.jacobian(problem.theta0)), compute_uv=False)
    assert sigma[0] / sigma[-1] > 1e12  # numerically rank-deficient, as the PINN
    steps = fl.euler_steps(problem, fl.AdaptedFlow(), num_steps=100)
    assert error(steps.theta_final) < 1e-7
    assert float(steps.cost_final) < 1e-16 * float(steps.cost0)
    eps = 1e-8
    ode = fl.simulate(problem, fl.AdaptedFlow(), t1=1.2 * np.log(1 / eps) / (2 * problem.kappa),
                      cost_target_relative=eps, diagnostics=False)
    assert ode.stop_reason == "cost_target"
    # the residual law on the retained modes gives C = e^{−2κs}C(0): T_ε = ln(1/ε)/(2κ)
    assert float(ode.t_final) == pytest.approx(np.log(1 / eps) / (2 * problem.kappa), rel=1e-2)


def test_config_t1_defaults_to_auto_when_a_cost_target_is_set():
    base = {"name": "t", "data": {"generator": "teacher", "num_points": 6},
            "model": {"depth": 1, "width": 8}, "flows": {"adapted": {}}}
    targeted = parse_config({**base, "integrator": {"cost_target_relative": 1e-6}}, "inline")
    assert targeted.config["integrator"]["t1"] == "auto"
    plain = parse_config(base, "inline")
    assert plain.config["integrator"]["t1"] == fl.IntegratorOptions().t1
    explicit = parse_config({**base, "integrator": {"cost_target_relative": 1e-6, "t1": 3.0}},
                            "inline")
    assert explicit.config["integrator"]["t1"] == 3.0


@pytest.mark.parametrize("route", ["gram", "adaptive", "factor"])
def test_saved_diagnostics_equal_a_full_svd(route):
    """σ_min, σ_max and rank of the saved diagnostics (from one Cholesky factor and inverse /
    power iteration where Θ resolves D) equal numpy's SVD of D to 1e-8."""
    x = jr.normal(jr.key(5), (12, 2))
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [24, 24], "tanh", key=jr.key(6)),
                                     fl.Dataset(x, jnp.cos(x[:, :1])))
    sigma = np.linalg.svd(np.asarray(problem.jacobian(problem.theta0)), compute_uv=False)
    low, high, rank = jax.jit(lambda th: fl.linalg.spectrum_ends(problem, th, route))(
        problem.theta0)
    assert float(low) == pytest.approx(sigma[-1], rel=1e-8)
    assert float(high) == pytest.approx(sigma[0], rel=1e-8)
    assert int(rank) == 12
    # at rank loss (a duplicated point) the rank is counted from the SVD of D
    dup = fl.LeastSquaresProblem(problem.model(problem.theta0),
                                 fl.Dataset(jnp.concatenate([x, x[:1]]),
                                            jnp.cos(jnp.concatenate([x, x[:1]])[:, :1])))
    _, _, rank = fl.linalg.spectrum_ends(dup, dup.theta0, route)
    assert int(rank) == 12


@pytest.mark.parametrize("flow", [fl.AdaptedFlow(), fl.AdaptedFlow("svd", rcond=1e-10),
                                  fl.AdaptedFlow("cholesky")], ids=["auto", "svd", "cholesky"])
def test_euler_diagnostics_come_from_the_step_and_equal_a_full_svd(flow):
    """Default `euler_steps` saves σ_min, σ_max and rank of D at every iterate from the step's
    own factorisation (the last iterate's apart): equal to numpy's SVD of D there to 1e-8."""
    x = jr.normal(jr.key(7), (10, 2))
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [16, 16], "tanh", key=jr.key(8)),
                                     fl.Dataset(x, jnp.sin(2 * x[:, :1])))
    tr = fl.euler_steps(problem, flow, num_steps=4, save_theta=True)
    n = int(tr.num_accepted_steps)
    assert n >= 2
    for k in range(n + 1):
        sigma = np.linalg.svd(np.asarray(problem.jacobian(tr.theta[k])), compute_uv=False)
        assert float(tr.sigma_min[k]) == pytest.approx(sigma[-1], rel=1e-8)
        assert float(tr.sigma_max[k]) == pytest.approx(sigma[0], rel=1e-8)
        assert int(tr.rank[k]) == 10
