r"""From a solved cell to its records: each seed's trajectory measured against what its flow
predicts (`AbstractFlow.predicted_rate`, `predicted_cost`, `rate_bound`) into a `RunRecord`,
and the cell's arrays (the saved curves and the predicted cost on the save grid) for the store.

Rates are fitted to the excess cost C(s) − C_min above the round-off floor of the dtype; for Euler
steps of size h a flow rate r is compared as the per-unit-time rate −ln((1 − hr/2)²)/h.
"""

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import theory
from ..data import Dataset
from ..equilibria import analyse_equilibrium
from ..flows import AbstractFlow
from ..geometry import path_lengths
from ..integrate import FAILURES, STOP_REASONS, IntegratorOptions, Trajectory, resolved_cost
from ..interpolation import segment_distance
from ..linalg import singular_values
from ..problem import AbstractProblem
from .build import hidden_widths
from .config import Study
from .extras import ExtraAnalyses
from .grid import Cell
from .records import EquilibriumRecord, LeastSquaresRecord, PathRecord, RunRecord

__all__ = ["CellSetup", "measure"]


@dataclasses.dataclass(frozen=True)
class CellSetup:
    """A cell built for its solve: the dataset, the problem (of the first seed's model: all
    seeds share the architecture), the seeds' start points θ0 (B, K), the flow, the integrator
    options (extras included) and the cell's extra analyses."""

    study: Study
    cell: Cell
    dataset: Dataset
    problem: AbstractProblem
    theta0: jax.Array
    flow: AbstractFlow
    options: IntegratorOptions
    extras: ExtraAnalyses

    @property
    def euler(self) -> bool:
        return self.study.config["integrator"]["method"] == "euler"

    @functools.cached_property
    def step_size(self) -> float | None:
        """The Euler step h as the solve resolved it (1/κ by default); None for the ODE."""
        if not self.euler:
            return None
        return float(self.options.resolve(self.problem, self.flow).step_size)


@dataclasses.dataclass(frozen=True)
class _Ends:
    """What every seed's record reads: the trajectory as NumPy arrays, the spectra at θ0 and at
    the end point, and the cell's constants (ε, the round-off floor, C_min, the rate bound, the
    cost the solve resolves)."""

    ts: np.ndarray
    cost: np.ndarray
    valid: np.ndarray
    outputs: np.ndarray
    codes: np.ndarray
    t_final: np.ndarray
    cost_final: np.ndarray
    cost0: np.ndarray
    sigma0: np.ndarray
    sigma1: np.ndarray
    grad_final: np.ndarray
    endpoint_error: np.ndarray
    kinks: list | None
    eps: float
    floor: float
    c_min: float
    bound: float
    resolved: float


@eqx.filter_jit
def _end_diagnostics(problem, theta0, theta_final, route):
    # lax.map, not vmap: no batched LAPACK (it hangs on jaxlib 0.10.2)
    sv = lambda ths: jax.lax.map(lambda th: singular_values(problem, th, route=route), ths)
    grad = jax.vmap(lambda th: jnp.linalg.norm(jax.grad(problem.cost)(th)))
    x_star = jax.vmap(lambda th: problem.loss.minimiser(problem.outputs(th), problem.targets))
    x_final = jax.vmap(problem.outputs)(theta_final)
    return sv(theta0), sv(theta_final), grad(theta_final), jnp.max(
        jnp.abs(x_final - x_star(theta0)), axis=-1)


@eqx.filter_jit
def _kinks(problem, theta_final):
    """Dead units, and the pre-activation nearest a kink (point, unit, z), at each end point."""

    def one(theta):
        model = problem.model(theta)
        z = model.hidden_preactivations(problem.inputs)
        k = jnp.argmin(jnp.abs(z))
        return model.dead_units(problem.inputs), k // z.shape[1], k % z.shape[1], z.ravel()[k]

    return jax.vmap(one)(theta_final)


def _ends(setup: CellSetup, tr: Trajectory) -> _Ends:
    problem, flow = setup.problem, setup.flow
    sigma0, sigma1, grad_final, endpoint_error = (
        np.asarray(a) for a in _end_diagnostics(problem, setup.theta0, tr.theta_final,
                                                flow.spectrum_route(problem)))
    kinks = ([np.asarray(a) for a in _kinks(problem, tr.theta_final)] if problem.layerwise
             else None)
    c_min = float(problem.loss.minimum(problem.targets))
    return _Ends(
        ts=np.asarray(tr.ts), cost=np.asarray(tr.cost), valid=np.asarray(tr.valid),
        outputs=np.asarray(tr.outputs), codes=np.asarray(tr.stop_code),
        t_final=np.asarray(tr.t_final), cost_final=np.asarray(tr.cost_final),
        cost0=np.asarray(tr.cost0), sigma0=sigma0, sigma1=sigma1, grad_final=grad_final,
        endpoint_error=endpoint_error, kinks=kinks,
        eps=setup.study.config["analysis"]["epsilon"],
        floor=float(theory.cost_floor(problem.targets, problem.kappa)),
        c_min=0.0 if not math.isfinite(c_min) else c_min, bound=flow.rate_bound(problem),
        resolved=float(resolved_cost(problem, setup.options.resolve(problem, flow))))


