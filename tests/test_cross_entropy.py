"""Softmax cross-entropy with labels in the open simplex (MATH §5)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl

N, Q = 3, 3


def make_problem():
    x = jr.normal(jr.PRNGKey(0), (N, 2))
    y = jax.nn.softmax(0.7 * jr.normal(jr.PRNGKey(1), (N, Q)), axis=-1)
    net = fl.MLP(2, Q, (8,), key=jr.PRNGKey(2))
    return fl.LeastSquaresProblem(net, fl.Dataset(x, y), loss=fl.SoftmaxCrossEntropy())


def test_cost_gradient_and_minimiser():
    pb = make_problem()
    loss, y = pb.loss, pb.targets
    assert loss.num_classes == Q and pb.kappa == 1 / N
    assert fl.LOSSES["softmax_cross_entropy"] is fl.SoftmaxCrossEntropy
    x = jr.normal(jr.PRNGKey(3), (N * Q,))
    ref = -np.sum(np.asarray(y).reshape(N, Q) * np.log(
        np.asarray(jax.nn.softmax(x.reshape(N, Q), axis=-1)))) / N
    np.testing.assert_allclose(loss(x, y), ref, rtol=1e-13)
    np.testing.assert_allclose(loss.gradient(x, y), jax.grad(loss)(x, y), atol=1e-15)
    # the gradient sums to zero per input: X' = −∇C keeps each c_j = Σ_i x_ji
    np.testing.assert_allclose(loss.gradient(x, y).reshape(N, Q).sum(1), 0.0, atol=1e-15)
    xs = loss.minimiser(x, y)
    np.testing.assert_allclose(loss.output_sums(xs), loss.output_sums(x), atol=1e-13)
    np.testing.assert_allclose(loss.gradient(xs, y), 0.0, atol=1e-15)
    np.testing.assert_allclose(loss(xs, y), loss.minimum(y), rtol=1e-13)
    assert float(loss(x, y)) > float(loss.minimum(y))


def test_adapted_velocity_conserves_output_sums():
    pb = make_problem()
    xdot = eqx.filter_jit(lambda p, t: fl.AdaptedFlow().output_velocity(p, t))(pb, pb.theta0)
    np.testing.assert_allclose(xdot, -pb.output_gradient(pb.outputs(pb.theta0)), atol=1e-12)
    np.testing.assert_allclose(xdot.reshape(N, Q).sum(1), 0.0, atol=1e-12)


def test_adapted_flow_reaches_the_fibre_minimiser():
    pb = make_problem()
    # linearised rate ≥ κ·min eig(diag p − ppᵀ on Σ = 0) ≈ 0.03 here: t1 = 1000 leaves e^{-30}
    tr = fl.simulate(pb, fl.AdaptedFlow(), t1=1000.0, rtol=1e-11, atol=1e-11, num_saves=51)
    assert tr.stop_reason == "t1_reached"
    loss = pb.loss
    sums = loss.output_sums(tr.outputs)
    np.testing.assert_allclose(sums, np.broadcast_to(loss.output_sums(tr.outputs0), sums.shape),
                               atol=1e-9)
    xs = loss.minimiser(tr.outputs0, pb.targets)
    np.testing.assert_allclose(pb.outputs(tr.theta_final), xs, atol=1e-8)
    np.testing.assert_allclose(tr.cost_final, loss.minimum(pb.targets), rtol=1e-12)


@pytest.mark.parametrize("labels, match", [
    ([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], "open simplex"),
    ([[0.5, 0.6, 0.1], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], "summing to 1"),
])
def test_labels_off_the_open_simplex_are_refused(labels, match):
    x = jnp.zeros((3, 2))
    net = fl.MLP(2, 3, (4,), key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match=match):
        fl.LeastSquaresProblem(net, fl.Dataset(x, jnp.array(labels)), loss=fl.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="num_classes"):
        fl.LeastSquaresProblem(net, fl.Dataset(x, jnp.full((3, 3), 1 / 3)),
                               loss=fl.SoftmaxCrossEntropy(num_classes=4))
    with pytest.raises(ValueError, match="not bound"):
        fl.SoftmaxCrossEntropy()(jnp.zeros(9), jnp.full(9, 1 / 3))
    np.testing.assert_allclose(fl.smooth_labels(jnp.eye(3), 0.3).sum(1), 1.0)


class _CoshLoss(fl.AbstractLoss):
    """C = Σ cosh(X − Y) with a stated κ: the loss interface is abstract, every part declared."""

    kappa: float = 0.25

    def __call__(self, outputs, targets):
        return jnp.sum(jnp.cosh(outputs - targets))

    def gradient(self, outputs, targets):
        return jnp.sinh(outputs - targets)

    def minimum(self, targets):
        return jnp.asarray(float(targets.size), targets.dtype)

    def minimiser(self, outputs0, targets):
        return targets

    def conserved(self, outputs):
        return outputs[..., :0]

    def bind(self, targets, num_points, out_size):
        return self


class _NoKappa(fl.AbstractLoss):
    """Every method of a loss, but no kappa."""

    __call__ = _CoshLoss.__call__
    gradient = _CoshLoss.gradient
    minimum = _CoshLoss.minimum
    minimiser = _CoshLoss.minimiser
    conserved = _CoshLoss.conserved
    bind = _CoshLoss.bind


def test_a_loss_states_its_kappa_and_the_problem_takes_it():
    x = jnp.zeros((4, 2))
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (4,), key=jr.PRNGKey(0)),
                                fl.Dataset(x, jnp.ones((4, 1))), loss=_CoshLoss())
    assert pb.kappa == 0.25
    np.testing.assert_allclose(pb.output_gradient(jnp.zeros(4)), np.sinh(-np.ones(4)), rtol=1e-14)
    with pytest.raises(TypeError, match="kappa"):
        _NoKappa()
