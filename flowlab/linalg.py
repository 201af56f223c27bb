r"""How the flows get at D: Gram strategies, pseudo-inverse solvers and the spectrum of D.

Every solver computes v = D⁺ g, the minimal-norm least-squares solution of D v = g:
- 'cholesky': v = Dᵀ Θ⁻¹ g with Θ = D Dᵀ (needs rank D = QN, so K ≥ QN);
- 'qr': QR of D (least squares when K < QN, minimal norm when K ≥ QN; needs full rank);
- 'svd': v = V Σ⁺ Uᵀ g with singular values below rcond·σ_max dropped (any rank).
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float


class AbstractGram(eqx.Module):
    """A way to obtain Θ = D Dᵀ and the map w ↦ Dᵀ w at θ."""

    @abc.abstractmethod
    def __call__(self, problem, theta) -> tuple[Float[Array, "QN QN"], object]:
        """Return (Θ, w ↦ Dᵀ w)."""


class DenseGram(AbstractGram):
    """Materialise D (jacrev, or jacfwd when K < QN) and form D Dᵀ."""

    mode: str = eqx.field(static=True, default="auto")

    def __call__(self, problem, theta):
        d = problem.jacobian(theta, self.mode)
        return d @ d.T, lambda w: d.T @ w


class AbstractPinvSolver(eqx.Module):
    """Computes D⁺ g at θ."""

    @abc.abstractmethod
    def solve(self, problem, theta, rhs: Float[Array, " QN"]) -> Float[Array, " K"]: ...

    def check(self, problem) -> None:
        """Raise a ValueError when the solver cannot apply to the problem's shapes."""


class CholeskySolver(AbstractPinvSolver):
    """v = Dᵀ (D Dᵀ)⁻¹ g by a Cholesky factorisation of the Gram matrix (full row rank)."""

    gram: AbstractGram = DenseGram()

    def check(self, problem):
        if problem.num_params < problem.num_outputs:
            raise ValueError(
                f"the 'cholesky' solver needs full row rank, so K >= QN; here K = "
                f"{problem.num_params} < QN = {problem.num_outputs} (underparametrised). "
                "Use solver='qr' or 'svd'."
            )

    def solve(self, problem, theta, rhs):
        theta_gram, transpose = self.gram(problem, theta)
        op = lx.MatrixLinearOperator(theta_gram, lx.positive_semidefinite_tag)
        w = lx.linear_solve(op, rhs, lx.Cholesky(), throw=False).value
        return transpose(w)


class QRSolver(AbstractPinvSolver):
    """D⁺ g by a QR factorisation of D (full rank: column rank if K < QN, row rank if not)."""

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta)
        return lx.linear_solve(lx.MatrixLinearOperator(d), rhs, lx.QR(), throw=False).value


class SVDSolver(AbstractPinvSolver):
    """D⁺ g by the SVD of D, singular values below rcond·σ_max treated as zero (any rank).

    rcond=None uses lineax's default, eps·max(QN, K)."""

    rcond: float | None = eqx.field(static=True, default=None)

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta)
        return lx.linear_solve(
            lx.MatrixLinearOperator(d), rhs, lx.SVD(rcond=self.rcond), throw=False
        ).value


SOLVERS = {"cholesky": CholeskySolver, "qr": QRSolver, "svd": SVDSolver}


def resolve_solver(solver: "str | AbstractPinvSolver", problem) -> AbstractPinvSolver:
    """A solver instance from a name; 'auto' is 'cholesky' when K ≥ QN and 'qr' otherwise."""
    if isinstance(solver, AbstractPinvSolver):
        out = solver
    elif solver == "auto":
        out = CholeskySolver() if problem.num_params >= problem.num_outputs else QRSolver()
    elif solver in SOLVERS:
        out = SOLVERS[solver]()
    else:
        raise ValueError(f"unknown solver {solver!r}; expected 'auto' or one of {sorted(SOLVERS)}")
    out.check(problem)
    return out


def singular_values(problem, theta, gram: AbstractGram | None = None) -> Float[Array, " r"]:
    """The min(QN, K) singular values of D in increasing order, from the eigenvalues of the
    smaller of D Dᵀ and Dᵀ D (resolves σ down to about √eps·σ_max)."""
    if problem.num_params >= problem.num_outputs:
        theta_gram, _ = (gram or DenseGram())(problem, theta)
    else:
        d = problem.jacobian(theta)
        theta_gram = d.T @ d
    eig = jnp.linalg.eigvalsh(theta_gram)
    return jnp.sqrt(jnp.clip(eig, 0.0))


def numerical_rank(sigma: Float[Array, " r"], rtol: float | None = None):
    """#{σ > rtol·σ_max}; default rtol = √(eps·r), the resolution of σ computed from a Gram."""
    if rtol is None:
        rtol = math.sqrt(float(jnp.finfo(sigma.dtype).eps) * sigma.shape[-1])
    return jnp.sum(sigma > rtol * jnp.max(sigma, axis=-1, keepdims=True), axis=-1)