def _failure(reason, steps, t_final, t1, target_expected, cost_ratio, floor_ratio):
    """Why a run failed to do what it was asked ('' if it did not). Reaching t1 is a failure
    only where the flow's predicted T_ε promised the cost target before it."""
    if reason in FAILURES:
        return f"{reason} after {steps} steps at s = {t_final:.4g} of {t1:.4g}"
    if reason == "t1_reached" and target_expected:
        return (f"cost target not reached by t1 = {t1:.4g} although T_ε ≤ t1: C/C0 = "
                f"{cost_ratio:.3g} (round-off floor of this dtype: {floor_ratio:.3g})")
    return ""


def _relerr(measured, predicted):
    if not (math.isfinite(measured) and math.isfinite(predicted)) or predicted == 0:
        return math.nan
    return abs(measured - predicted) / abs(predicted)


def _width(study, values):
    ws = hidden_widths(study, values)
    return str(ws[0]) if len(set(ws)) == 1 else "-".join(map(str, ws))


def _last_step_ratio(cost, floor):
    """C_{k+1}/C_k of the last step that ends four decades above the round-off floor (below it
    the ratio measures round-off, not the iteration)."""
    live = cost[1:] > 1e4 * floor
    if not np.any(live):
        return math.nan
    return float((cost[1:] / cost[:-1])[live][-1])


def _per_unit_time(rate, h):
    """The cost's rate per unit s of Euler steps of size h on a mode whose flow rate is `rate`:
    −ln((1 − h·rate/2)²)/h (inf when a step reaches the minimum)."""
    if h is None or not math.isfinite(rate):
        return rate
    ratio = theory.euler_cost_ratio(rate, h)
    return math.inf if ratio == 0 else -math.log(ratio) / h


def _max_over_bound(cost, ts, cost0, rate, resolved):
    """max_s C(s)/(C(0)e^{−rate·s}) over the saves the solve resolves (C above `resolved`)."""
    keep = cost > resolved
    if not math.isfinite(rate) or not np.any(keep):
        return math.nan
    return float(np.max(cost[keep] / (cost0 * np.exp(-rate * ts[keep]))))


def _segment(outputs, outputs0, targets):
    span = float(np.linalg.norm(np.asarray(targets) - np.asarray(outputs0)))
    if outputs.shape[0] == 0 or span == 0:
        return math.nan
    dist, _ = segment_distance(outputs, outputs0, targets)
    return float(np.max(dist)) / span


def _predicted_on(flow, problem, theta0, ts, h):
    """The predicted curve on a save grid that may hold +inf after the stop (kept as +inf)."""
    out = np.full(ts.shape, np.inf)
    ok = np.isfinite(ts)
    out[ok] = flow.predicted_cost(problem, theta0, ts[ok], step_size=h)
    return out


def _identity(setup: CellSetup) -> dict:
    """The columns that say which run this is (the same for every seed but `seed`)."""
    study, v, problem, data = setup.study, setup.cell.values, setup.problem, setup.dataset
    h = setup.step_size
    return {"cell": setup.cell.id, "flow": v["flow"],
            "kind": study.config["flows"][v["flow"]]["kind"],
            "method": study.config["integrator"]["method"], "width": _width(study, v),
            "depth": len(hidden_widths(study, v)), "activation": v["activation"],
            "N": data.num_points, "M": data.in_size, "Q": data.out_size,
            "K": problem.num_params, "QN": problem.num_outputs, "kappa": problem.kappa,
            "step_size": math.nan if h is None else h}


