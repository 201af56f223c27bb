"""Any equinox model: the blocked Gram Θ = D Dᵀ (rows of D a block at a time, never all of D)
equals D Dᵀ from jacrev to 1e-12 on non-MLP models and on residual problems, and the adapted
flow keeps its law on a CNN (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab.linalg import BlockedGram, LayerwiseGram, auto_gram


def images(n=6, q=3):
    x = jr.normal(jr.key(1), (n, 64))  # flat 8×8 images
    return fl.Dataset(x, jr.normal(jr.key(2), (n, q)))


@pytest.fixture(scope="module")
def cnn():
    return fl.LeastSquaresProblem(fl.ConvNet(8, 8, 3, channels=(2, 3), key=jr.key(0)), images())


@pytest.fixture(scope="module")
def resnet():
    return fl.LeastSquaresProblem(fl.ResidualMLP(64, 3, width=8, depth=2, key=jr.key(0)),
                                  images())


@eqx.filter_jit
def _against_jacrev(gram, problem, theta, w):
    g, transpose = gram(problem, theta)
    d = jax.jacrev(problem.outputs)(theta)
    return g, transpose(w), d @ d.T, d.T @ w


def _check(gram, problem):
    theta = problem.theta0 + 0.1 * jr.normal(jr.key(4), problem.theta0.shape)
    w = jr.normal(jr.key(5), (problem.num_outputs,))
    g, dtw, g_ref, dtw_ref = _against_jacrev(gram, problem, theta, w)
    assert g.shape == (problem.num_outputs,) * 2
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(g_ref))))
    np.testing.assert_allclose(dtw, dtw_ref, rtol=0,
                               atol=1e-12 * float(jnp.linalg.norm(dtw_ref)))


@pytest.mark.parametrize("block_size", [  # 4: two blocks, the last one padded
    4, pytest.param(None, marks=pytest.mark.slow)])  # None: one block, D Dᵀ directly
def test_blocked_gram_equals_jacrev_cnn(cnn, block_size):
    _check(BlockedGram(block_size), cnn)


def test_blocked_gram_equals_jacrev_resnet(resnet):
    _check(BlockedGram(5), resnet)


def test_blocked_gram_on_residual_problems():
    # a pointwise residual (two groups of rows: interior and boundary points) ...
    p = fl.pde.poisson_1d(fl.MLP(1, 1, [8], "tanh", key=jr.key(0)), num_interior=5)
    assert p.row_groups() == ((5, 1), (2, 1))
    _check(BlockedGram(2), p)
    # ... and a residual with no structure (rows by unit-vector vjps)
    x = jnp.linspace(-1, 1, 5)[:, None]
    net = fl.MLP(1, 1, [6], "tanh", key=jr.key(1))
    q = fl.ResidualProblem(net, lambda m: jnp.cumsum(jax.vmap(m)(x)[:, 0]) - x[:, 0])
    _check(BlockedGram(3), q)


def test_auto_gram_choice(cnn):
    mlp = fl.LeastSquaresProblem(fl.MLP(64, 3, [5], key=jr.key(0)), images())
    assert isinstance(auto_gram(mlp), LayerwiseGram)
    assert isinstance(auto_gram(cnn), BlockedGram)
    # an MLP inside a residual problem: its rows are not the network's outputs
    pde = fl.pde.poisson_1d(fl.MLP(1, 1, [8], key=jr.key(0)), num_interior=3)
    assert isinstance(auto_gram(pde), BlockedGram)
    with pytest.raises(ValueError, match="BlockedGram"):
        LayerwiseGram()(pde, pde.theta0)
    with pytest.raises(ValueError, match="block_size"):
        BlockedGram(0)


def test_adapted_flow_on_a_cnn(cnn):
    """Any equinox model: K = 656 ≥ QN = 18, C(s) = e^{−2κs}C(0) through the blocked Gram."""
    tr = fl.euler_steps(cnn, fl.AdaptedFlow(), step_size=0.1 / cnn.kappa, num_steps=3,
                        diagnostics=False)
    c = np.asarray(tr.cost)
    np.testing.assert_allclose(c[1:] / c[:-1], 0.9**2, rtol=2e-2)  # (1 − hκ)² per step
    tr = fl.euler_steps(cnn, fl.AdaptedFlow(), num_steps=20, cost_target_relative=1e-20,
                        backtracking=True, diagnostics=False)
    assert tr.stop_reason == "cost_target"
