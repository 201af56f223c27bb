r"""Physics-informed residual problems (MATH §8): a network u_θ fitted to a PDE by driving its
residual at collocation points to zero.

Each builder takes an equinox model mapping x in R^d to one number (a flowlab.MLP with
out_size 1, or any module returning shape () or (1,)) and the collocation sizes, and returns a
`PDEProblem`: a `ResidualProblem` whose residual stacks, with weights 1/√n per term,

    interior:  ρ(x_i) = (the PDE's operator applied to u_θ)(x_i) − f(x_i),   i = 1..n_Ω,
    boundary:  u_θ(b_j) − g(b_j),                                             j = 1..n_∂,

so C = (κ/2)|r|² with κ = 1 is ENGD's loss (1/2n_Ω)Σρ² + (1/2n_∂)Σ(u − g)² (Müller &
Zeinhofer 2023, arXiv 2302.13163). Derivatives in x are taken by `jax.hessian` / `jax.grad` of
the scalar network, and the residual is a `PointwiseResidual`, so each row of J costs one
reverse pass at one point. `relative_l2_error(θ)` is |u_θ − u*| / |u*| on a fine uniform grid
(a Riemann sum of the L2 norms), usable inside jit (e.g. as an `extras` entry of `simulate`).

Problems shipped (each with its exact solution u*):
- `poisson_1d`:  −u'' = π² sin(πx) on [0, 1], u(0) = u(1) = 0; u* = sin(πx).
- `poisson_2d`:  −Δu = 2π² sin(πx)sin(πy) on [0, 1]², u = 0 on the boundary;
  u* = sin(πx)sin(πy) (the ENGD benchmark).
- `burgers_1d`:  steady viscous Burgers −νu'' + u u' = 0 on [−1, 1], u(±1) = u*(±1);
  u* = −tanh(x/(2ν)) (nonlinear; a layer of width ~ν at x = 0).
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from .problem import PointwiseResidual, ResidualProblem, ResidualTerm


def scalar_field(model) -> Callable[[Float[Array, " d"]], Scalar]:
    """x -> u(x) as a scalar, for a model returning shape () or (1,)."""
    return lambda x: jnp.reshape(model(x), ())


def laplacian(u: Callable, x: Float[Array, " d"]) -> Scalar:
    """Δu(x) = trace of the Hessian of the scalar function u at x."""
    return jnp.trace(jax.hessian(u)(x))


class PDEProblem(ResidualProblem):
    """A ResidualProblem that also knows its PDE's exact solution u*, for the error of u_θ.

    `solution(θ)` is u_θ on the evaluation grid, `relative_l2_error(θ)` (θ or a model) is
    |u_θ − u*|₂ / |u*|₂ there."""

    exact: Callable = eqx.field(static=True)
    eval_points: Float[Array, "E d"]
    name: str = eqx.field(static=True)
    sizes: tuple = eqx.field(static=True)

    def __init__(self, model, residual: PointwiseResidual, exact: Callable, eval_points,
                 name: str, kappa: float | None = 1.0, check: bool = True):
        try:
            shape = jax.eval_shape(model, jnp.zeros(eval_points.shape[1:], eval_points.dtype)).shape
        except Exception as e:
            raise ValueError(f"{name}: the model cannot be applied to a point of R^"
                             f"{eval_points.shape[1]}: {e}") from e
        if math.prod(shape) != 1:
            raise ValueError(f"{name}: the model must map a point to one number (shape () or "
                             f"(1,)), got shape {shape}")
        super().__init__(model, residual, kappa=kappa, check=check)
        self.exact = exact
        self.eval_points = eval_points
        self.name = name
        self.sizes = tuple((t.name, t.points.shape[0]) for t in residual.terms)

    def _model(self, theta_or_model):
        if isinstance(theta_or_model, eqx.Module):
            return theta_or_model
        return self.model(jnp.asarray(theta_or_model))

    def solution(self, theta_or_model) -> Float[Array, " E"]:
        """u_θ on the evaluation grid."""
        return jax.vmap(scalar_field(self._model(theta_or_model)))(self.eval_points)

    def exact_solution(self) -> Float[Array, " E"]:
        """u* on the evaluation grid."""
        return jax.vmap(self.exact)(self.eval_points)

    def relative_l2_error(self, theta_or_model) -> Scalar:
        """|u_θ − u*|₂ / |u*|₂ on the evaluation grid."""
        exact = self.exact_solution()
        return jnp.linalg.norm(self.solution(theta_or_model) - exact) / jnp.linalg.norm(exact)


def _terms(interior_fn, interior, boundary_fn, boundary):
    return PointwiseResidual(
        ResidualTerm(interior_fn, interior, weight=1.0 / math.sqrt(interior.shape[0]),
                     name="interior"),
        ResidualTerm(boundary_fn, boundary, weight=1.0 / math.sqrt(boundary.shape[0]),
                     name="boundary"),
    )


def _check_sizes(**sizes):
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")


def _dtype():
    return jnp.zeros(()).dtype


def _poisson_1d_exact(x):
    return jnp.sin(jnp.pi * x[0])


def _poisson_1d_interior(model, x):
    u = scalar_field(model)
    return -laplacian(u, x) - jnp.pi**2 * jnp.sin(jnp.pi * x[0])


def _poisson_1d_boundary(model, x):
    return scalar_field(model)(x)  # g = 0


def poisson_1d(model, num_interior: int = 32, *, num_eval: int = 1001, kappa: float = 1.0,
               check: bool = True) -> PDEProblem:
    """−u'' = π² sin(πx) on [0, 1], u(0) = u(1) = 0, u* = sin(πx): `num_interior` equispaced
    interior points x_i = i/(n + 1) and the two end points; P = n + 2."""
    _check_sizes(num_interior=num_interior, num_eval=num_eval)
    dt = _dtype()
    interior = (jnp.arange(1, num_interior + 1, dtype=dt) / (num_interior + 1))[:, None]
    boundary = jnp.asarray([[0.0], [1.0]], dt)
    grid = jnp.linspace(0.0, 1.0, num_eval, dtype=dt)[:, None]
    return PDEProblem(model, _terms(_poisson_1d_interior, interior, _poisson_1d_boundary, boundary),
                      _poisson_1d_exact, grid, "poisson_1d", kappa, check)


def _poisson_2d_exact(x):
    return jnp.sin(jnp.pi * x[0]) * jnp.sin(jnp.pi * x[1])


def _poisson_2d_interior(model, x):
    u = scalar_field(model)
    return -laplacian(u, x) - 2 * jnp.pi**2 * _poisson_2d_exact(x)


def unit_square_boundary(per_side: int, dtype=None) -> Float[Array, "B 2"]:
    """4·per_side points on the boundary of [0, 1]², equispaced along it (each corner once)."""
    dt = _dtype() if dtype is None else dtype
    t = jnp.arange(per_side, dtype=dt) / per_side
    zero, one = jnp.zeros_like(t), jnp.ones_like(t)
    return jnp.concatenate([jnp.stack(p, axis=1) for p in
                            ((t, zero), (one, t), (1 - t, one), (zero, 1 - t))])


def poisson_2d(model, num_interior: int = 30, num_boundary: int = 30, *, num_eval: int = 101,
               kappa: float = 1.0, check: bool = True) -> PDEProblem:
    """−Δu = 2π² sin(πx)sin(πy) on [0, 1]², u = 0 on the boundary, u* = sin(πx)sin(πy).

    Interior: the num_interior² points (i, j)/(n + 1) of a tensor grid; boundary:
    4·num_boundary points equispaced along the edges; P = n_Ω² + 4·n_∂. The error is taken on
    the num_eval² grid of [0, 1]²."""
    _check_sizes(num_interior=num_interior, num_boundary=num_boundary, num_eval=num_eval)
    dt = _dtype()
    g = jnp.arange(1, num_interior + 1, dtype=dt) / (num_interior + 1)
    gx, gy = jnp.meshgrid(g, g, indexing="ij")
    interior = jnp.stack([gx.ravel(), gy.ravel()], axis=1)
    boundary = unit_square_boundary(num_boundary, dt)
    e = jnp.linspace(0.0, 1.0, num_eval, dtype=dt)
    ex, ey = jnp.meshgrid(e, e, indexing="ij")
    grid = jnp.stack([ex.ravel(), ey.ravel()], axis=1)
    return PDEProblem(model, _terms(_poisson_2d_interior, interior, _poisson_1d_boundary, boundary),
                      _poisson_2d_exact, grid, "poisson_2d", kappa, check)


class _BurgersExact(eqx.Module):
    nu: float = eqx.field(static=True)

    def __call__(self, x):
        return -jnp.tanh(x[0] / (2 * self.nu))


class _BurgersInterior(eqx.Module):
    nu: float = eqx.field(static=True)

    def __call__(self, model, x):
        u = scalar_field(model)
        du = jax.grad(u)(x)[0]
        return -self.nu * laplacian(u, x) + u(x) * du


class _BurgersBoundary(eqx.Module):
    nu: float = eqx.field(static=True)

    def __call__(self, model, x):
        return scalar_field(model)(x) - _BurgersExact(self.nu)(x)


def burgers_1d(model, num_interior: int = 200, *, nu: float = 0.1, num_eval: int = 1001,
               kappa: float = 1.0, check: bool = True) -> PDEProblem:
    """Steady viscous Burgers −νu'' + u u' = 0 on [−1, 1] with u(±1) = u*(±1),
    u* = −tanh(x/(2ν)) (nonlinear: the residual is quadratic in u). `num_interior` equispaced
    interior points and the two end points."""
    _check_sizes(num_interior=num_interior, num_eval=num_eval)
    if not (isinstance(nu, (int, float)) and nu > 0 and math.isfinite(nu)):
        raise ValueError(f"nu must be a positive number, got {nu!r}")
    dt = _dtype()
    interior = -1.0 + 2.0 * jnp.arange(1, num_interior + 1, dtype=dt) / (num_interior + 1)
    interior = interior[:, None]
    boundary = jnp.asarray([[-1.0], [1.0]], dt)
    grid = jnp.linspace(-1.0, 1.0, num_eval, dtype=dt)[:, None]
    nu = float(nu)
    return PDEProblem(model, _terms(_BurgersInterior(nu), interior, _BurgersBoundary(nu), boundary),
                      _BurgersExact(nu), grid, "burgers_1d", kappa, check)


#: name -> builder(model, **sizes): the PDE problems a config can name.
PDES = {"poisson_1d": poisson_1d, "poisson_2d": poisson_2d, "burgers_1d": burgers_1d}
#: name -> the dimension d of the PDE's domain (the model's input size).
DIMENSIONS = {"poisson_1d": 1, "poisson_2d": 2, "burgers_1d": 1}


def collocation_points(problem: PDEProblem) -> Float[Array, "P d"]:
    """Every collocation point of the problem (interior, then boundary), one per residual."""
    return jnp.concatenate([t.points for t in problem.residual_function.terms])


def relative_l2_errors(problem: PDEProblem, thetas: Float[Array, "S K"]) -> np.ndarray:
    """The relative L2 error of each θ in a stack (e.g. Trajectory.theta), as numpy."""
    return np.asarray(_errors(problem, jnp.asarray(thetas)))


@eqx.filter_jit
def _errors(problem, thetas):
    return jax.vmap(problem.relative_l2_error)(thetas)
