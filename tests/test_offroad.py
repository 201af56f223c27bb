"""Off the paved road: activations with kinks, float32, failures that are named and flagged."""

import json
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


@pytest.fixture(scope="module")
def relu_problem():
    data = fl.smooth_regression(jr.key(0), 8, 2)
    return fl.LeastSquaresProblem(fl.MLP(2, 1, (64,), "relu", key=jr.key(0)), data, kappa=1.0)


def test_relu_ode_slides_on_a_kink_and_stops_by_name(relu_problem):
    """The adapted field of a ReLU net has sliding kinks: at some z_ij = 0 the fields on both
    sides push into the surface (Filippov), where the classical flow does not exist and
    X' = −κ(X − Y) fails for the Filippov motion. A Runge–Kutta integration of θ' neither crawls
    to max_steps nor hides it: it stops by bound_violated within a few thousand steps, next to a
    kink where both one-sided velocities point into z = 0."""
    pb, flow = relu_problem, fl.AdaptedFlow()
    assert pb.piecewise_smooth
    tr = fl.simulate(pb, flow, t1=20.0, cost_target_relative=1e-8, rtol=1e-10, atol=1e-10,
                     ode_solver="tsit5")
    assert tr.stop_reason == "bound_violated" and int(tr.num_steps) < 5000
    theta = tr.theta_final
    model = pb.model(theta)
    z = model.hidden_preactivations(pb.inputs)
    pre = lambda t: pb.model(t).hidden_preactivations(pb.inputs)  # noqa: E731
    zdot = jax.jvp(pre, (theta,), (flow.velocity(pb, theta),))[1]
    # the kink reached first at the current velocity, and the velocity just across it
    ttk = np.asarray(jnp.abs(z) / jnp.abs(zdot))
    k = np.unravel_index(np.argmin(ttk), ttk.shape)
    grad = jax.grad(lambda t: pre(t)[k])(theta)
    across = theta - 2 * z[k] * grad / jnp.dot(grad, grad)
    zdot_across = jax.jvp(pre, (across,), (flow.velocity(pb, across),))[1][k]
    assert float(pre(across)[k]) * float(z[k]) < 0  # the other side
    assert float(zdot[k]) * float(z[k]) < 0 and float(zdot_across) * float(z[k]) > 0


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_relu_output_path_obeys_the_cost_law(activation):
    """The default for kinked activations follows X*(s) = Y + e^{−κs}(X(0) − Y) by Gauss–Newton
    onto it: through the sliding kinks above, |log C(s)/C(0) + 2κs| ≤ 1e-6 at every save, X at
    the saves on X*(s) to 1e-6 relative, and the run stops by the cost target at T_ε to 1e-6."""
    data = fl.smooth_regression(jr.key(0), 8, 2)
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (64,), activation, key=jr.key(0)), data, kappa=1.0)
    t_eps = np.log(1e8) / 2
    tr = fl.simulate(pb, fl.AdaptedFlow(), t1=1.05 * t_eps, cost_target_relative=1e-8,
                     num_saves=41, max_condition=None)
    assert tr.stop_reason == "cost_target"
    assert abs(float(tr.t_final) / t_eps - 1) < 1e-6
    ok = np.asarray(tr.valid)
    ts, cost = np.asarray(tr.ts)[ok], np.asarray(tr.cost)[ok]
    assert ok.sum() == 39  # the saves up to T_ε = 38.1 save intervals
    assert np.max(np.abs(np.log(cost / cost[0]) + 2 * ts)) < 1e-6
    x0, y = np.asarray(tr.outputs0), np.asarray(pb.targets)
    path = y + np.exp(-ts)[:, None] * (x0 - y)
    gap = np.linalg.norm(np.asarray(tr.outputs)[ok] - path, axis=1)
    assert np.max(gap / np.linalg.norm(path - y, axis=1)) < 1e-6


def test_relu_runs_in_a_study_end_named_with_the_kink(tmp_path, capsys):
    config = tmp_path / "relu.toml"
    config.write_text("""
[data]
generator = "smooth_regression"
num_points = 8
[model]
depth = 1
width = 16
activation = "relu"
[flows.adapted]
[integrator]
cost_target_relative = 1e-8
t1 = "auto"
max_steps = 3000
[sweep]
seeds = 2
""")
    out = tmp_path / "run"
    rc = main(["run", str(config), "--out", str(out), "--quiet", "--no-plot", "--jobs", "1"])
    for r in read_summary(str(out)):
        assert r["stop_reason"] == "cost_target", r["stop_reason"]
        assert r["steps"] < 3000 and r["dead_units"] >= 0
        assert r["nearest_kink"].startswith("point ")
        assert r["failure"] == "" and rc == 0  # a finding about the orbit, not a failure


