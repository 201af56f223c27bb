"""The adapted flow in the loss's own output metric (HessianMetricFlow, MATH §12):
X' = −H⁺∇_X C, so ∇_X C(s) = e^{−s}∇_X C(0) at full row rank; its Euler step at h = 1 is the
generalised Gauss–Newton step. References: numpy (Jacobians by jax, the linear algebra and
the softmax Hessian written out independently), closed forms."""

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.problem import AbstractLoss

N, Q = 6, 3


def ce_problem(n=N, q=Q, width=16, seed=0, dtype=jnp.float64):
    x = jr.normal(jr.key(seed), (n, 2), dtype)
    y = jax.nn.softmax(1.5 * jr.normal(jr.key(seed + 1), (n, q), dtype), axis=-1)
    net = fl.MLP(2, q, (width,), "tanh", key=jr.key(seed + 2))
    if dtype != jnp.float64:
        net = jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a,
                                     net)
    return fl.LeastSquaresProblem(net, fl.Dataset(x, y), loss=fl.SoftmaxCrossEntropy())


class LogCosh(AbstractLoss):
    """C = (1/N) Σ log cosh(x − y): strictly convex, not quadratic, no closed form given to the
    flow: its Newton direction comes from AbstractLoss's Hessian–vector products."""

    kappa: float = eqx.field(static=True, default=1.0)

    def __call__(self, outputs, targets):
        r = outputs - targets
        return self.kappa * jnp.sum(jnp.logaddexp(r, -r) - jnp.log(2.0))

    def gradient(self, outputs, targets):
        return self.kappa * jnp.tanh(outputs - targets)

    def minimum(self, targets):
        return jnp.zeros((), targets.dtype)

    def minimiser(self, outputs0, targets):
        return targets

    def conserved(self, outputs):
        return outputs[..., :0]

    def bind(self, targets, num_points, out_size):
        return LogCosh(1.0 / num_points)

    def hessian_block_size(self):
        return 1


def logcosh_problem():
    x = jr.normal(jr.key(5), (8, 2))
    y = jnp.sin(2 * x[:, :1]) + 0.5 * x[:, 1:]
    net = fl.MLP(2, 1, (24,), "tanh", key=jr.key(6))
    return fl.LeastSquaresProblem(net, fl.Dataset(x, y), loss=LogCosh())


def numpy_softmax_hessian(x, y):
    """H = blockdiag((diag p_j − p_j p_jᵀ)/N), written out in numpy."""
    x = np.asarray(x).reshape(-1, Q)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = x.shape[0]
    h = np.zeros((n * Q, n * Q))
    for j in range(n):
        h[j * Q:(j + 1) * Q, j * Q:(j + 1) * Q] = (np.diag(p[j]) - np.outer(p[j], p[j])) / n
    return h, (p - np.asarray(y).reshape(-1, Q)).ravel() / n


