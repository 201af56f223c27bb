r"""What the theory predicts, and fits of what was measured.

Along the overparametrised adapted flow (rank D = QN on the orbit):
X(s) = Y + e^{−κs}(X(0) − Y), C(s) = e^{−2κs} C(0), so C ≤ ε for s ≥ T_ε = ln(C(0)/ε)/(2κ).
Each flow states its own predicted rate and cost curve (`AbstractFlow.predicted_rate`,
`predicted_cost`, `rate_bound`); this module holds what is common to all of them.
"""

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def _check_positive(name, value):
    if not (np.all(np.isfinite(value)) and np.all(np.asarray(value) > 0)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def predicted_outputs(outputs0: Float[Array, " QN"], targets: Float[Array, " QN"], kappa: float, ts):
    """X(s) = Y + e^{−κs}(X(0) − Y): the straight segment from X(0) to Y, shape (S, QN)."""
    _check_positive("kappa", kappa)
    decay = np.exp(-kappa * np.asarray(ts))[:, None]
    return np.asarray(targets) + decay * (np.asarray(outputs0) - np.asarray(targets))


def decay_time(ratio: float, rate: float) -> float:
    """The time s with e^{−rate·s} = ratio: when a cost decaying at `rate` has fallen by `ratio`
    (NaN without a positive rate). T_ε is decay_time(ε/C(0), 2κ)."""
    if not (rate > 0 and math.isfinite(rate)):
        return 0.0 if rate == math.inf else math.nan
    return math.log(1.0 / ratio) / rate


def stopping_time(cost0: float, epsilon: float, kappa: float) -> float:
    """A priori stopping time T_ε = ln(C(0)/ε)/(2κ): C(s) ≤ ε for all s ≥ T_ε on the adapted
    flow at full rank (0 when C(0) ≤ ε already). A bound C(0) ≤ C_max gives one T_ε for all
    initialisations."""
    _check_positive("epsilon", epsilon)
    _check_positive("kappa", kappa)
    if not (math.isfinite(cost0) and cost0 >= 0):
        raise ValueError(f"cost0 must be finite and >= 0, got {cost0!r}")
    if cost0 <= epsilon:
        return 0.0
    return decay_time(epsilon / cost0, 2.0 * kappa)


def cost_floor(targets, kappa: float):
    """The cost below which float round-off of X − Y dominates: (κ/2)·QN·(eps·max(1, |Y|∞))²,
    times a margin of 10⁶ (traceable: a JAX scalar)."""
    y = jnp.asarray(targets)
    eps = jnp.finfo(y.dtype if jnp.issubdtype(y.dtype, jnp.floating) else float).eps
    return 1e6 * 0.5 * kappa * y.size * (eps * jnp.maximum(1.0, jnp.max(jnp.abs(y)))) ** 2


def fit_decay_rate(ts, cost, *, floor: float = 0.0, valid=None) -> float:
    """Robust exponential rate r with C(s) ≈ C(0) e^{−r s}: the Theil–Sen slope (median of
    pairwise slopes) of −log C over the saved points with C > floor. NaN with < 2 points."""
    ts, cost = np.asarray(ts, float), np.asarray(cost, float)
    keep = np.isfinite(ts) & np.isfinite(cost) & (cost > max(floor, 0.0))
    if valid is not None:
        keep &= np.asarray(valid, bool)
    t, y = ts[keep], -np.log(cost[keep])
    if t.size < 2:
        return math.nan
    i, j = np.triu_indices(t.size, k=1)
    dt = t[j] - t[i]
    ok = dt > 0
    return float(np.median((y[j] - y[i])[ok] / dt[ok]))


def euler_cost_ratio(rate: float, step_size: float) -> float:
    """The factor (1 − h·r/2)² by which an Euler step of size h multiplies the cost along a mode
    on which the flow's cost decays at rate r ((1 − hκ)² for the adapted flow)."""
    return (1.0 - 0.5 * step_size * rate) ** 2


def first_crossing(ts, cost, level) -> float:
    """The first time the saved cost reaches `level`, interpolating log C linearly (NaN if never)."""
    ts, cost = np.asarray(ts, float), np.asarray(cost, float)
    below = np.nonzero(cost <= level)[0]
    if below.size == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(ts[0])
    t0, t1, c0, c1 = ts[i - 1], ts[i], math.log(cost[i - 1]), math.log(cost[i])
    if c1 == c0 or not math.isfinite(c1):
        return float(t1)
    return float(t0 + (math.log(level) - c0) * (t1 - t0) / (c1 - c0))


def max_log_error(cost, predicted, floor: float = 0.0) -> float:
    """max |log C(s) − log C_pred(s)| over the saves where both lie above `floor` (NaN when
    there is no prediction)."""
    cost, predicted = np.asarray(cost, float), np.asarray(predicted, float)
    keep = np.isfinite(cost) & np.isfinite(predicted) & (cost > floor) & (predicted > floor)
    if not np.any(keep):
        return math.nan
    return float(np.max(np.abs(np.log(cost[keep]) - np.log(predicted[keep]))))


class _TrajectoryShape:
    """κ, K, QN and the squared loss read off a trajectory: enough for the adapted law."""

    def __init__(self, trajectory):
        from .problem import SquaredLoss, is_overparametrised

        self.kappa = trajectory.kappa
        self.num_params = int(np.shape(trajectory.theta_final)[-1])
        self.num_outputs = int(np.shape(trajectory.targets)[-1])
        self.overparametrised = is_overparametrised(self.num_params, self.num_outputs)
        self.loss = SquaredLoss(trajectory.kappa)


def compare(trajectory, problem=None, flow=None, epsilon_relative: float | None = None) -> dict:
    """Measured against predicted for one (unbatched) Trajectory of `flow` (default the
    AdaptedFlow) on `problem` (needed for other flows; for the adapted flow κ, K and QN are read
    off the trajectory).

    Returns the worst |log C(s) − log C_pred(s)| over the saves above the float floor, the
    worst |X(s) − X_segment(s)|∞ against the adapted flow's straight segment, the fitted rate
    against the flow's predicted rate (NaN where the theory predicts none, e.g. K < QN) with
    their relative error and, given ε_rel, the predicted T_ε against the stop at C ≤ ε_rel·C(0).
    """
    from .flows import AdaptedFlow

    tr = trajectory
    if tr.batch_shape:
        raise ValueError("compare takes one trajectory; use trajectory.seed(i) for a batch")
    flow = AdaptedFlow() if flow is None else flow
    if problem is None and not isinstance(flow, AdaptedFlow):
        raise ValueError(f"compare needs the problem to predict the {type(flow).__name__}")
    kappa = tr.kappa
    valid = np.asarray(tr.valid)
    ts, cost = np.asarray(tr.ts)[valid], np.asarray(tr.cost)[valid]
    c0 = float(tr.cost0)
    floor = float(cost_floor(tr.targets, kappa))
    if problem is None:
        rate = flow.rate_bound(_TrajectoryShape(tr))
        predicted = c0 * np.exp(-rate * ts)
    else:
        theta0 = tr.theta[0] if tr.theta is not None else None
        rate = flow.predicted_rate(problem, problem.theta0 if theta0 is None else theta0)
        predicted = flow.predicted_cost(problem, problem.theta0 if theta0 is None else theta0, ts)
    x_pred = predicted_outputs(tr.outputs0, tr.targets, kappa, ts)
    x_err = np.max(np.abs(np.asarray(tr.outputs)[valid] - x_pred), axis=-1)
    measured = fit_decay_rate(ts, cost, floor=floor)
    out = {
        "max_log_cost_error": max_log_error(cost, predicted, floor),
        "max_output_error": float(np.max(x_err, initial=0.0)),
        "measured_rate": measured,
        "predicted_rate": rate,
        "rate_relative_error": abs(measured - rate) / rate if rate > 0 else math.nan,
    }
    if epsilon_relative is not None:
        out["predicted_stopping_time"] = decay_time(epsilon_relative, rate)
        out["measured_stopping_time"] = (
            float(tr.t_final) if tr.stop_reason == "cost_target" else math.nan
        )
    return out
