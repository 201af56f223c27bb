"""Linear interpolation in output space (MATH §5): dθ/dt = D⁺(Y − X(0)) on t in [0, 1]."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl


@pytest.fixture(scope="module")
def run():
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (12,), key=jr.PRNGKey(11)),
                                fl.smooth_regression(jr.PRNGKey(10), 8, 2))
    return pb, fl.interpolate(pb, num_saves=51, diagnostics=False)


def test_outputs_stay_on_the_segment_and_reach_y(run):
    _, tr = run
    assert tr.stop_reason == "t1_reached"
    dist, tau = fl.segment_distance(tr.outputs, tr.outputs0, tr.targets)
    assert float(np.max(dist)) <= 1e-8
    np.testing.assert_allclose(tau, tr.ts, atol=1e-8)  # X(t) = (1 − t)X(0) + tY
    assert float(tr.cost_final) <= 1e-12 * float(tr.cost0)
    assert float(tr.ts[-1]) == 1.0


def test_time_change_matches_the_adapted_flow(run):
    pb, tr = run
    # at s = s(t) the adapted flow is at X(0) + t(Y − X(0)) too: X(s) from theory
    t = np.asarray(tr.ts)[10:40]
    x_adapted = fl.theory.predicted_outputs(tr.outputs0, tr.targets, pb.kappa, fl.s_of_t(t, pb.kappa))
    np.testing.assert_allclose(np.asarray(tr.outputs)[10:40], x_adapted, atol=1e-8)


def test_velocity_moves_outputs_along_the_segment():
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (12,), key=jr.PRNGKey(11)),
                                fl.smooth_regression(jr.PRNGKey(10), 8, 2))
    x0 = pb.outputs(pb.theta0)
    flow = fl.InterpolationFlow(x0)
    th = pb.theta0 + 0.05 * jr.normal(jr.PRNGKey(1), pb.theta0.shape)
    # at full row rank D θ' = Y − X(0) wherever θ is, so dX/dt is constant
    xdot = eqx.filter_jit(lambda f, p, t: f.output_velocity(p, t))(flow, pb, th)
    np.testing.assert_allclose(xdot, pb.targets - x0, atol=1e-10)
    np.testing.assert_allclose(fl.s_of_t(1 - np.exp(-2.0), 0.5), 4.0, rtol=1e-14)


def test_bad_input():
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (4,), key=jr.PRNGKey(0)),
                                fl.smooth_regression(jr.PRNGKey(1), 4, 2))
    with pytest.raises(ValueError, match="theta0"):
        fl.interpolate(pb, jnp.zeros((2, pb.num_params)))
    with pytest.raises(ValueError, match="segment"):
        fl.segment_distance(jnp.zeros((1, 4)), jnp.ones(4), jnp.ones(4))
