import equinox as eqx
import jax.numpy as jnp

from ..linalg import AbstractPinvSolver
from ._base import linear_theory_applies
from ._pinv import AbstractPinvFlow


class AdaptedFlow(AbstractPinvFlow):
    r"""The geometrically adapted flow θ' = −D⁺ ∇_X C [Chen, arXiv 2311.15487].

    At full row rank (K ≥ QN) θ' = −Dᵀ(DDᵀ)⁻¹∇_X C, so X' = −κ(X − Y),
    X(s) = Y + e^{−κs}(X(0) − Y) and C(s) = e^{−2κs} C(0): every mode at rate κ. At full column
    rank (K < QN) θ' = −(DᵀD)⁻¹Dᵀ∇_X C (Gauss–Newton flow, X' = −P∇_X C, no uniform rate).

    **Arguments:**

    - `solver`: how D⁺ is applied: 'auto' (`flowlab.auto_solver`, decided once per run), a
      name of `flowlab.linalg.SOLVERS` ('cholesky', 'gram_or_qr', 'qr', 'svd',
      'normal_cholesky', 'cg', 'nystrom') or an `AbstractPinvSolver`.
    - `rcond`: with solver='svd', drop singular values below rcond·σ_max: a truncated
      pseudo-inverse, the robust choice for ill-conditioned residual problems such as PINNs.

    **Raises:**

    - `ValueError`: on an unknown solver name, or an `rcond` without solver='svd' or outside
      (0, 1); when the run resolves the flow, if the solver cannot apply to the problem's
      shapes (e.g. 'cholesky' with K < QN).
    """

    solver: str | AbstractPinvSolver = "auto"
    rcond: float | None = eqx.field(static=True, default=None)

    def _direction(self, problem, theta):
        return problem.output_gradient(problem.outputs(theta))

    def output_path(self, problem):
        if not (linear_theory_applies(problem) and problem.overparametrised):
            return None
        targets, kappa = problem.targets, problem.kappa
        return lambda outputs0, s: targets + jnp.exp(-kappa * s) * (outputs0 - targets)

    def mode_rates(self, problem, sigma):
        return jnp.full_like(sigma, problem.kappa)

    def rate_bound(self, problem):
        bound = super().rate_bound(problem)
        return 2.0 * problem.kappa if bound == 0.0 else bound
