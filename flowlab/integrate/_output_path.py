"""Follow a flow whose output trajectory is known a priori: project each step onto it."""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ..flows import AbstractFlow


class OutputPathSolver(diffrax.AbstractSolver):
    r"""Steps θ along a flow with a known output path X*(s) (MATH §9).

    A step from (s0, θ0) to s1 solves X(θ) = X*(s1) by minimum-norm Gauss–Newton started at θ0,
    θ ← θ − D(θ)⁺(X(θ) − X*(s1)), until |X(θ) − X*(s1)| ≤ tol·|X*(s1) − Y|. The first iteration
    is the flow's Euler step (with h' = (1 − e^{−κh})/κ); the others correct in the row space
    of D, so θ follows a minimum-norm lift of X* to first order in h, and X lands on X*(s1)
    exactly. Where θ ↦ X(θ) has kinks (ReLU) the iteration is semismooth Newton: it needs D of
    full rank on each side, not a smooth field, so it passes sliding kinks where θ' has no
    classical solution. A step whose iteration does not converge in `max_iterations` is
    rejected (error estimate = its displacement) and the controller shrinks it; a non-finite
    iterate (a singular Θ = DDᵀ: D lost rank) stops the solve as `singular`.

    `simulate` uses it for `ode_solver = "output_path"` (chosen by 'auto' for activations
    with kinks where the flow has an output path).

    **Arguments:**

    - `flow`: the flow to follow; it must have an `output_path` and a `pullback` (the
      `AdaptedFlow` at full row rank with the squared loss).
    - `tol`: the relative tolerance of each step's Gauss–Newton iteration.
    - `max_iterations`: Gauss–Newton iterations per step before the step is rejected.
    """

    flow: AbstractFlow
    tol: float | jax.Array
    max_iterations: int = eqx.field(static=True, default=32)
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        # X(0) fixes the path; the count is of Gauss–Newton iterations in accepted steps
        return args.outputs(y0), jnp.asarray(0)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        problem, (outputs0, iterations) = args, solver_state
        path = self.flow.output_path(problem)
        target = path(outputs0, t1)
        # relative to the distance left to the path's end (Y for the squared loss)
        tolerance = self.tol * jnp.linalg.norm(target - path(outputs0, jnp.inf))

        def not_done(carry):
            _, gap, i = carry
            return (i < self.max_iterations) & (jnp.linalg.norm(gap) > tolerance)

        def newton(carry):
            theta, gap, i = carry
            theta = theta - self.flow.pullback(problem, theta, gap)
            return theta, problem.outputs(theta) - target, i + 1

        y1, gap, used = jax.lax.while_loop(
            not_done, newton, (y0, problem.outputs(y0) - target, jnp.asarray(0)))
        residual = jnp.linalg.norm(gap)
        finite = jnp.isfinite(residual) & jnp.all(jnp.isfinite(y1))
        converged = finite & (residual <= tolerance)
        y1 = jnp.where(finite, y1, y0)
        y_error = jnp.where(converged, 0.0, jnp.abs(y1 - y0) + jnp.inf * ~finite)
        result = diffrax.RESULTS.where(finite, diffrax.RESULTS.successful,
                                       diffrax.RESULTS.singular)
        return y1, y_error, {"y0": y0, "y1": y1}, (outputs0, iterations + used), result

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
