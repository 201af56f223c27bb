"""flowlab.pde: the shipped physics-informed problems. Their residuals vanish at the exact
solutions, the relative L2 error measures u_θ against u*, and a discrete adapted (Gauss–Newton)
fit with a line search reaches a small error (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab import pde


class Scaled(eqx.Module):
    """u(x) = a·u*(x): the exact solution at a = 1."""

    a: jax.Array
    exact: object = eqx.field(static=True)

    def __call__(self, x):
        return self.a * self.exact(x)


@pytest.mark.parametrize("build,dim,kwargs", [
    (pde.poisson_1d, 1, dict(num_interior=7)),
    (pde.poisson_2d, 2, dict(num_interior=4, num_boundary=3, num_eval=21)),
    (pde.burgers_1d, 1, dict(num_interior=9, nu=0.2)),
])
def test_exact_solution_has_zero_residual(build, dim, kwargs):
    net = fl.MLP(dim, 1, [4], "tanh", key=jr.key(0))
    p = build(net, **kwargs)
    exact = p.exact
    q = build(Scaled(jnp.asarray(1.0), exact), check=False, **kwargs)
    assert q.num_outputs == p.num_outputs
    np.testing.assert_allclose(q.residual(q.theta0), 0.0, atol=1e-9)
    assert float(q.relative_l2_error(q.theta0)) == 0.0
    np.testing.assert_allclose(float(q.relative_l2_error(jnp.asarray([1.1]))), 0.1, rtol=1e-12)
    # the same error from a model
    np.testing.assert_allclose(float(q.relative_l2_error(Scaled(jnp.asarray(0.5), exact))), 0.5,
                               rtol=1e-12)


def test_sizes_and_checks():
    p = pde.poisson_2d(fl.MLP(2, 1, [4], key=jr.key(0)), num_interior=3, num_boundary=2)
    assert p.sizes == (("interior", 9), ("boundary", 8)) and p.num_outputs == 17
    b = np.asarray(pde.unit_square_boundary(2))
    assert np.all(np.min(np.stack([b, 1 - b]), axis=0).min(axis=1) == 0)  # on the boundary
    with pytest.raises(ValueError, match="one number"):
        pde.poisson_1d(fl.MLP(1, 2, [4], key=jr.key(0)))
    with pytest.raises(ValueError, match="num_interior"):
        pde.poisson_1d(fl.MLP(1, 1, [4], key=jr.key(0)), num_interior=0)
    with pytest.raises(ValueError, match="nu"):
        pde.burgers_1d(fl.MLP(1, 1, [4], key=jr.key(0)), nu=-1.0)


def test_gauss_newton_fit_of_poisson_1d():
    """Truncated-SVD Gauss–Newton steps (h = 1/κ) with ENGD's grid line search: error ≤ 1e-6
    in a few dozen steps, ending at the float floor with 'no_descent' or the target."""
    p = pde.poisson_1d(fl.MLP(1, 1, [16], "tanh", key=jr.key(0)), num_interior=24)
    assert (p.num_params, p.num_outputs) == (49, 26)
    tr = fl.euler_steps(p, fl.AdaptedFlow(fl.SVDSolver(rcond=1e-10)), num_steps=60,
                        grid_search=20, save_theta=True, diagnostics=False, cost_target=1e-24)
    n = int(tr.num_accepted_steps)
    err = pde.relative_l2_errors(p, tr.theta[: n + 1])
    assert err[-1] <= 1e-6, err[-1]
    assert tr.stop_reason in ("no_descent", "cost_target")
    c = np.asarray(tr.cost)[: n + 1]
    assert np.all(np.diff(c) < 0)  # the line search keeps the cost monotone