def _groups(setup: CellSetup, tr: Trajectory, e: _Ends, i: int, lsq, min_sigma) -> dict:
    """Seed i's optional record groups: extras (test loss, PDE error), least squares,
    equilibrium and path lengths, where the config asks for them."""
    analysis = setup.study.config["analysis"]
    groups = setup.extras.records(tr, i, e.eps)
    if lsq is not None:
        L = lsq[i]
        groups["lsq"] = LeastSquaresRecord(
            cost=L["lsq_cost"], nfev=L["lsq_nfev"], status=L["lsq_status"],
            cost_ratio=float(e.cost_final[i]) / L["lsq_cost"] if L["lsq_cost"] > 0 else math.nan,
            wall_time=L["lsq_wall_time"])
    if analysis["equilibrium"]:
        eq = analyse_equilibrium(setup.problem, tr.theta_final[i])
        groups["equilibrium"] = EquilibriumRecord(
            rank=eq.rank, rank_deficient=eq.rank_deficient,
            stationarity=eq.stationarity_relative, hessian_zero_eigs=eq.hessian_null_count,
            expected_null_dim=eq.expected_null_dim)
    if analysis["path_lengths"]:
        L = path_lengths(tr.seed(i))
        groups["path"] = PathRecord(
            g_length=L["g_length"], g_length_error=L["g_length_error"],
            output_chord=L["output_chord"], g_ratio=L["g_ratio"],
            euclidean_length=L["euclidean_length"], parameter_chord=L["parameter_chord"],
            length_bound=L["output_distance"] / min_sigma if min_sigma > 0 else math.inf,
            max_vertical_fraction=L["max_vertical_fraction"])
    return groups


def _decay(setup: CellSetup, e: _Ends, i: int, ok) -> dict:
    """Seed i's cost curve (the saves and the end point) against its flow's predictions: fitted
    rates, the predicted ones at θ0 and at the end, T_ε, and the bound and theory errors."""
    problem, flow, h = setup.problem, setup.flow, setup.step_size
    analysis, euler = setup.study.config["analysis"], setup.euler
    t_i = np.append(e.ts[i][ok], e.t_final[i])
    c_i = np.append(e.cost[i][ok], e.cost_final[i])
    order = np.argsort(t_i, kind="stable")
    t_i, c_i = t_i[order], c_i[order]
    excess = c_i - e.c_min
    rate = theory.fit_decay_rate(t_i, excess, floor=e.floor)
    tail = t_i >= (1 - analysis["tail_fraction"]) * t_i[-1]
    tail_rate = theory.fit_decay_rate(t_i[tail], excess[tail], floor=e.floor)
    flow_rate_end = flow.rate_at(problem, e.sigma1[i])
    p0 = _per_unit_time(flow.rate_at(problem, e.sigma0[i]), h)
    p1 = _per_unit_time(flow_rate_end, h)
    predicted = flow.predicted_cost(problem, setup.theta0[i], t_i, step_size=h)
    reason = STOP_REASONS[int(e.codes[i])]
    if reason == "cost_target" and setup.options.cost_target_relative == e.eps:
        t_meas = float(e.t_final[i])
    else:
        t_meas = theory.first_crossing(t_i, excess, e.eps * float(e.cost0[i] - e.c_min))
    return {
        "measured_rate": rate, "measured_tail_rate": tail_rate,
        "predicted_rate_start": p0, "predicted_rate_end": p1, "rate_bound": e.bound,
        "predicted_tail_rate": theory.fit_decay_rate(t_i[tail], predicted[tail] - e.c_min,
                                                     floor=e.floor),
        "relative_error": _relerr(rate, p0), "tail_relative_error": _relerr(tail_rate, p1),
        "max_cost_over_bound": _max_over_bound(c_i, t_i, float(e.cost0[i]), e.bound,
                                               e.resolved),
        "theory_log_error": theory.max_log_error(c_i, predicted, e.floor),
        "epsilon": e.eps, "T_eps_predicted": theory.decay_time(e.eps, p0),
        "T_eps_measured": t_meas,
        "last_step_ratio": _last_step_ratio(e.cost[i][ok], e.floor) if euler else math.nan,
        "predicted_step_ratio": theory.euler_cost_ratio(flow_rate_end, h) if euler else math.nan}


def _ending(setup: CellSetup, tr: Trajectory, e: _Ends, i: int, rate_start: float) -> dict:
    """How seed i's run ended: the stop reason, whether that is a failure (given the predicted
    rate at θ0, `rate_start`), the step counts, times and costs."""
    opts, euler = setup.options, setup.euler
    reason = STOP_REASONS[int(e.codes[i])]
    stop_target = opts.cost_target_relative
    steps = int(np.asarray(tr.num_steps)[i])
    return {
        "stop_reason": reason, "reached_target": reason == "cost_target",
        "failure": _failure(
            reason, steps, float(e.t_final[i]), float(opts.t1) if not euler else math.inf,
            stop_target is not None and not euler
            and theory.decay_time(stop_target, rate_start) <= float(opts.t1),
            float(e.cost_final[i] / e.cost0[i]), e.floor / float(e.cost0[i])),
        "steps": steps, "rejected_steps": int(np.asarray(tr.num_rejected_steps)[i]),
        "field_evals": int(np.asarray(tr.num_field_evals)[i]),
        "wall_time": float(tr.wall_time), "compile_time": float(tr.compile_time),
        "t_final": float(e.t_final[i]), "C0": float(e.cost0[i]),
        "C_final": float(e.cost_final[i]),
        "C_min": e.c_min, "grad_norm_final": float(e.grad_final[i]),
        "endpoint_error": float(e.endpoint_error[i])}


