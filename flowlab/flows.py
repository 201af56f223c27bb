r"""Vector fields θ' = F(θ) on parameter space, one class per geometry.

Each flow is an `eqx.Module` callable as a diffrax vector field ``(t, θ, problem) -> θ'``
(pass the LeastSquaresProblem as ``args``). With g = ∇_X C = κ(X − Y):

| flow | θ' | X' = D θ' |
|---|---|---|
| GradientFlow | −Dᵀ g | −Θ g |
| AdaptedFlow | −D⁺ g | −P g (−g at full row rank) |
| DampedFlow | −Dᵀ(Θ + λI)⁻¹ g | −Θ(Θ + λI)⁻¹ g |
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .linalg import AbstractGram, AbstractPinvSolver, AutoGram, resolve_solver


class AbstractFlow(eqx.Module):
    """A vector field on θ-space defined by a problem."""

    @abc.abstractmethod
    def velocity(self, problem, theta: Float[Array, " K"]) -> Float[Array, " K"]:
        """θ' at θ."""

    def check(self, problem) -> None:
        """Raise a ValueError when the flow cannot apply to the problem."""

    #: whether the field inverts D (and so fails where rank D drops).
    inverts_jacobian: ClassVar[bool] = False

    def default_max_condition(self, problem) -> float | None:
        """The σ_max/σ_min(D) guard simulate applies by default (None: no guard)."""
        return 1e7 if self.inverts_jacobian else None

    def __call__(self, t, theta, problem):
        return self.velocity(problem, theta)

    def output_velocity(self, problem, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        """X' = D θ', by one Jacobian–vector product."""
        return jax.jvp(problem.outputs, (theta,), (self.velocity(problem, theta),))[1]


class GradientFlow(AbstractFlow):
    """Standard training: θ' = −∇_θ C = −Dᵀ ∇_X C, by reverse mode (no Jacobian formed).

    In output space X' = −Θ ∇_X C: the cost decays at rates set by the spectrum of κΘ."""

    def velocity(self, problem, theta):
        return -jax.grad(problem.cost)(theta)


class AdaptedFlow(AbstractFlow):
    r"""The geometrically adapted flow θ' = −D⁺ ∇_X C [Chen, arXiv 2311.15487].

    At full row rank (K ≥ QN) θ' = −Dᵀ(DDᵀ)⁻¹∇_X C, so X' = −κ(X − Y),
    X(s) = Y + e^{−κs}(X(0) − Y) and C(s) = e^{−2κs} C(0). At full column rank (K < QN)
    θ' = −(DᵀD)⁻¹Dᵀ∇_X C (Gauss–Newton flow, X' = −P∇_X C). `solver` picks how D⁺ is
    applied: 'auto', 'cholesky', 'qr', 'svd' or an AbstractPinvSolver.
    """

    inverts_jacobian: ClassVar[bool] = True
    solver: str | AbstractPinvSolver = "auto"

    def __check_init__(self):
        if isinstance(self.solver, str) and self.solver != "auto":
            from .linalg import SOLVERS

            if self.solver not in SOLVERS:
                raise ValueError(
                    f"unknown solver {self.solver!r}; expected 'auto' or one of {sorted(SOLVERS)}"
                )

    def check(self, problem):
        resolve_solver(self.solver, problem)

    def default_max_condition(self, problem):
        return resolve_solver(self.solver, problem).max_condition

    def velocity(self, problem, theta):
        g = problem.output_gradient(problem.outputs(theta))
        return -resolve_solver(self.solver, problem).solve(problem, theta, g)


class DampedFlow(AbstractFlow):
    r"""Levenberg–Marquardt flow θ' = −Dᵀ(Θ + λI)⁻¹∇_X C = −(DᵀD + λI)⁻¹Dᵀ∇_X C.

    λ = `damping` + `damping_lambda_min`·λ_min(G), G the smaller of DDᵀ and DᵀD. Defined at any
    rank; tends to the AdaptedFlow as λ → 0 with error O(λ). With damping = 0 and
    damping_lambda_min = μ every eigenmode of the output flow decays at rate ≥ κ/(1 + μ),
    whatever λ_min(Θ) is.
    """

    damping: float = eqx.field(static=True, default=1e-3, converter=float)
    damping_lambda_min: float = eqx.field(static=True, default=0.0, converter=float)
    gram: AbstractGram = AutoGram()  # layerwise for an MLP, dense otherwise

    def __check_init__(self):
        if self.damping < 0 or self.damping_lambda_min < 0:
            raise ValueError(
                f"damping and damping_lambda_min must be >= 0, got {self.damping}, "
                f"{self.damping_lambda_min}"
            )
        if self.damping == 0 and self.damping_lambda_min == 0:
            raise ValueError("DampedFlow needs damping > 0 or damping_lambda_min > 0; "
                             "with neither it is the AdaptedFlow")

    def velocity(self, problem, theta):
        g = problem.output_gradient(problem.outputs(theta))
        wide = problem.num_params >= problem.num_outputs
        if wide:
            small_gram, transpose = self.gram(problem, theta)
        else:
            d = problem.jacobian(theta)
            small_gram, transpose = d.T @ d, None
            g = d.T @ g
        if self.damping_lambda_min == 0:
            op = lx.MatrixLinearOperator(
                small_gram + self.damping * jnp.eye(small_gram.shape[0], dtype=g.dtype),
                lx.positive_semidefinite_tag,
            )
            w = lx.linear_solve(op, g, lx.Cholesky(), throw=False).value
        else:
            lam, u = jnp.linalg.eigh(small_gram)
            shift = self.damping + self.damping_lambda_min * jnp.maximum(lam[0], 0.0)
            w = u @ ((u.T @ g) / (jnp.maximum(lam, 0.0) + shift))
        return -(transpose(w) if wide else w)


FLOWS = {"standard": GradientFlow, "adapted": AdaptedFlow, "damped": DampedFlow}
