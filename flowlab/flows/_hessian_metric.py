import math

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from ..linalg import AbstractPinvSolver, spectrum_ends
from ..problem import SquaredLoss, symmetric_pinv_solve
from ._base import a_priori_time
from ._pinv import AbstractPinvFlow

#: `HessianMetricFlow.gradient_floor`'s margin over eps·κ·√QN.
GRADIENT_FLOOR_MARGIN = 100.0


class HessianMetricFlow(AbstractPinvFlow):
    r"""The adapted flow with the loss's own output metric: X' = −H⁺∇_X C, H = ∇²_X C, pulled
    back to θ (MATH §12).

    At full row rank (K ≥ QN) θ' = −D⁺H⁺∇_X C realises X' = −H⁺∇_X C exactly, so
    d/ds ∇_X C = H X' = −∇_X C wherever ∇_X C lies in the range of H — for the softmax
    cross-entropy it does (each example's gradient sums to zero) — and

    ∇_X C(s) = e^{−s} ∇_X C(0)

    on every orbit: |∇_X C| ≤ ε from T_ε = ln(|∇_X C(0)|/ε) on, a priori. Near the minimiser
    C − C_min ≈ e^{−2s}(C(0) − C_min) to second order. For the squared loss H = κI and this is
    the AdaptedFlow with time κs (the same orbits). For the cross-entropy the output path is
    known in closed form: p_j(s) = y_j + e^{−s}(p_j(0) − y_j) with each example's output sum
    Σ_i x_ji conserved (the pseudo-inverse acts on the fibre's complement), ending at CM24's
    fibre minimiser. Its Euler step at h = 1 is the generalised Gauss–Newton step (for the
    cross-entropy: natural gradient with the Fisher matrix) that keeps the fibre sums.

    Below full row rank in shape (K < QN) it is the Gauss–Newton flow of the pull-back metric
    DᵀHD: θ' = −(DᵀHD)⁺Dᵀ∇_X C (the H-orthogonal projection of −H⁺∇_X C onto range D).

    Any loss that states `metric_gradient` (or its Hessian–vector products, and
    `hessian_block_size` for a sum of per-example losses) applies; `metric_path` gives the
    a priori output path where it has a closed form.

    **Arguments:**

    - `solver`: how D⁺ is applied (K ≥ QN): 'auto', 'cholesky', 'qr', 'svd' or an
      AbstractPinvSolver, as for the AdaptedFlow.
    - `rcond`: with solver='svd', the relative singular-value cutoff.
    """

    solver: str | AbstractPinvSolver = "auto"
    rcond: float | None = eqx.field(static=True, default=None)

    def check(self, problem):
        super().check(problem)
        w = jax.eval_shape(problem.loss.metric_gradient, problem.targets, problem.targets)
        if w.shape != problem.targets.shape:
            raise ValueError(f"{type(problem.loss).__name__}.metric_gradient returns shape "
                             f"{w.shape}, expected {problem.targets.shape}")

    def _direction(self, problem, theta):
        return problem.loss.metric_gradient(problem.outputs(theta), problem.targets)

    def velocity_details(self, problem, theta) -> tuple:
        if not problem.overparametrised:
            return _gauss_newton_velocity(problem, theta)
        return super().velocity_details(problem, theta)

    def velocity_spectrum(self, problem, theta) -> tuple:
        if not problem.overparametrised:  # the K × K route solves no system with D
            v, result, _ = _gauss_newton_velocity(problem, theta)
            return v, result, spectrum_ends(problem, theta, self.spectrum_route(problem))
        return super().velocity_spectrum(problem, theta)

    def check_damped(self, problem):
        if not problem.overparametrised:
            raise ValueError("levenberg_marquardt: the HessianMetricFlow has a damped step for "
                             "K >= QN only")
        super().check_damped(problem)

    def default_step_size(self, problem) -> float:
        return 1.0

    def steps_need_search(self, problem) -> bool:
        # a full Newton step in output space overshoots where the loss is far from quadratic
        return problem.general_residual or not isinstance(problem.loss, SquaredLoss)

    def output_path(self, problem):
        if not problem.overparametrised:
            return None
        loss, targets = problem.loss, problem.targets
        if loss.metric_path(targets, targets, 0.0) is None:
            return None
        return lambda outputs0, s: loss.metric_path(outputs0, targets, s)

    def mode_rates(self, problem, sigma):
        return jnp.ones_like(sigma)

    def rate_bound(self, problem):
        # C(s) = e^{−2s}C(0) holds for the squared loss only; otherwise the law is on ∇_X C
        return 2.0 if isinstance(problem.loss, SquaredLoss) and problem.overparametrised else math.nan

    def predicted_rate(self, problem, theta) -> float:
        """2: the rate of C − C_min near the minimiser at full row rank (NaN when K < QN)."""
        return 2.0 if problem.overparametrised else math.nan

    def rate_at(self, problem, sigma) -> float:
        return self.predicted_rate(problem, None)

    def stopping_time(self, problem, epsilon_relative: float) -> float:
        """ln(1/ε)/2: where C − C_min ≈ e^{−2s}(C(0) − C_min) (exact for the squared loss)."""
        return a_priori_time(epsilon_relative, 2.0)

    def gradient_stopping_time(self, problem, theta0, epsilon: float) -> float:
        """T_ε = ln(|∇_X C(θ0)|/ε): |∇_X C(s)| ≤ ε for every s ≥ T_ε at full row rank.

        **Arguments:**

        - `problem`: the problem (K ≥ QN).
        - `theta0`: the start θ0.
        - `epsilon`: the level of |∇_X C|, > 0.

        **Returns:**

        T_ε as a float (0 when |∇_X C(θ0)| ≤ ε already).
        """
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        g0 = float(jnp.linalg.norm(problem.output_gradient(problem.outputs(theta0))))
        return max(0.0, math.log(g0 / epsilon))

    def gradient_floor(self, problem) -> float:
        """The |∇_X C| below which round-off of the outputs dominates: ∇_X C is computed from
        X to relative accuracy eps per output, so the floor is
        GRADIENT_FLOOR_MARGIN·eps·κ·√QN (κ = 1/N for the cross-entropy; the law
        ∇_X C(s) = e^{−s}∇_X C(0) is observable down to it, and steps stop near it)."""
        eps = float(jnp.finfo(problem.theta0.dtype).eps)
        return GRADIENT_FLOOR_MARGIN * eps * problem.kappa * math.sqrt(problem.num_outputs)

    def predicted_cost(self, problem, theta0, ts, step_size: float | None = None):
        """The flow's cost curve from θ0: C(X*(s)) on the a priori output path where the loss
        has one (exact at full row rank, not linearised); for the squared loss's Euler steps
        (1 − h)^{2s/h}C(0) per mode; NaN otherwise."""
        ts = np.asarray(ts, float)
        path = self.output_path(problem)
        if path is None or step_size is not None:
            return super().predicted_cost(problem, theta0, ts, step_size)
        x0 = problem.outputs(theta0)
        cost = jax.vmap(lambda s: problem.loss(path(x0, s), problem.targets))(jnp.asarray(ts))
        return np.asarray(cost)


def _gauss_newton_velocity(problem, theta):
    """θ' = −(DᵀHD)⁺Dᵀ∇_X C for K < QN: D formed (K columns), HD by K Hessian–vector products,
    the K × K pseudo-inverse by eigh (`symmetric_pinv_solve`)."""
    x = problem.outputs(theta)
    d = problem.jacobian(theta)
    hd = jax.vmap(lambda col: problem.loss.hessian_vector(x, problem.targets, col),
                  in_axes=1, out_axes=1)(d)
    metric = 0.5 * (d.T @ hd + hd.T @ d)
    v = -symmetric_pinv_solve(metric, d.T @ problem.output_gradient(x))
    return v, lx.RESULTS.successful, jnp.asarray(True)
