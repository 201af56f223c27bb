"""The record of an integration, and the names of the ways it can end."""

import math

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int

#: Why an integration ended; Trajectory.stop_code indexes this tuple.
STOP_REASONS = (
    "t1_reached",  # integrated to t1
    "cost_target",  # C fell to the target (event, located by root finding)
    "rank_loss",  # σ_min(D) below sigma_min_tol, or σ_max/σ_min above max_condition
    "theta_diverged",  # |θ| above theta_norm_max
    "non_finite_field",  # the vector field returned NaN/inf (e.g. a failed Cholesky)
    "max_steps",  # the step budget ran out
    "solver_failed",  # any other diffrax failure
    "bound_violated",  # C(s) rose above the flow's guaranteed e^{−rs}C(0): the orbit left the theory
    "non_finite_start",  # θ0 or C(θ0) is not finite
    "no_descent",  # Euler steps: no step the line search tried lowered the cost (a stall)
)
#: Ends that mean a run did not do what it was asked (t1_reached is by design; rank_loss,
#: theta_diverged and bound_violated are findings about the orbit, reported as such).
FAILURES = frozenset({"max_steps", "solver_failed", "non_finite_field", "non_finite_start"})
STOP_CODE = {name: i for i, name in enumerate(STOP_REASONS)}


class Trajectory(eqx.Module):
    """The record of one integration (or a batch: every array gains leading seed axes).

    Saved at `ts` (entries after the stop have valid = False and value +inf): the cost, the
    outputs X, |θ|, and when diagnostics were on σ_min(D), σ_max(D) and the numerical rank
    (NaN when off); `extras` holds what the `extras` functions of `simulate` returned at
    each save. `stop_reason` names why the run ended (see STOP_REASONS).
    """

    ts: Float[Array, "*b S"]
    valid: Bool[Array, "*b S"]
    cost: Float[Array, "*b S"]
    outputs: Float[Array, "*b S QN"]
    theta_norm: Float[Array, "*b S"]
    sigma_min: Float[Array, "*b S"]
    sigma_max: Float[Array, "*b S"]
    rank: Float[Array, "*b S"]
    theta: Float[Array, "*b S K"] | None
    extras: dict[str, Array]
    cost0: Float[Array, "*b"]
    outputs0: Float[Array, "*b QN"]
    targets: Float[Array, " QN"]
    t_final: Float[Array, "*b"]
    cost_final: Float[Array, "*b"]
    theta_final: Float[Array, "*b K"]
    stop_code: Int[Array, "*b"]
    num_steps: Int[Array, "*b"]
    num_accepted_steps: Int[Array, "*b"]
    num_rejected_steps: Int[Array, "*b"]
    num_field_evals: Int[Array, "*b"]
    kappa: float = eqx.field(static=True)
    wall_time: float = eqx.field(static=True, default=math.nan)
    compile_time: float = eqx.field(static=True, default=math.nan)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.cost0.shape

    @property
    def stop_reason(self):
        """The stop reason's name (a nested list of names for a batch)."""
        codes = np.asarray(self.stop_code)
        if codes.ndim == 0:
            return STOP_REASONS[int(codes)]
        return np.vectorize(lambda c: STOP_REASONS[c], otypes=[object])(codes).tolist()

    def seed(self, i: int) -> "Trajectory":
        """The i-th member of a batched trajectory."""
        if not self.batch_shape:
            raise IndexError("this trajectory is not batched")
        targets = self.targets
        out = jax.tree_util.tree_map(lambda a: a[i], self)
        return eqx.tree_at(lambda tr: tr.targets, out, targets)

