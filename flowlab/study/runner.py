r"""Run a Study: expand the grid into cells, solve each cell's seeds as one vmapped batch,
measure every run against what its flow predicts (`AbstractFlow.predicted_rate`,
`predicted_cost`, `rate_bound`) and store a typed `RunRecord` per run in a resumable folder.

Optional analyses, asked for in the config's [analysis] table, add a group to each record:
`equilibrium = true` (rank, stationarity and Hessian null space at the end point, MATH §4) and
`path_lengths = true` (sub-Riemannian lengths, MATH §3.5); `[compare] least_squares = true`
adds scipy's least_squares from the same start.
"""

import math
import sys
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import theory
from ..equilibria import analyse_equilibrium
from ..geometry import SUBRIEMANNIAN_EXTRAS, path_lengths
from ..integrate import FAILURES, STOP_REASONS, euler_steps, resolved_cost, simulate
from ..interpolation import segment_distance
from ..linalg import singular_values
from .build import hidden_widths, make_dataset, make_flow, make_models, make_options, make_problem
from .config import Study
from .extras import ExtraAnalyses
from .grid import Cell, expand_grid
from .records import EquilibriumRecord, LeastSquaresRecord, PathRecord, RunRecord
from .store import RunStore, now

__all__ = ["run_cell", "run_study"]


@eqx.filter_jit
def _end_diagnostics(problem, theta0, theta_final, route):
    sv = lambda ths: jax.lax.map(lambda th: singular_values(problem, th, route=route), ths)  # noqa: E731  (no batched LAPACK: it hangs on jaxlib 0.10.2)
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


def _failure(reason, steps, t_final, t1, target_expected, cost_ratio, floor_ratio):
    """Why a run failed to do what it was asked ('' if it did not). Reaching t1 is a failure
    only where the flow's predicted T_ε promised the cost target before it."""
    if reason in FAILURES:
        return f"{reason} after {steps} steps at s = {t_final:.4g} of {t1:.4g}"
    if reason == "t1_reached" and target_expected:
        return (f"cost target not reached by t1 = {t1:.4g} although T_ε ≤ t1: C/C0 = "
                f"{cost_ratio:.3g} (round-off floor of this dtype: {floor_ratio:.3g})")
    return ""


@eqx.filter_jit
def _residual(problem, theta):
    return problem.residual(theta)


@eqx.filter_jit
def _jacobian(problem, theta):
    return problem.jacobian(theta)


def _least_squares(problem, theta0, max_nfev):
    """scipy.optimize.least_squares (trf, exact Jacobian) from each start."""
    from scipy.optimize import least_squares

    res_fn = lambda t: _residual(problem, jnp.asarray(t))
    jac_fn = lambda t: _jacobian(problem, jnp.asarray(t))
    out = []
    for th in np.asarray(theta0):
        start = time.perf_counter()
        r = least_squares(lambda t: np.asarray(res_fn(t)), th,
                          jac=lambda t: np.asarray(jac_fn(t)), method="trf",
                          ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=max_nfev)
        out.append({"lsq_cost": 0.5 * problem.kappa * float(r.fun @ r.fun),
                    "lsq_nfev": int(r.nfev), "lsq_status": int(r.status),
                    "lsq_theta": r.x, "lsq_wall_time": time.perf_counter() - start})
    return out


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


