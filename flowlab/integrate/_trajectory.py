"""The record of an integration (its stop reasons: `_results.RESULTS`)."""

import math

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._results import STOP_REASONS


class Trajectory(eqx.Module):
    """The record of one integration (or a batch: every array gains leading seed axes).

    Saved at `ts` (entries after the stop have valid = False and value +inf): the cost, the
    outputs X, |θ|, and when diagnostics were on σ_min(D), σ_max(D) and the numerical rank
    (NaN when off); `extras` holds what the `extras` functions of `simulate` returned at
    each save. `stop_reason` names why the run ended (see STOP_REASONS). Returned by
    `simulate`, `solve` and `euler_steps`; `seed(i)` picks one member of a batch.

    **Attributes:**

    - `ts`: the save times s (for Euler steps the accumulated Σ h_k), shape (*b, S).
    - `valid`: whether each save was reached.
    - `cost`, `outputs`, `theta_norm`: C, X and |θ| at the saves.
    - `sigma_min`, `sigma_max`, `rank`: σ_min(D), σ_max(D) and the numerical rank at the
      saves (NaN without diagnostics).
    - `theta`: θ at the saves with save_theta, else None.
    - `extras`: name -> the values of each `extras` function at the saves.
    - `cost0`, `outputs0`: C and X at θ0.
    - `targets`: Y.
    - `t_final`, `cost_final`, `theta_final`: s, C and θ where the run ended.
    - `stop_code`: the stop reason's code (an index of `STOP_REASONS`).
    - `num_steps`: steps taken (the ODE solver's, or Euler steps and trials).
    - `num_accepted_steps`, `num_rejected_steps`: of those, accepted and rejected (for Euler
      steps: halvings, or rejected Levenberg–Marquardt trials).
    - `num_field_evals`: evaluations of the field (−1 where the ODE solver's count per step
      is not fixed, as for implicit solvers).
    - `kappa`: the problem's κ.
    - `wall_time`, `compile_time`: seconds the run and its compilation took (0.0 compile
      time when a compiled solve was reused; NaN from `solve`, which is not timed).
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

