"""Pointwise identities of the vector fields (MATH.md §2), checked against independent linear
algebra (numpy SVD of the materialised Jacobian)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.linalg import gram_matrix


def problem(width=24, depth=2, n=8, d=3, q=2, activation="tanh", use_bias=True, seed=0, **kw):
    data = fl.random_labels(jr.key(seed), n, d, q)
    net = fl.MLP(d, q, [width] * depth, activation, use_bias=use_bias, key=jr.key(seed + 1), **kw)
    return fl.LeastSquaresProblem(net, data)


def row_space_projector(d):
    u, s, vt = np.linalg.svd(np.asarray(d), full_matrices=False)
    r = int(np.sum(s > s[0] * 1e-10))
    return vt[:r].T @ vt[:r]


def test_gradient_flow_is_minus_grad_and_minus_DT_grad_X():
    p = problem()
    theta = p.theta0
    v = fl.GradientFlow()(0.0, theta, p)
    np.testing.assert_allclose(v, -jax.grad(p.cost)(theta), rtol=1e-12)
    d = p.jacobian(theta)
    g = p.kappa * (p.outputs(theta) - p.targets)
    np.testing.assert_allclose(v, -d.T @ g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("solver", ["auto", "cholesky", "qr", "svd"])
def test_adapted_field_solves_D_v_eq_minus_grad_and_is_horizontal(solver):
    p = problem()
    assert p.num_params > p.num_outputs
    theta = p.theta0
    v = np.asarray(fl.AdaptedFlow(solver).velocity(p, theta))
    d = np.asarray(p.jacobian(theta))
    g = np.asarray(p.output_gradient(p.outputs(theta)))
    # D θ' = −∇_X C (full row rank)
    assert np.linalg.norm(d @ v + g) <= 1e-8 * np.linalg.norm(g)
    # no component in ker D: θ' lies in range Dᵀ
    horizontal = row_space_projector(d) @ v
    assert np.linalg.norm(v - horizontal) <= 1e-8 * np.linalg.norm(v)
    # and it is D⁺: the minimal-norm solution
    np.testing.assert_allclose(v, -np.linalg.pinv(d) @ g, rtol=1e-7, atol=1e-12)


def test_output_velocity_is_minus_kappa_residual_at_full_rank():
    p = problem(q=1)
    xdot = fl.AdaptedFlow().output_velocity(p, p.theta0)
    np.testing.assert_allclose(xdot, -p.kappa * p.residual(p.theta0), rtol=1e-8, atol=1e-13)
    xdot_std = fl.GradientFlow().output_velocity(p, p.theta0)
    theta_gram = gram_matrix(p, p.theta0)
    np.testing.assert_allclose(xdot_std, -theta_gram @ (p.kappa * p.residual(p.theta0)), rtol=1e-9)


@pytest.mark.parametrize("wide", [True, False])
def test_damped_flow_tends_to_adapted_flow_linearly(wide):
    p = problem() if wide else problem(width=3, depth=1, n=24, q=1)
    assert (p.num_params >= p.num_outputs) == wide
    theta = p.theta0
    exact = fl.AdaptedFlow("svd").velocity(p, theta)
    smallest = float(fl.singular_values(p, theta)[0]) ** 2
    errors = []
    for lam in smallest * np.array([1e-2, 1e-3, 1e-4]):
        v = fl.DampedFlow(damping=lam).velocity(p, theta)
        errors.append(float(jnp.linalg.norm(v - exact) / jnp.linalg.norm(exact)))
    assert errors[-1] < 1e-3
    # O(λ): each tenfold decrease of λ cuts the error about tenfold
    for a, b in zip(errors, errors[1:]):
        assert 5 < a / b < 20


def test_damped_flow_tied_to_lambda_min_has_uniform_mode_rate():
    """With λ = μ·λ_min(Θ), X' = −Θ(Θ + λI)⁻¹ g: along the slowest eigenvector of Θ the
    output velocity is exactly −g/(1 + μ)."""
    p = problem(q=1)
    theta = p.theta0
    mu = 0.5
    lam, u = np.linalg.eigh(np.asarray(gram_matrix(p, theta)))
    xdot = np.asarray(fl.DampedFlow(damping=0.0, damping_lambda_min=mu).output_velocity(p, theta))
    g = np.asarray(p.output_gradient(p.outputs(theta)))
    slow = u[:, 0]
    assert slow @ xdot == pytest.approx(-(slow @ g) / (1 + mu), rel=1e-6)


def test_jacobian_modes_and_operator_agree():
    p = problem()
    theta = p.theta0
    d_fwd, d_rev = p.jacobian(theta, "fwd"), p.jacobian(theta, "rev")
    np.testing.assert_allclose(d_fwd, d_rev, rtol=1e-12, atol=1e-14)
    v = jr.normal(jr.key(5), (p.num_params,))
    np.testing.assert_allclose(p.jacobian_operator(theta).mv(v), d_rev @ v, rtol=1e-10)
    np.testing.assert_allclose(gram_matrix(p, theta), d_rev @ d_rev.T, rtol=1e-12)
    sigma = fl.singular_values(p, theta)
    np.testing.assert_allclose(sigma, np.linalg.svd(np.asarray(d_rev), compute_uv=False)[::-1],
                               rtol=1e-6)


def test_outputs_are_j_major_and_K_counts_params():
    p = problem(width=5, depth=2, n=4, d=3, q=2)
    assert p.num_params == 5 * 4 + 5 * 6 + 2 * 6
    model = p.model(p.theta0)
    x = p.outputs(p.theta0).reshape(4, 2)
    np.testing.assert_allclose(x[2], model(p.inputs[2]))
    np.testing.assert_allclose(p.flatten(model), p.theta0)


@pytest.mark.parametrize("activation", sorted(fl.nets.ACTIVATIONS))
def test_ntk_and_standard_parametrisations_agree_at_init(activation):
    kw = dict(key=jr.key(3), weight_std=1.3, bias_std=0.2)
    x = jr.normal(jr.key(4), (3,))
    a = fl.MLP(3, 2, [7, 5], activation, parametrization="standard", **kw)(x)
    b = fl.MLP(3, 2, [7, 5], activation, parametrization="ntk", **kw)(x)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