def test_max_steps_is_flagged_and_exits_3(tmp_path, capsys):
    config = tmp_path / "short.toml"
    config.write_text("""
[data]
generator = "teacher"
num_points = 6
[model]
depth = 1
width = 8
[flows.standard]
[integrator]
t1 = 1000.0
max_steps = 20
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--no-plot"]) == 3
    err = capsys.readouterr().err
    assert "failed: max_steps after 20 steps" in err and "1 of 1 runs failed" in err
    (row,) = read_summary(str(out))
    assert row["stop_reason"] == "max_steps" and row["failure"].startswith("max_steps")
    assert row["reached_target"] is False


def test_non_finite_start_is_named_under_jit():
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (8,), key=jr.key(0)), fl.teacher(jr.key(1), 6, 2))
    bad = pb.theta0.at[0].set(jnp.nan)
    tr = jax.jit(lambda t: fl.solve(pb, fl.AdaptedFlow(), t, 5.0))(bad)
    assert tr.stop_reason == "non_finite_start"
    with pytest.raises(ValueError, match="theta0 contains NaN"):
        fl.simulate(pb, fl.AdaptedFlow(), bad, t1=5.0)


def test_float32_quickstart_reaches_its_target(tmp_path):
    """float32 (x64 off, in a subprocess): tolerances and guards follow eps, so every adapted
    run reaches C ≤ 1e-5·C(0) with its rate within 1 % of 2κ in under 1 000 steps (the float64
    defaults rtol = atol = 1e-8 used to stall at C/C0 ≈ 0.99)."""
    out = tmp_path / "q32"
    env = {**os.environ, "FLOWLAB_COMPILATION_CACHE": "off"}
    cmd = [sys.executable, "-m", "flowlab.cli", "run", "configs/quickstart.toml",
           "precision='float32'", "integrator.cost_target_relative=1e-5", "sweep.width=[16]",
           "sweep.seeds=2", "--out", str(out), "--quiet", "--no-plot"]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sessions"][0]["x64"] is False
    adapted = [r for r in read_summary(str(out)) if r["flow"] == "adapted"]
    assert adapted
    for r in adapted:
        assert r["stop_reason"] == "cost_target" and r["steps"] < 1000
        assert abs(r["measured_rate"] - 2 * r["kappa"]) < 0.01 * 2 * r["kappa"]


def test_output_path_needs_a_flow_with_one(relu_problem):
    """Only a flow that fixes X*(s) a priori can be followed by Gauss–Newton onto it."""
    with pytest.raises(ValueError, match="no a priori output path"):
        fl.simulate(relu_problem, fl.GradientFlow(), t1=1.0, ode_solver="output_path")
    small = fl.LeastSquaresProblem(fl.MLP(2, 1, (2,), "relu", key=jr.key(0)),
                                   fl.smooth_regression(jr.key(0), 16, 2))
    assert not small.overparametrised
    with pytest.raises(ValueError, match="no a priori output path"):
        fl.simulate(small, fl.AdaptedFlow(), t1=1.0, ode_solver="output_path")


def test_guard_singular_value_estimates():
    """The rank guard's σ_min, σ_max (Cholesky of Θ, 8 inverse / power iterations) agree with
    the eigendecomposition: to 10 % on a typical Θ and on one with a near-duplicate point
    (σ_min ≈ 1e-6·σ_max); with an exact duplicate point they trip the 1e7 guard (σ_min at
    round-off, or NaN from a failed factorisation)."""
    from flowlab.linalg import extreme_singular_values, singular_values

    x = jr.uniform(jr.key(0), (12, 3), minval=-1, maxval=1)
    for inputs in (x, x.at[1].set(x[0] + 1e-6)):
        pb = fl.LeastSquaresProblem(fl.MLP(3, 1, (32,), key=jr.key(1)),
                                    fl.Dataset(inputs, jnp.sin(inputs[:, :1])))
        low, high = extreme_singular_values(pb, pb.theta0)
        sigma = singular_values(pb, pb.theta0)
        assert float(low) == pytest.approx(float(sigma[0]), rel=0.1)
        assert float(high) == pytest.approx(float(sigma[-1]), rel=0.1)
    pb = fl.LeastSquaresProblem(fl.MLP(3, 1, (32,), key=jr.key(1)),
                                fl.Dataset(x.at[1].set(x[0]), jnp.sin(x[:, :1])))
    low, high = (float(v) for v in extreme_singular_values(pb, pb.theta0))
    assert not low * 1e7 >= high
