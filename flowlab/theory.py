r"""What the theory predicts, and fits of what was measured.

Along the overparametrised adapted flow (rank D = QN on the orbit):
X(s) = Y + e^{−κs}(X(0) − Y), C(s) = e^{−2κs} C(0), so C ≤ ε for s ≥ T_ε = ln(C(0)/ε)/(2κ).
"""

import math

import numpy as np
from jaxtyping import Array, Float


def _check_positive(name, value):
    if not (np.all(np.isfinite(value)) and np.all(np.asarray(value) > 0)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def predicted_cost(cost0, kappa: float, ts, rate_factor: float = 1.0):
    """C(s) = C(0) e^{−2ακs}; α = rate_factor (1 for the adapted flow)."""
    _check_positive("kappa", kappa)
    return np.asarray(cost0)[..., None] * np.exp(-2.0 * rate_factor * kappa * np.asarray(ts))


def predicted_outputs(outputs0: Float[Array, " QN"], targets: Float[Array, " QN"], kappa: float, ts):
    """X(s) = Y + e^{−κs}(X(0) − Y): the straight segment from X(0) to Y, shape (S, QN)."""
    _check_positive("kappa", kappa)
    decay = np.exp(-kappa * np.asarray(ts))[:, None]
    return np.asarray(targets) + decay * (np.asarray(outputs0) - np.asarray(targets))


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
    return math.log(cost0 / epsilon) / (2.0 * kappa)


def cost_floor(targets, kappa: float) -> float:
    """The cost at which float64 round-off of X − Y dominates: (κ/2)·QN·(eps·max(1, |Y|∞))²,
    times a margin of 10⁶."""
    y = np.asarray(targets)
    eps = np.finfo(y.dtype if y.dtype.kind == "f" else float).eps
    return 1e6 * 0.5 * kappa * y.size * (eps * max(1.0, float(np.max(np.abs(y)))))**2


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


def compare(trajectory, epsilon_relative: float | None = None) -> dict:
    """Measured against predicted for one (unbatched) Trajectory of the adapted flow.

    Returns the worst |log(C(s)/C(0)) + 2κs| and |X(s) − X_pred(s)|∞ over the saved times
    above the float floor, the fitted and predicted rate (2κ) with their relative error and,
    given ε_rel, the predicted T_ε against the measured first time with C ≤ ε_rel·C(0)."""
    tr = trajectory
    if tr.batch_shape:
        raise ValueError("compare takes one trajectory; use trajectory.seed(i) for a batch")
    kappa = tr.kappa
    valid = np.asarray(tr.valid)
    ts, cost = np.asarray(tr.ts)[valid], np.asarray(tr.cost)[valid]
    c0 = float(tr.cost0)
    floor = cost_floor(tr.targets, kappa)
    above = cost > floor
    log_err = np.abs(np.log(cost[above] / c0) + 2 * kappa * ts[above])
    x_pred = predicted_outputs(tr.outputs0, tr.targets, kappa, ts)
    x_err = np.max(np.abs(np.asarray(tr.outputs)[valid] - x_pred), axis=-1)
    rate = fit_decay_rate(ts, cost, floor=floor)
    out = {
        "max_log_cost_error": float(np.max(log_err, initial=0.0)),
        "max_output_error": float(np.max(x_err, initial=0.0)),
        "measured_rate": rate,
        "predicted_rate": 2 * kappa,
        "rate_relative_error": abs(rate - 2 * kappa) / (2 * kappa),
    }
    if epsilon_relative is not None:
        out["predicted_stopping_time"] = stopping_time(c0, epsilon_relative * c0, kappa)
        out["measured_stopping_time"] = (
            float(tr.t_final) if tr.stop_reason == "cost_target" else math.nan
        )
    return out
