import jax.numpy as jnp

from ..linalg import SOLVERS, AbstractPinvSolver, resolve_solver
from ._base import AbstractFlow


class AdaptedFlow(AbstractFlow):
    r"""The geometrically adapted flow θ' = −D⁺ ∇_X C [Chen, arXiv 2311.15487].

    At full row rank (K ≥ QN) θ' = −Dᵀ(DDᵀ)⁻¹∇_X C, so X' = −κ(X − Y),
    X(s) = Y + e^{−κs}(X(0) − Y) and C(s) = e^{−2κs} C(0): every mode at rate κ. At full column
    rank (K < QN) θ' = −(DᵀD)⁻¹Dᵀ∇_X C (Gauss–Newton flow, X' = −P∇_X C, no uniform rate).
    `solver` picks how D⁺ is applied: 'auto', 'cholesky', 'qr', 'svd' or an AbstractPinvSolver.
    """

    solver: str | AbstractPinvSolver = "auto"

    def __check_init__(self):
        if isinstance(self.solver, str) and self.solver != "auto" and self.solver not in SOLVERS:
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

    def mode_rates(self, problem, sigma):
        return jnp.full_like(sigma, problem.kappa)

    def rate_bound(self, problem):
        bound = super().rate_bound(problem)
        return 2.0 * problem.kappa if bound == 0.0 else bound
