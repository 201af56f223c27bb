"""Levenberg–Marquardt steps of the adapted flow (`euler_steps(levenberg_marquardt=True)`): the
damped step against an independent formula, its λ → 0 limit, and the globalisation where full
Gauss–Newton steps diverge."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.cli import main
from flowlab.study.store import read_summary

SOLVERS = ("cholesky", "gram_or_qr", fl.NystromSolver(rank=64, rtol=1e-13, max_steps=200))


@pytest.fixture(scope="module")
def problem():
    data = fl.teacher(jr.key(0), 24, 3)  # QN = 24 ≤ K = 353
    return fl.LeastSquaresProblem(fl.MLP(3, 1, [16, 16], "tanh", key=jr.key(1)), data)


@pytest.mark.parametrize("solver", SOLVERS, ids=("cholesky", "gram_or_qr", "nystrom"))
def test_damped_step_is_the_regularised_least_squares_step(problem, solver):
    # v_λ = −Dᵀ(Θ + λI)⁻¹g must equal −(DᵀD + λI)⁻¹Dᵀg (push-through identity; a K × K solve,
    # independent of the QN × QN route), and D v_λ = −Θ(Θ + λI)⁻¹g
    theta = problem.theta0
    d = np.asarray(problem.jacobian(theta))
    g = np.asarray(problem.output_gradient(problem.outputs(theta)))
    lam_max = np.linalg.eigvalsh(d @ d.T)[-1]
    flow = fl.AdaptedFlow(solver=solver)
    for damping in (1e-6 * lam_max, 1e-3 * lam_max, lam_max):
        v = np.asarray(flow.damped_velocity(problem, theta, damping)[0])
        k = d.shape[1]
        expected = -np.linalg.solve(d.T @ d + damping * np.eye(k), d.T @ g)
        np.testing.assert_allclose(v, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
        theta_gram = d @ d.T
        dv = -theta_gram @ np.linalg.solve(theta_gram + damping * np.eye(len(g)), g)
        np.testing.assert_allclose(d @ v, dv, rtol=0, atol=1e-9 * np.abs(dv).max())


def test_vanishing_damping_is_the_adapted_step(problem):
    theta = problem.theta0
    flow = fl.AdaptedFlow(solver="cholesky")
    d = problem.jacobian(theta)
    lam_min = float(jnp.linalg.eigvalsh(d @ d.T)[0])
    v = flow.velocity(problem, theta)
    # |v_λ − v| = O(λ/λ_min)·|v|
    v_small = flow.damped_velocity(problem, theta, 1e-8 * lam_min)[0]
    assert float(jnp.linalg.norm(v_small - v) / jnp.linalg.norm(v)) < 1e-6


def test_initial_damping_is_relative_to_the_residual_rayleigh_quotient(problem):
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), num_steps=2, levenberg_marquardt=True,
                        initial_damping=0.01, diagnostics=False)
    d = problem.jacobian(problem.theta0)
    r = problem.residual(problem.theta0)
    expected = 0.01 * float(r @ (d @ (d.T @ r)) / (r @ r))
    assert float(tr.extras["damping"][0]) == pytest.approx(expected, rel=1e-10)


def test_converges_where_full_gauss_newton_steps_diverge():
    # sin(8x) on 12 points: full steps h = 1/κ overflow within 40 steps (C/C(0) → inf); the
    # damped steps lower C at every accepted step down to 1e-12·C(0)
    x = jnp.linspace(-1, 1, 12)[:, None]
    p = fl.LeastSquaresProblem(fl.MLP(1, 1, [16], "tanh", key=jr.key(0)),
                               fl.Dataset(x, jnp.sin(8 * x)))
    settings = {"diagnostics": False, "max_condition": None, "cost_target_relative": 1e-12}
    full = fl.euler_steps(p, fl.AdaptedFlow("cholesky"), num_steps=40, **settings)
    worst = np.asarray(full.cost / full.cost0)[np.asarray(full.valid)].max()
    # full steps blow C up by 8 orders or more, until Θ's Cholesky breaks down ('singular')
    assert not worst < 1e6 and full.stop_reason in ("singular", "non_finite_field", "t1_reached")
    for solver in ("cholesky", fl.NystromSolver(rank=12, rtol=1e-12)):
        lm = fl.euler_steps(p, fl.AdaptedFlow(solver=solver), num_steps=80,
                            levenberg_marquardt=True, **settings)
        assert lm.stop_reason == "cost_target"
        assert float(lm.cost_final) <= 1e-12 * float(lm.cost0)
        valid = np.asarray(lm.valid)
        assert np.all(np.diff(np.asarray(lm.cost)[valid]) < 0)
        assert int(lm.num_rejected_steps) >= 1  # the damping was raised at least once
        assert int(lm.num_accepted_steps) + int(lm.num_rejected_steps) == int(lm.num_steps)
        assert int(lm.num_accepted_steps) == int(valid.sum()) - 1
        damping = np.asarray(lm.extras["damping"])[valid]
        assert np.all(damping > 0) and damping[-1] < damping[0]


def test_batched_seeds_run_their_own_damping(problem):
    thetas = problem.theta0[None, :] + 0.1 * jr.normal(jr.key(5), (3, problem.num_params))
    tr = fl.euler_steps(problem, fl.AdaptedFlow(), thetas, num_steps=40,
                        levenberg_marquardt=True, cost_target_relative=1e-10, diagnostics=False)
    for b in range(3):
        one = fl.euler_steps(problem, fl.AdaptedFlow(), thetas[b], num_steps=40,
                             levenberg_marquardt=True, cost_target_relative=1e-10,
                             diagnostics=False)
        np.testing.assert_allclose(tr.cost_final[b], one.cost_final, rtol=1e-6)
        assert int(tr.num_steps[b]) == int(one.num_steps)


def test_a_start_that_fits_exactly_ends_at_once():
    # r(θ0) = 0: λ0 falls back to initial_damping itself (rᵀΘr/rᵀr is 0/0), the trial step is
    # zero, and the run ends as 'no_descent' after one trial with θ unchanged
    model = fl.MLP(3, 1, [16], "tanh", key=jr.key(1))
    x = jr.normal(jr.key(0), (8, 3))
    p = fl.LeastSquaresProblem(model, fl.Dataset(x, jax.vmap(model)(x)))
    assert float(p.cost(p.theta0)) == 0.0
    tr = fl.euler_steps(p, fl.AdaptedFlow(), num_steps=50, levenberg_marquardt=True,
                        initial_damping=0.5, diagnostics=False)
    assert tr.stop_reason == "no_descent" and int(tr.num_steps) == 1
    assert float(tr.extras["damping"][0]) == 0.5
    np.testing.assert_array_equal(tr.theta_final, p.theta0)

def test_setting_and_flow_checks(problem):
    with pytest.raises(ValueError, match="choose one line search"):
        fl.IntegratorOptions(levenberg_marquardt=True, backtracking=True)
    with pytest.raises(ValueError, match="initial_damping"):
        fl.IntegratorOptions(initial_damping=0.0)
    with pytest.raises(ValueError, match="GradientFlow has no damped step"):
        fl.euler_steps(problem, fl.GradientFlow(), levenberg_marquardt=True)
    with pytest.raises(ValueError, match="QRSolver has no damped solve"):
        fl.euler_steps(problem, fl.AdaptedFlow(solver="qr"), levenberg_marquardt=True)


def test_underparametrised_damped_step_is_the_k_by_k_solve():
    """K < QN: the damped step −(DᵀD + λM)⁻¹Dᵀ∇_X C, M = diag(DᵀD) (Moré's scaling), equals
    numpy's K × K solve, and tends to the Gauss–Newton step −D⁺∇_X C as λ → 0."""
    narrow = fl.LeastSquaresProblem(fl.MLP(3, 1, [2], "tanh", key=jr.key(1)),
                                    fl.teacher(jr.key(0), 24, 3))
    assert narrow.num_params < narrow.num_outputs
    theta = narrow.theta0
    d = np.asarray(narrow.jacobian(theta))
    g = np.asarray(narrow.output_gradient(narrow.outputs(theta)))
    flow = fl.AdaptedFlow().resolve(narrow, stepping=True)
    for lam in (1e-1, 1e-4):
        v, _ = flow.damped_velocity(narrow, theta, lam)
        expected = -np.linalg.solve(d.T @ d + lam * np.diag(np.diag(d.T @ d)), d.T @ g)
        np.testing.assert_allclose(np.asarray(v), expected, rtol=1e-10, atol=1e-14)
    v, _ = flow.damped_velocity(narrow, theta, 1e-13)
    np.testing.assert_allclose(np.asarray(v), -np.linalg.pinv(d) @ g, rtol=1e-6)


def test_underparametrised_lm_steps_reach_scipy_least_squares():
    """K < QN Levenberg–Marquardt steps end where scipy's MINPACK lm does (same minimum), and
    the continuous counterpart (DampedFlow) runs under simulate and lowers C monotonically."""
    scipy = pytest.importorskip("scipy.optimize")
    narrow = fl.LeastSquaresProblem(fl.MLP(3, 1, [3], "tanh", key=jr.key(2)),
                                    fl.teacher(jr.key(3), 30, 3))
    tr = fl.euler_steps(narrow, fl.AdaptedFlow(), levenberg_marquardt=True, num_steps=200,
                        diagnostics=False)
    assert tr.stop_reason in ("no_descent", "t1_reached")
    ref = scipy.least_squares(lambda th: np.asarray(narrow.residual(jnp.asarray(th))),
                              np.asarray(narrow.theta0), method="lm", xtol=1e-15, ftol=1e-15,
                              gtol=1e-15,
                              jac=lambda th: np.asarray(narrow.jacobian(jnp.asarray(th))))
    assert float(tr.cost_final) == pytest.approx(float(narrow.cost(jnp.asarray(ref.x))),
                                                 rel=1e-8)
    ode = fl.simulate(narrow, fl.DampedFlow(damping=1e-6), t1=50.0, diagnostics=False)
    assert ode.stop_reason == "t1_reached"
    cost = np.asarray(ode.cost)[np.asarray(ode.valid)]
    assert np.all(np.diff(cost) <= 1e-14 * cost[0]) and cost[-1] < 0.5 * cost[0]


def test_config_runs_levenberg_marquardt_steps(tmp_path):
    # [integrator] levenberg_marquardt through `flowlab run`: every seed reaches its target
    config = tmp_path / "lm.toml"
    config.write_text("""
name = "lm"
[data]
generator = "teacher"
num_points = 8
in_size = 2
[model]
depth = 1
width = 16
[flows.adapted]
[integrator]
method = "euler"
num_steps = 60
levenberg_marquardt = true
cost_target_relative = 1e-12
[sweep]
seeds = 2
""")
    out = str(tmp_path / "run")
    assert main(["run", str(config), "--out", out, "--quiet", "--no-plot", "--jobs", "1"]) == 0
    rows = read_summary(out)
    assert len(rows) == 2
    for row in rows:
        assert row["stop_reason"] == "cost_target"
        assert row["C_final"] <= 1e-12 * row["C0"]


FLOAT32_FLOOR = """
import jax.random as jr, flowlab as fl
p = fl.LeastSquaresProblem(fl.MLP(3, 1, [16, 16], "tanh", key=jr.key(1)), fl.teacher(jr.key(0), 24, 3))
assert str(p.theta0.dtype) == "float32"
tr = fl.euler_steps(p, fl.AdaptedFlow(), num_steps=200, levenberg_marquardt=True,
                    cost_target_relative=1e-30, diagnostics=False)
print(tr.stop_reason, int(tr.num_accepted_steps), int(tr.num_rejected_steps),
      float(tr.cost_final / tr.cost0))
"""


def test_float32_run_ends_at_its_rounding_floor():
    # x64 off (a subprocess): below the floor no trial lowers C; λ grows until the step no longer
    # changes θ, and the run ends by name after a few rejections, not after max_backtracks = 30
    env = {**os.environ, "JAX_ENABLE_X64": "0"}
    done = subprocess.run([sys.executable, "-c", FLOAT32_FLOOR], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    stop, accepted, rejected, ratio = done.stdout.split()[-4:]
    assert stop == "no_descent"
    assert int(rejected) <= 10 and int(accepted) >= 5
    assert float(ratio) < 1e-12  # measured 3e-15: |r|/|r0| = 6e-8, float32's eps
