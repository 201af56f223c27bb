"""The underparametrised adapted flow (Gauss–Newton, K < QN) and the degeneration guards."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize

import flowlab as fl


def teacher_problem(act="tanh", noise=0.01, perturb=0.1, width=3, n=40):
    """A width-`width` student fitted to a noisy teacher of its own shape, started near it."""
    teacher = fl.MLP(2, 1, [width], act, key=jr.key(0))
    x = jr.normal(jr.key(7), (n, 2))
    y = jax.vmap(teacher)(x) + noise * jr.normal(jr.key(8), (n, 1))
    problem = fl.LeastSquaresProblem(teacher, fl.Dataset(x, y))
    theta0 = problem.theta0 + perturb * jr.normal(jr.key(9), problem.theta0.shape)
    return problem, theta0


def test_gauss_newton_flow_reaches_the_least_squares_solution():
    problem, theta0 = teacher_problem()
    assert problem.num_params < problem.num_outputs
    traj = fl.simulate(problem, fl.AdaptedFlow("qr"), theta0, t1=1600.0, num_saves=11,
                       rtol=1e-10, atol=1e-10)
    assert traj.stop_reason == "t1_reached"
    # C is non-increasing along X' = −P ∇_X C
    assert np.all(np.diff(np.asarray(traj.cost)) <= 1e-14)
    theta = traj.theta_final
    d = np.asarray(problem.jacobian(theta))
    r = np.asarray(problem.residual(theta))
    # equilibrium: Dᵀ(X − Y) = 0 (relative to |D||r|)
    assert np.linalg.norm(d.T @ r) <= 1e-8 * np.linalg.norm(d, 2) * np.linalg.norm(r)

    def resid(t):
        return np.asarray(problem.residual(jnp.asarray(t)))

    def jac(t):
        return np.asarray(problem.jacobian(jnp.asarray(t)))

    ref = scipy.optimize.least_squares(resid, np.asarray(theta0), jac=jac, method="trf",
                                       xtol=1e-15, ftol=1e-15, gtol=1e-15)
    ref_cost = 0.5 * problem.kappa * np.sum(ref.fun**2)
    assert float(traj.cost_final) == pytest.approx(ref_cost, rel=1e-6)
    assert float(traj.cost_final) > 0  # noisy targets: no interpolation with K < QN


def test_degenerating_run_stops_with_reason_and_no_nan():
    """Far from the teacher the exact Gauss–Newton flow drives σ_min(D) → 0 (a saturating tanh
    unit); the guard stops it with the reason recorded."""
    problem, theta0 = teacher_problem(noise=0.1, perturb=0.3, width=4)
    traj = fl.simulate(problem, fl.AdaptedFlow("qr"), theta0, t1=1.0, num_saves=101,
                       rtol=1e-9, atol=1e-9)
    assert traj.stop_reason == "rank_loss"
    assert 0 < float(traj.t_final) < 1.0
    valid = np.asarray(traj.valid)
    assert valid.sum() >= 2
    for field in (traj.cost, traj.outputs, traj.sigma_min, traj.sigma_max, traj.theta_norm,
                  traj.theta_final, traj.cost_final):
        assert not np.any(np.isnan(np.asarray(field)))
    sigma = np.asarray(traj.sigma_min)[valid]
    # the guard measures σ(D) the way the QR solve sees D: by its SVD
    sigma_end = fl.singular_values(problem, traj.theta_final, route="factor")
    sigma_final, smax_final = float(sigma_end[0]), float(sigma_end[-1])
    assert sigma_final * 1e10 <= smax_final * 1.0001  # the condition guard's threshold
    assert sigma_final < 1e-3 * sigma[0]


def test_singular_gram_stops_as_rank_loss_or_singular_not_max_steps():
    """Two equal inputs make Θ singular: the rank guard stops the run; without it the failed
    Cholesky is named 'singular' (lineax's verdict, not a later non-finite field) instead of
    shrinking steps until max_steps; the Euler steps stop the same way."""
    x = jr.normal(jr.key(0), (6, 2))
    x = x.at[1].set(x[0])
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [16], key=jr.key(2)),
                                     fl.Dataset(x, jr.normal(jr.key(1), (6, 1))))
    flow = fl.AdaptedFlow("cholesky")
    kw = dict(t1=10.0, num_saves=5)
    assert fl.simulate(problem, flow, **kw).stop_reason == "rank_loss"
    bare = fl.simulate(problem, flow, max_condition=None, **kw)
    assert bare.stop_reason == "singular"
    assert not np.any(np.isnan(np.asarray(bare.cost)))
    steps = fl.euler_steps(problem, flow, num_steps=5)
    assert steps.stop_reason == "singular"
    assert int(steps.num_accepted_steps) == 0
    blind = fl.simulate(problem, flow, max_condition=None, check_finite=False, max_steps=500, **kw)
    assert blind.stop_reason == "max_steps"


def test_theta_bound_stops_run():
    problem, theta0 = teacher_problem()
    bound = 0.5 * float(jnp.linalg.norm(theta0))
    traj = fl.simulate(problem, fl.GradientFlow(), theta0, t1=5.0, num_saves=3,
                       theta_norm_max=bound)
    assert traj.stop_reason == "theta_diverged"