def run_cell(study: Study, cell: Cell) -> tuple[dict, list[RunRecord]]:
    """Solve one cell (all seeds in one vmapped call); returns (arrays, one record per seed)."""
    c, v = study.config, cell.values
    analysis = c["analysis"]
    dataset = make_dataset(study, v)
    models = make_models(study, v, dataset)
    problem = make_problem(study, models[0], dataset)
    theta0 = jnp.stack([problem.flatten(m) for m in models])
    flow = make_flow(study, v["flow"])
    kappa = problem.kappa
    euler = c["integrator"]["method"] == "euler"
    opts = make_options(study, v, kappa)
    if analysis["path_lengths"]:
        opts = opts.build(opts, extras=SUBRIEMANNIAN_EXTRAS, save_theta=True)
    more = ExtraAnalyses(study, v, problem, models[0])  # test loss, PDE error (study.extras)
    opts = more.options(opts)
    if euler:
        tr = euler_steps(problem, flow, theta0, options=opts)
        h = float(opts.resolve(problem, flow).step_size)
    else:
        tr = simulate(problem, flow, theta0, options=opts)
        h = None
    sigma0, sigma1, grad_final, endpoint_error = (
        np.asarray(a) for a in _end_diagnostics(problem, theta0, tr.theta_final,
                                                flow.spectrum_route(problem)))
    kinks = [np.asarray(a) for a in _kinks(problem, tr.theta_final)] if (
        problem.layerwise) else None
    lsq = (_least_squares(problem, theta0, c["compare"]["least_squares_max_nfev"])
           if c["compare"]["least_squares"] else None)

    eps = analysis["epsilon"]
    stop_target = opts.cost_target_relative
    floor = float(theory.cost_floor(problem.targets, kappa))
    c_min = float(problem.loss.minimum(problem.targets))
    c_min = 0.0 if not math.isfinite(c_min) else c_min
    bound = flow.rate_bound(problem)
    resolved = float(resolved_cost(problem, opts.resolve(problem, flow)))
    ts, cost, valid = np.asarray(tr.ts), np.asarray(tr.cost), np.asarray(tr.valid)
    outputs = np.asarray(tr.outputs)
    codes = np.asarray(tr.stop_code)
    t_final, cost_final, cost0 = (np.asarray(a) for a in (tr.t_final, tr.cost_final, tr.cost0))
    records = []
    for i in range(v["seeds"]):
        ok = valid[i] & np.isfinite(cost[i])
        t_i = np.append(ts[i][ok], t_final[i])
        c_i = np.append(cost[i][ok], cost_final[i])
        order = np.argsort(t_i, kind="stable")
        t_i, c_i = t_i[order], c_i[order]
        excess = c_i - c_min
        rate = theory.fit_decay_rate(t_i, excess, floor=floor)
        tail = t_i >= (1 - analysis["tail_fraction"]) * t_i[-1]
        tail_rate = theory.fit_decay_rate(t_i[tail], excess[tail], floor=floor)
        flow_rate_end = flow.rate_at(problem, sigma1[i])
        p0 = _per_unit_time(flow.rate_at(problem, sigma0[i]), h)
        p1 = _per_unit_time(flow_rate_end, h)
        predicted = flow.predicted_cost(problem, theta0[i], t_i, step_size=h)
        reason = STOP_REASONS[int(codes[i])]
        if reason == "cost_target" and stop_target == eps:
            t_meas = float(t_final[i])
        else:
            t_meas = theory.first_crossing(t_i, excess, eps * float(cost0[i] - c_min))
        x_i = outputs[i][ok]
        conserved = np.asarray(problem.loss.conserved(jnp.asarray(x_i)))
        s_run = np.concatenate([np.asarray(tr.sigma_min)[i][ok], [sigma0[i][0], sigma1[i][0]]])
        s_run = s_run[np.isfinite(s_run)]
        min_sigma = float(np.min(s_run)) if s_run.size else math.nan
        r_ok = np.asarray(tr.rank)[i][ok]
        base = {"cell": cell.id, "seed": i, "flow": v["flow"],
                "kind": c["flows"][v["flow"]]["kind"], "method": c["integrator"]["method"],
                "width": _width(study, v), "depth": len(hidden_widths(study, v)),
                "activation": v["activation"], "N": dataset.num_points, "M": dataset.in_size,
                "Q": dataset.out_size, "K": problem.num_params, "QN": problem.num_outputs,
                "kappa": kappa, "step_size": math.nan if h is None else h}
        extra = more.records(tr, i, eps)
        if lsq is not None:
            L = lsq[i]
            extra["lsq"] = LeastSquaresRecord(
                cost=L["lsq_cost"], nfev=L["lsq_nfev"], status=L["lsq_status"],
                cost_ratio=float(cost_final[i]) / L["lsq_cost"] if L["lsq_cost"] > 0 else math.nan,
                wall_time=L["lsq_wall_time"])
        if analysis["equilibrium"]:
            eq = analyse_equilibrium(problem, tr.theta_final[i])
            extra["equilibrium"] = EquilibriumRecord(
                rank=eq.rank, rank_deficient=eq.rank_deficient,
                stationarity=eq.stationarity_relative, hessian_zero_eigs=eq.hessian_null_count,
                expected_null_dim=eq.expected_null_dim)
        if analysis["path_lengths"]:
            L = path_lengths(tr.seed(i))
            extra["path"] = PathRecord(
                g_length=L["g_length"], g_length_error=L["g_length_error"],
                output_chord=L["output_chord"], g_ratio=L["g_ratio"],
                euclidean_length=L["euclidean_length"], parameter_chord=L["parameter_chord"],
                length_bound=L["output_distance"] / min_sigma if min_sigma > 0 else math.inf,
                max_vertical_fraction=L["max_vertical_fraction"])
        records.append(RunRecord(
            **base, **extra,
            stop_reason=reason, reached_target=reason == "cost_target",
            failure=_failure(
                reason, int(np.asarray(tr.num_steps)[i]), float(t_final[i]),
                float(opts.t1) if not euler else math.inf,
                stop_target is not None and not euler
                and theory.decay_time(stop_target, p0) <= float(opts.t1),
                float(cost_final[i] / cost0[i]), floor / float(cost0[i])),
            steps=int(np.asarray(tr.num_steps)[i]),
            rejected_steps=int(np.asarray(tr.num_rejected_steps)[i]),
            field_evals=int(np.asarray(tr.num_field_evals)[i]),
            wall_time=float(tr.wall_time), compile_time=float(tr.compile_time),
            t_final=float(t_final[i]), C0=float(cost0[i]), C_final=float(cost_final[i]),
            C_min=c_min, grad_norm_final=float(grad_final[i]),
            measured_rate=rate, measured_tail_rate=tail_rate,
            predicted_rate_start=p0, predicted_rate_end=p1, rate_bound=bound,
            predicted_tail_rate=theory.fit_decay_rate(t_i[tail], predicted[tail] - c_min,
                                                      floor=floor),
            relative_error=_relerr(rate, p0), tail_relative_error=_relerr(tail_rate, p1),
            max_cost_over_bound=_max_over_bound(c_i, t_i, float(cost0[i]), bound, resolved),
            theory_log_error=theory.max_log_error(c_i, predicted, floor),
            epsilon=eps,
            T_eps_predicted=theory.decay_time(eps, p0),
            T_eps_measured=t_meas,
            segment_distance=_segment(x_i, tr.outputs0[i], problem.targets),
            endpoint_error=float(endpoint_error[i]),
            invariant_drift=float(np.max(np.abs(conserved - conserved[:1])))
            if conserved.size else math.nan,
            last_step_ratio=_last_step_ratio(cost[i][ok], floor) if euler else math.nan,
            predicted_step_ratio=theory.euler_cost_ratio(flow_rate_end, h) if euler else math.nan,
            min_sigma_min=min_sigma, min_lambda_min=min_sigma**2,
            rank_start=float(r_ok[0]) if r_ok.size and np.isfinite(r_ok[0]) else math.nan,
            min_rank=float(np.nanmin(r_ok)) if r_ok.size and np.any(np.isfinite(r_ok)) else math.nan,
            full_rank=min(problem.num_params, problem.num_outputs),
            dead_units=int(kinks[0][i]) if kinks else -1,
            nearest_kink=(f"point {int(kinks[1][i])}, unit {int(kinks[2][i])}: z = "
                          f"{float(kinks[3][i]):.2e}" if kinks and problem.piecewise_smooth else ""),
        ))

    arrays = {
        "ts": ts, "valid": valid, "cost": cost, "theta_norm": np.asarray(tr.theta_norm),
        "sigma_min": np.asarray(tr.sigma_min), "sigma_max": np.asarray(tr.sigma_max),
        "rank": np.asarray(tr.rank), "cost0": cost0, "t_final": t_final,
        "cost_final": cost_final, "stop_code": codes, "num_steps": np.asarray(tr.num_steps),
        "num_field_evals": np.asarray(tr.num_field_evals), "sigma_min_start": sigma0[:, 0],
        "sigma_min_end": sigma1[:, 0], "grad_norm_final": grad_final,
        "kappa": np.asarray(kappa), "targets": np.asarray(problem.targets),
        "cost_min": np.asarray(c_min),
        # the flow's predicted cost curve on the save grid, for the decay figure
        "predicted_cost": np.stack([_predicted_on(flow, problem, theta0[i], ts[i], h)
                                    for i in range(v["seeds"])]),
    }
    if c["output"]["save_outputs"]:
        arrays["outputs"] = outputs
        arrays["outputs0"] = np.asarray(tr.outputs0)
    if lsq is not None:
        arrays["lsq_theta"] = np.stack([L["lsq_theta"] for L in lsq])
        arrays["theta_final"] = np.asarray(tr.theta_final)
    arrays.update(more.arrays(tr))
    return arrays, records