def test_metric_gradient_closed_form_equals_generic_and_numpy():
    pb = ce_problem()
    x = jr.normal(jr.key(9), (N * Q,)) * 2
    closed = pb.loss.metric_gradient(x, pb.targets)
    generic = AbstractLoss.metric_gradient(pb.loss, x, pb.targets)  # blocks by HVPs, eigh
    h, g = numpy_softmax_hessian(x, pb.targets)
    ref = np.linalg.pinv(h, rcond=1e-12) @ g
    np.testing.assert_allclose(closed, ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(generic, ref, rtol=1e-9, atol=1e-11)
    # on the fibre's complement: each example's direction sums to zero
    np.testing.assert_allclose(np.asarray(closed).reshape(N, Q).sum(1), 0.0, atol=1e-12)
    blocks = pb.loss.hessian_blocks(x, pb.targets)
    for j in range(N):
        np.testing.assert_allclose(blocks[j], h[j * Q:(j + 1) * Q, j * Q:(j + 1) * Q], atol=1e-15)


def test_law_fibre_sums_and_end_point_along_the_ode():
    """∇_X C(s) = e^{−s}∇_X C(0) to 1e-6 in log; Σ_i x_ji conserved; X(25) = CM24's x*."""
    pb = ce_problem()
    flow = fl.HessianMetricFlow()
    assert pb.overparametrised
    ts = np.linspace(0.0, 8.0, 17)
    tr = fl.simulate(pb, flow, ts=ts, t1=8.0, ode_solver="tsit5", rtol=1e-12, atol=1e-12)
    assert tr.stop_reason == "t1_reached"
    g = np.asarray(jax.vmap(pb.output_gradient)(tr.outputs))
    np.testing.assert_allclose(g, np.exp(-ts)[:, None] * g[0], rtol=1e-6, atol=1e-14)
    log_norm = np.log(np.linalg.norm(g, axis=1))
    assert np.max(np.abs(log_norm - log_norm[0] + ts)) < 1e-6
    sums = pb.loss.output_sums(tr.outputs)
    np.testing.assert_allclose(sums, np.broadcast_to(sums[0], sums.shape), atol=1e-8)
    # the flow's own predictions: the closed-form path and the cost along it
    path = flow.output_path(pb)
    np.testing.assert_allclose(tr.outputs, jax.vmap(lambda s: path(tr.outputs0, s))(ts),
                               atol=1e-8)
    np.testing.assert_allclose(tr.cost, flow.predicted_cost(pb, pb.theta0, ts), rtol=1e-9)
    end = fl.simulate(pb, flow, t1=25.0, ode_solver="tsit5", rtol=1e-12, atol=1e-12)
    x_star = pb.loss.minimiser(end.outputs0, pb.targets)
    np.testing.assert_allclose(end.outputs[-1], x_star, atol=1e-8)
    np.testing.assert_allclose(end.cost[-1], pb.loss.minimum(pb.targets), rtol=1e-12)


def test_a_priori_gradient_stopping_time():
    pb = ce_problem(seed=3)
    flow = fl.HessianMetricFlow()
    eps = 1e-4
    t_eps = flow.gradient_stopping_time(pb, pb.theta0, eps)
    g0 = float(jnp.linalg.norm(pb.output_gradient(pb.outputs(pb.theta0))))
    assert t_eps == pytest.approx(np.log(g0 / eps), rel=1e-14)
    tr = fl.simulate(pb, flow, ts=[0.0, t_eps], t1=t_eps, ode_solver="tsit5", rtol=1e-11,
                     atol=1e-12)
    g_end = float(jnp.linalg.norm(pb.output_gradient(tr.outputs[-1])))
    assert g_end == pytest.approx(eps, rel=1e-6)
    assert flow.gradient_stopping_time(pb, pb.theta0, 10 * g0) == 0.0
    with pytest.raises(ValueError, match="epsilon"):
        flow.gradient_stopping_time(pb, pb.theta0, 0.0)


def test_output_path_integrator_follows_the_closed_form():
    pb = ce_problem(seed=4)
    flow = fl.HessianMetricFlow()
    ts = np.linspace(0.0, 6.0, 7)
    tr = fl.simulate(pb, flow, ts=ts, t1=6.0, ode_solver="output_path")
    assert tr.stop_reason == "t1_reached"
    path = flow.output_path(pb)
    np.testing.assert_allclose(tr.outputs, jax.vmap(lambda s: path(tr.outputs0, s))(ts),
                               atol=1e-8)


def test_euler_step_is_the_generalised_gauss_newton_step():
    """θ1 − θ0 at h = 1 (no line search) against numpy: the minimum-norm solution of
    Dᵀ(H + EEᵀ)D δ = −Dᵀg (E spanning each example's fibre direction 1/√Q), which is the GGN
    step DᵀHDδ = −Dᵀg that keeps the output sums to first order."""
    pb = ce_problem(seed=1)
    tr = fl.euler_steps(pb, fl.HessianMetricFlow(), num_steps=1, grid_search=None,
                        save_theta=True)
    step = np.asarray(tr.theta[1] - tr.theta[0])
    d = np.asarray(pb.jacobian(pb.theta0))
    x0 = np.asarray(pb.outputs(pb.theta0))
    h, g = numpy_softmax_hessian(x0, pb.targets)
    e = np.kron(np.eye(N), np.ones((Q, 1)) / np.sqrt(Q))
    ref = np.linalg.pinv(d.T @ (h + e @ e.T) @ d, rcond=1e-12) @ (-d.T @ g)
    np.testing.assert_allclose(step, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(d.T @ h @ d @ step, -d.T @ g, atol=1e-10 * np.abs(d.T @ g).max())


def test_steps_default_to_newton_steps_with_a_search_and_converge_fast():
    pb = ce_problem(seed=2)
    c0, c_min = float(pb.cost(pb.theta0)), float(pb.loss.minimum(pb.targets))
    tr = fl.euler_steps(pb, fl.HessianMetricFlow(), num_steps=40, cost_target_relative=1e-10)
    assert tr.stop_reason == "cost_target"
    assert (float(tr.cost_final) - c_min) <= 1e-10 * (c0 - c_min)
    assert int(tr.num_accepted_steps) <= 15  # Newton: quadratic near the minimiser
    # cost_target_relative is relative to the excess over C_min: the adapted steps stop there too
    tr = fl.euler_steps(pb, fl.AdaptedFlow(), num_steps=200, backtracking=True,
                        cost_target_relative=1e-3)
    assert tr.stop_reason == "cost_target"
    assert float(tr.cost_final) - c_min <= 1e-3 * (c0 - c_min)


def test_damped_steps_recover_the_newton_direction_and_converge():
    """λ → 0 gives −D⁺H⁺∇_X C; Levenberg–Marquardt steps of the flow reach the target."""
    pb = ce_problem(seed=8)
    flow = fl.HessianMetricFlow().resolve(pb, stepping=True)
    v = flow.velocity(pb, pb.theta0)
    v_damped, _ = flow.damped_velocity(pb, pb.theta0, 1e-12)
    np.testing.assert_allclose(v_damped, v, rtol=1e-6, atol=1e-9 * float(jnp.abs(v).max()))
    c0, c_min = float(pb.cost(pb.theta0)), float(pb.loss.minimum(pb.targets))
    tr = fl.euler_steps(pb, fl.HessianMetricFlow(), num_steps=60, levenberg_marquardt=True,
                        cost_target_relative=1e-10)
    assert tr.stop_reason == "cost_target"
    assert float(tr.cost_final) - c_min <= 1e-10 * (c0 - c_min)


def test_squared_loss_gives_the_adapted_flow_in_time_kappa_s():
    for k in (64, 1):  # K = 257 >= QN = 10 and K = 5 < QN
        x = jr.normal(jr.key(0), (10, 2))
        net = fl.MLP(2, 1, (k,), "tanh", key=jr.key(1))
        pb = fl.LeastSquaresProblem(net, fl.Dataset(x, jnp.sin(x[:, :1])))
        v = fl.HessianMetricFlow().resolve(pb).velocity(pb, pb.theta0)
        va = fl.AdaptedFlow().resolve(pb).velocity(pb, pb.theta0)
        np.testing.assert_allclose(v, va / pb.kappa, rtol=1e-8, atol=1e-10)
    assert not pb.overparametrised and np.isnan(fl.HessianMetricFlow().rate_bound(pb))


def test_underparametrised_is_gauss_newton_in_the_pullback_metric():
    pb = ce_problem(n=40, width=2, seed=6)
    assert not pb.overparametrised
    v = np.asarray(fl.HessianMetricFlow().resolve(pb).velocity(pb, pb.theta0))
    d = np.asarray(pb.jacobian(pb.theta0))
    h, g = numpy_softmax_hessian(pb.outputs(pb.theta0), pb.targets)
    ref = -np.linalg.pinv(d.T @ h @ d, rcond=1e-12) @ (d.T @ g)
    np.testing.assert_allclose(v, ref, rtol=1e-7, atol=1e-10 * np.abs(ref).max())


def test_any_convex_loss_through_hessian_vector_products():
    """log cosh: H⁺∇C = sinh(2r)/2 in closed form; the law holds along the ODE."""
    pb = logcosh_problem()
    x = pb.outputs(pb.theta0)
    r = np.asarray(x - pb.targets)
    np.testing.assert_allclose(pb.loss.metric_gradient(x, pb.targets), np.sinh(2 * r) / 2,
                               rtol=1e-12)
    flow = fl.HessianMetricFlow()
    assert flow.output_path(pb) is None  # no closed form given: the ODE solver is tsit5
    ts = np.linspace(0.0, 5.0, 11)
    tr = fl.simulate(pb, flow, ts=ts, t1=5.0, rtol=1e-11, atol=1e-12)
    assert tr.stop_reason == "t1_reached"
    g = np.asarray(jax.vmap(pb.output_gradient)(tr.outputs))
    np.testing.assert_allclose(g, np.exp(-ts)[:, None] * g[0], rtol=1e-6, atol=1e-14)


FLOAT32_FLOOR = """
import jax, jax.numpy as jnp, jax.random as jr
import flowlab as fl
x = jr.normal(jr.key(7), (6, 2))
y = jax.nn.softmax(1.5 * jr.normal(jr.key(8), (6, 3)), axis=-1)
p = fl.LeastSquaresProblem(fl.MLP(2, 3, (16,), "tanh", key=jr.key(9)), fl.Dataset(x, y),
                           loss=fl.SoftmaxCrossEntropy())
assert str(p.theta0.dtype) == "float32"
flow = fl.HessianMetricFlow()
tr = fl.euler_steps(p, flow, num_steps=40, diagnostics=False)
g = jax.vmap(p.output_gradient)(tr.outputs)
n = int(tr.num_accepted_steps)
print(tr.stop_reason, float(jnp.linalg.norm(g[n])), flow.gradient_floor(p),
      float(jnp.linalg.norm(g[0])))
"""


def test_float32_reaches_its_named_floor():
    """float32 (x64 off, a subprocess): the steps bring |∇_X C| down to the floor
    `gradient_floor` names (100·eps·κ·√QN) and end there by name."""
    env = {**os.environ, "JAX_ENABLE_X64": "0"}
    done = subprocess.run([sys.executable, "-c", FLOAT32_FLOOR], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    stop, g_end, floor, g0 = done.stdout.split()[-4:]
    assert stop in ("no_descent", "t1_reached")
    assert float(g_end) <= float(floor) < 1e-3 * float(g0)


def test_config_runs_the_flow(tmp_path):
    from flowlab.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text("""
name = "hm"
[data]
generator = "gaussian_clusters"
num_points = 6
in_size = 2
out_size = 3
params = { label_smoothing = 0.2 }
[model]
width = 12
depth = 1
[loss]
kind = "softmax_cross_entropy"
[flows.hessian_metric]
[integrator]
method = "euler"
cost_target_relative = 1e-8
num_steps = 30
""")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-plot", "--quiet"]) == 0
    rows = fl.study.read_summary(str(tmp_path / "run"))
    assert rows and all(r["stop_reason"] == "cost_target" for r in rows)
