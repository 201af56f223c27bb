"""What the flows that pull an output velocity back by D⁺ share: the pseudo-inverse solver."""

import dataclasses

import equinox as eqx

from ..linalg import (
    SOLVERS,
    AbstractDampedPinvSolver,
    AbstractPinvSolver,
    SVDSolver,
    resolve_solver,
)
from ._base import AbstractFlow


class AbstractPinvFlow(AbstractFlow):
    """A flow θ' = −D⁺w(θ) for an output-space direction w (∇_X C for the AdaptedFlow, H⁺∇_X C
    for the HessianMetricFlow), D⁺ applied by `solver`: 'auto', 'cholesky', 'qr', 'svd' or an
    AbstractPinvSolver; `rcond` (with solver='svd') drops singular values below rcond·σ_max."""

    solver: eqx.AbstractVar[str | AbstractPinvSolver]
    rcond: eqx.AbstractVar[float | None]

    def __check_init__(self):
        if isinstance(self.solver, str) and self.solver != "auto" and self.solver not in SOLVERS:
            raise ValueError(
                f"unknown solver {self.solver!r}; expected 'auto' or one of {sorted(SOLVERS)}"
            )
        if self.rcond is not None and (self.solver != "svd" or not 0 < self.rcond < 1):
            raise ValueError(f"rcond = {self.rcond!r} needs solver='svd' and 0 < rcond < 1")

    def _solver(self, problem, smooth: bool = True) -> AbstractPinvSolver:
        # resolved once by `resolve`; a flow used directly is resolved at each call
        if isinstance(self.solver, AbstractPinvSolver):
            return self.solver
        if self.rcond is not None:
            return SVDSolver(rcond=float(self.rcond))
        return resolve_solver(self.solver, problem, smooth=smooth)

    def check(self, problem):
        self._solver(problem).check(problem)

    def resolve(self, problem, *, stepping: bool = False) -> "AbstractPinvFlow":
        resolved = dataclasses.replace(self, solver=self._solver(problem, smooth=not stepping),
                                       rcond=None)
        resolved.check(problem)
        return resolved

    def default_max_condition(self, problem):
        return self._solver(problem).max_condition(problem.theta0.dtype)

    def spectrum_route(self, problem):
        return self._solver(problem).route

    def velocity(self, problem, theta):
        return self.velocity_and_result(problem, theta)[0]

    def velocity_and_result(self, problem, theta) -> tuple:
        return self.velocity_details(problem, theta)[:2]

    def _direction(self, problem, theta):
        """The output-space direction w pulled back, θ' = −D⁺w."""
        raise NotImplementedError

    def velocity_details(self, problem, theta) -> tuple:
        v, result, full_rank = self._solver(problem).solve_with_rank(
            problem, theta, self._direction(problem, theta))
        return -v, result, full_rank

    def damped_velocity(self, problem, theta, damping) -> tuple:
        """θ' = −Dᵀ(Θ + λI)⁻¹w = −(DᵀD + λI)⁻¹Dᵀw for the flow's output direction w (the same
        vector at any shape, by the push-through identity) and the solve's result: linearised,
        output mode i contracts at λ_i/(λ_i + λ) times the undamped rate (κλ_i/(λ_i + λ) for
        the AdaptedFlow). Through Θ for
        K ≥ QN, through the SVD of D (any shape) for K < QN."""
        v, result = self._solver(problem).solve_damped(
            problem, theta, self._direction(problem, theta), damping)
        return -v, result

    def velocity_spectrum(self, problem, theta) -> tuple:
        v, result, _, ends = self._solver(problem).solve_with_spectrum(
            problem, theta, self._direction(problem, theta))
        return -v, result, ends

    def check_damped(self, problem):
        solver = self._solver(problem)
        if not isinstance(solver, AbstractDampedPinvSolver):
            raise ValueError(f"levenberg_marquardt: solver {type(solver).__name__} has no damped "
                             "solve; use solver='auto', 'svd' (any shape), 'cholesky', 'gram_or_qr' or "
                             "'nystrom' (K >= QN)")

    def pullback(self, problem, theta, dx):
        return self._solver(problem).solve(problem, theta, dx)[0]