def _predicted_on(flow, problem, theta0, ts, h):
    """The predicted curve on a save grid that may hold +inf after the stop (kept as +inf)."""
    out = np.full(ts.shape, np.inf)
    ok = np.isfinite(ts)
    out[ok] = flow.predicted_cost(problem, theta0, ts[ok], step_size=h)
    return out


def _timed_cell(study, cell):
    start = time.perf_counter()
    arrays, records = run_cell(study, cell)
    return arrays, records, time.perf_counter() - start


_CELL_ERRORS = (ValueError, TypeError, FloatingPointError)


def run_study(
    study: Study,
    out_dir: str | None = None,
    *,
    progress: bool = True,
    jobs: int = 1,
    after_cell: Callable[[Cell, list[RunRecord]], None] | None = None,
) -> RunStore:
    """Run every unfinished cell of `study` into `out_dir` (default study's output.dir).

    Finished cells of an earlier run of the same config are skipped, once their files match
    the checksums in the manifest; damaged or missing ones are reported (on stderr) and
    recomputed. A folder holding another config, or in use by another run (it holds the
    folder's lock until the end), raises StoreError; a data file changed since the config was
    read raises ConfigError. A failing cell is recorded as failed and the sweep goes on; the
    returned store's manifest says which. `jobs` > 1 runs that many cells at once in threads
    (XLA compiles on one core: two cores compile two cells at once); results are identical,
    only the store is written from this thread. `after_cell` is called after each stored
    cell."""
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cells = expand_grid(study)
    study.check_data_file()
    store = RunStore.open(out_dir or study.out_dir, study, cells)
    for note in store.notes:
        print(f"flowlab: warning: {note}", file=sys.stderr)
    todo = [cell for cell in cells if not store.is_done(cell.id)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", dynamic_ncols=True)
    failed = []
    status = "interrupted"

    def finish(cell, result, error):
        if error is not None:
            failed.append(cell.id)
            store.mark(cell.id, "failed", error=f"{type(error).__name__}: {error}")
            if bar is not None:
                bar.write(f"cell {cell.id} failed: {error}")
                bar.update()
            return
        arrays, records, wall = result
        store.save_cell(cell.id, arrays, [r.as_row() for r in records], wall_time=wall)
        if bar is not None:
            s = max(r.t_final for r in records)
            ratio = max((r.C_final / r.C0 for r in records if r.C0 > 0), default=math.nan)
            bar.set_description(cell.id)
            bar.set_postfix_str(f"s={s:.3g} C/C0={ratio:.2e} {wall:.1f}s")
            bar.update()
        if after_cell is not None:
            after_cell(cell, records)

    pool = None
    try:
        if jobs == 1 or len(todo) < 2:
            for cell in todo:
                if bar is not None:
                    bar.set_description(cell.id)
                store.mark(cell.id, "running", started=now(), values=cell.values)
                try:
                    result, error = _timed_cell(study, cell), None
                except _CELL_ERRORS as e:
                    result, error = None, e
                finish(cell, result, error)
        else:
            from concurrent.futures import ThreadPoolExecutor, as_completed

            pool = ThreadPoolExecutor(int(jobs))
            futures = {}
            for cell in todo:
                store.mark(cell.id, "running", started=now(), values=cell.values)
                futures[pool.submit(_timed_cell, study, cell)] = cell
            for fut in as_completed(futures):
                error = fut.exception()
                if error is not None and not isinstance(error, _CELL_ERRORS):
                    raise error
                finish(futures[fut], None if error else fut.result(), error)
        status = "failed" if failed else "complete"
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
        store.close(status)
    return store