def _geometry(setup: CellSetup, tr: Trajectory, e: _Ends, i: int, ok) -> dict:
    """Seed i's output path and the rank of D along it: distance from the straight segment,
    drift of the loss's invariants, σ_min and rank, dead units and the nearest kink."""
    problem = setup.problem
    x_i = e.outputs[i][ok]
    conserved = np.asarray(problem.loss.conserved(jnp.asarray(x_i)))
    s_run = np.concatenate([np.asarray(tr.sigma_min)[i][ok], [e.sigma0[i][0], e.sigma1[i][0]]])
    s_run = s_run[np.isfinite(s_run)]
    min_sigma = float(np.min(s_run)) if s_run.size else math.nan
    r_ok = np.asarray(tr.rank)[i][ok]
    kinks = e.kinks
    return {
        "segment_distance": _segment(x_i, tr.outputs0[i], problem.targets),
        "invariant_drift": (float(np.max(np.abs(conserved - conserved[:1])))
                            if conserved.size else math.nan),
        "min_sigma_min": min_sigma, "min_lambda_min": min_sigma**2,
        "rank_start": float(r_ok[0]) if r_ok.size and np.isfinite(r_ok[0]) else math.nan,
        "min_rank": (float(np.nanmin(r_ok)) if r_ok.size and np.any(np.isfinite(r_ok))
                     else math.nan),
        "full_rank": min(problem.num_params, problem.num_outputs),
        "dead_units": int(kinks[0][i]) if kinks else -1,
        "nearest_kink": (f"point {int(kinks[1][i])}, unit {int(kinks[2][i])}: z = "
                         f"{float(kinks[3][i]):.2e}" if kinks and problem.piecewise_smooth
                         else "")}


def _arrays(setup: CellSetup, tr: Trajectory, e: _Ends, lsq) -> dict:
    """The cell's arrays for the store: the saved curves, end-point figures and the flow's
    predicted cost on the save grid (for the decay figure)."""
    problem, h = setup.problem, setup.step_size
    arrays = {
        "ts": e.ts, "valid": e.valid, "cost": e.cost, "theta_norm": np.asarray(tr.theta_norm),
        "sigma_min": np.asarray(tr.sigma_min), "sigma_max": np.asarray(tr.sigma_max),
        "rank": np.asarray(tr.rank), "cost0": e.cost0, "t_final": e.t_final,
        "cost_final": e.cost_final, "stop_code": e.codes, "num_steps": np.asarray(tr.num_steps),
        "num_field_evals": np.asarray(tr.num_field_evals), "sigma_min_start": e.sigma0[:, 0],
        "sigma_min_end": e.sigma1[:, 0], "grad_norm_final": e.grad_final,
        "kappa": np.asarray(problem.kappa), "targets": np.asarray(problem.targets),
        "cost_min": np.asarray(e.c_min),
        "predicted_cost": np.stack([_predicted_on(setup.flow, problem, setup.theta0[i], e.ts[i], h)
                                    for i in range(setup.cell.values["seeds"])]),
    }
    if setup.study.config["output"]["save_outputs"]:
        arrays["outputs"] = e.outputs
        arrays["outputs0"] = np.asarray(tr.outputs0)
    if lsq is not None:
        arrays["lsq_theta"] = np.stack([L["lsq_theta"] for L in lsq])
        arrays["theta_final"] = np.asarray(tr.theta_final)
    arrays.update(setup.extras.arrays(tr))
    return arrays


def measure(setup: CellSetup, tr: Trajectory, lsq=None) -> tuple[dict, list[RunRecord]]:
    """The cell's arrays and one `RunRecord` per seed of its trajectory `tr` (batched over the
    seeds); `lsq`: scipy's least-squares fits from the same starts (`flowlab.baselines`), or
    None."""
    e = _ends(setup, tr)
    identity = _identity(setup)
    records = []
    for i in range(setup.cell.values["seeds"]):
        ok = e.valid[i] & np.isfinite(e.cost[i])
        decay = _decay(setup, e, i, ok)
        geometry = _geometry(setup, tr, e, i, ok)
        records.append(RunRecord(
            **identity, seed=i,
            **_groups(setup, tr, e, i, lsq, geometry["min_sigma_min"]),
            **_ending(setup, tr, e, i, decay["predicted_rate_start"]), **decay, **geometry))
    return _arrays(setup, tr, e, lsq), records
