r"""Gradient flow as linear interpolation in output space ([CM24], MATH §5).

With t = 1 − e^{−κs} the adapted flow becomes dθ/dt = D⁺(Y − X(0)) on t in [0, 1]: at full row
rank X' = Y − X(0), so X(t) = (1 − t)X(0) + tY runs along the segment and reaches the global
minimum at the finite time t = 1, with C(t) = (1 − t)² C(0).
"""

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..linalg import AbstractPinvSolver, resolve_solver
from ._base import AbstractFlow, linear_theory_applies


class InterpolationFlow(AbstractFlow):
    """dθ/dt = D⁺(Y − X(0)) on t in [0, 1] (`flowlab.interpolate` runs it).

    **Arguments:**

    - `outputs0`: X(0), shape (QN,); None: each run fills it in from its own θ0
      (`at_start`), so the flow can be named in a config or vmapped over seeds.
    - `solver`: how D⁺ is applied, as in `AdaptedFlow`.

    **Raises:**

    - `ValueError`: when the run checks the flow, if `outputs0` is not of shape (QN,) or the
      solver cannot apply to the problem; when evaluated without `outputs0` outside a run.
    """

    outputs0: Float[Array, " QN"] | None = None
    solver: str | AbstractPinvSolver = "auto"

    def check(self, problem):
        if self.outputs0 is not None and jnp.shape(self.outputs0) != (problem.num_outputs,):
            raise ValueError(f"outputs0 must have shape ({problem.num_outputs},), got "
                             f"{jnp.shape(self.outputs0)}")
        resolve_solver(self.solver, problem)

    def resolve(self, problem, *, stepping: bool = False) -> "InterpolationFlow":
        self.check(problem)
        return InterpolationFlow(self.outputs0,
                                 resolve_solver(self.solver, problem, smooth=not stepping))

    def at_start(self, problem, theta0):
        if self.outputs0 is not None:
            return self
        return InterpolationFlow(problem.outputs(theta0), self.solver)

    def default_max_condition(self, problem):
        return resolve_solver(self.solver, problem).max_condition(problem.theta0.dtype)

    def spectrum_route(self, problem):
        return resolve_solver(self.solver, problem).route

    def velocity(self, problem, theta):
        return self.velocity_and_result(problem, theta)[0]

    def velocity_and_result(self, problem, theta) -> tuple:
        if self.outputs0 is None:
            raise ValueError("InterpolationFlow without outputs0: call at_start(problem, theta0)")
        return resolve_solver(self.solver, problem).solve(
            problem, theta, problem.targets - self.outputs0)

    def rate_at(self, problem, sigma):
        return math.nan  # C(t) = (1 − t)²C(0) is not exponential in t

    def rate_bound(self, problem):
        return math.nan

    def predicted_cost(self, problem, theta0, ts, step_size=None):
        ts = np.asarray(ts, float)
        if not (linear_theory_applies(problem) and problem.overparametrised):
            return np.full(ts.shape, np.nan)
        cost0 = float(problem.cost(theta0))
        if step_size is None:
            return cost0 * np.clip(1.0 - ts, 0.0, None) ** 2
        return np.full(ts.shape, np.nan)
