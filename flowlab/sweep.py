r"""Run a Study: expand the grid into cells, solve each cell's seeds as one vmapped batch,
measure against the theory and store everything in a resumable run folder.

Per seed the summary reports the fitted decay rate of C (Theil–Sen above the float floor)
against the predicted tail rate: 2κ for the adapted flow at full row rank, 2κ·λ_min(Θ) for
the standard flow, 2κ·μ/(μ + λ) for the damped flow (μ = λ_min(Θ)), evaluated at the start
and at the end of the run; the predicted T_ε = ln(1/ε)/rate_start against the measured first
time with C ≤ ε·C(0). A flow class may provide ``tail_rate(kappa, lambda_min)`` to join in.
"""

import dataclasses
import itertools
import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from . import theory
from .config import Study
from .data import GENERATORS, Dataset, load_csv, load_npz
from .discrete import euler_steps
from .flows import FLOWS, AdaptedFlow, DampedFlow, GradientFlow
from .linalg import singular_values
from .nets import MLP
from .problem import LeastSquaresProblem
from .simulate import STOP_REASONS, simulate
from .store import RunStore

__all__ = ["Cell", "expand_grid", "predicted_tail_rate", "run_cell", "run_study"]

#: grid axes in nesting order (the flow innermost: flows of one architecture run side by side).
_AXES = ("num_points", "in_size", "out_size", "depth", "width", "activation", "seeds", "flow")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: `values` holds every axis, `id` names the swept ones."""

    id: str
    values: dict


def _base_values(study: Study) -> dict:
    c = study.config
    seeds = c["sweep"]["seeds"]
    return {
        "num_points": c["data"]["num_points"],
        "in_size": c["data"]["in_size"],
        "out_size": c["data"]["out_size"],
        "depth": c["model"]["depth"],
        "width": c["model"]["width"],
        "activation": c["model"]["activation"],
        "seeds": seeds if isinstance(seeds, int) else seeds[0],
    }


def expand_grid(study: Study) -> list[Cell]:
    """The cells of the sweep, in a fixed order."""
    sweep = study.config["sweep"]
    axes = {}
    for a in _AXES:
        v = sweep.get(a)
        if a == "seeds":
            v = v if isinstance(v, list) else None
        if v is not None:
            axes[a] = list(dict.fromkeys(v))
    base = _base_values(study)
    cells = []
    for combo in itertools.product(*axes.values()):
        values = {**base, **dict(zip(axes, combo))}
        parts = [f"{a}-{values[a]}" for a in axes if a != "flow" and len(axes[a]) > 1]
        parts.append(f"flow-{values['flow']}")
        cells.append(Cell("__".join(parts), values))
    return cells


# --- building the pieces ------------------------------------------------------------------


def make_dataset(study: Study, values: dict) -> Dataset:
    d = study.config["data"]
    if d["file"] is not None:
        if d["file"].endswith(".npz"):
            ds = load_npz(d["file"], d["inputs_key"], d["targets_key"])
        else:
            ds = load_csv(d["file"], d["num_targets"])
        return ds
    gen = GENERATORS[d["generator"]]
    key = jr.key(d["seed"])
    kwargs = dict(d["params"])
    if "num_classes" in _params(gen):
        kwargs["num_classes"] = values["out_size"]
    else:
        kwargs["out_size"] = values["out_size"]
    if "hidden" in kwargs:
        kwargs["hidden"] = tuple(kwargs["hidden"])
    return gen(key, values["num_points"], values["in_size"], **kwargs)


def _params(fn):
    import inspect

    return inspect.signature(fn).parameters


def hidden_widths(study: Study, values: dict) -> tuple[int, ...]:
    m = study.config["model"]
    if m["widths"] is not None:
        return tuple(m["widths"])
    return (values["width"],) * values["depth"]


def make_models(study: Study, values: dict, dataset: Dataset):
    m = study.config["model"]
    base = jr.key(study.config["sweep"]["seed"])
    hidden = hidden_widths(study, values)
    return [
        MLP(dataset.in_size, dataset.out_size, hidden, values["activation"],
            use_bias=m["use_bias"], parametrization=m["parametrization"],
            weight_std=m["weight_std"], bias_std=m["bias_std"], key=jr.fold_in(base, i))
        for i in range(values["seeds"])
    ]


def make_problem(study: Study, model, dataset: Dataset) -> LeastSquaresProblem:
    loss = study.config["loss"]
    if loss["kind"] == "squared":
        kappa = None if loss["kappa"] == "1/N" else float(loss["kappa"])
        return LeastSquaresProblem(model, dataset, kappa=kappa)
    from .config import _losses

    cls = _losses()[loss["kind"]]
    return LeastSquaresProblem(model, dataset, loss=cls(**loss["params"]))


def make_flow(study: Study, name: str):
    spec = study.config["flows"][name]
    return FLOWS[spec["kind"]](**spec["params"])


def predicted_tail_rate(flow, problem, lambda_min: float) -> float:
    """Continuous-time decay rate of C predicted in the slowest eigendirection of Θ."""
    kappa, lam = problem.kappa, float(lambda_min)
    hook = getattr(flow, "tail_rate", None)
    if callable(hook):
        return float(hook(kappa, lam))
    full_row_rank = problem.num_params >= problem.num_outputs
    spectral = getattr(flow, "spectral_filter", None)
    if spectral is not None and not isinstance(flow, (AdaptedFlow, GradientFlow, DampedFlow)):
        # θ' = −V f(Σ) Uᵀ∇C: the output mode along σ decays at κ·σ f(σ); slowest at σ_min
        if not full_row_rank or lam <= 0:
            return math.nan
        sigma = math.sqrt(lam)
        return 2 * kappa * sigma * float(spectral(jnp.asarray([sigma]))[0])
    if isinstance(flow, AdaptedFlow):
        return 2 * kappa if problem.num_params >= problem.num_outputs else math.nan
    if isinstance(flow, DampedFlow):
        shift = flow.damping + flow.damping_lambda_min * lam
        return 2 * kappa * lam / (lam + shift)
    if isinstance(flow, GradientFlow):
        return 2 * kappa * lam
    return math.nan


def _euler_rate(rate: float, h: float) -> float:
    """Per-unit-time cost rate of Euler steps h on a mode decaying at `rate` in the flow:
    each step multiplies C by (1 − h·rate/2)²."""
    if not math.isfinite(rate):
        return rate
    factor = abs(1 - h * rate / 2)
    return math.inf if factor == 0 else -2 * math.log(factor) / h


def _first_crossing(ts, cost, level):
    """First time the saved cost reaches `level`, interpolating log C linearly."""
    below = np.nonzero(cost <= level)[0]
    if below.size == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(ts[0])
    t0, t1, c0, c1 = ts[i - 1], ts[i], math.log(cost[i - 1]), math.log(cost[i])
    return float(t0 + (math.log(level) - c0) * (t1 - t0) / (c1 - c0))


@eqx.filter_jit
def _end_diagnostics(problem, theta0, theta_final):
    sv = jax.vmap(lambda th: singular_values(problem, th))
    grad = jax.vmap(lambda th: jnp.linalg.norm(jax.grad(problem.cost)(th)))
    return sv(theta0)[:, 0], sv(theta_final)[:, 0], grad(theta_final)


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


def run_cell(study: Study, cell: Cell) -> tuple[dict, list[dict]]:
    """Solve one cell (all seeds in one vmapped call); returns (arrays, summary rows)."""
    c, v = study.config, cell.values
    integ, analysis = c["integrator"], c["analysis"]
    dataset = make_dataset(study, v)
    models = make_models(study, v, dataset)
    problem = make_problem(study, models[0], dataset)
    theta0 = jnp.stack([problem.flatten(m) for m in models])
    flow = make_flow(study, v["flow"])
    kappa = problem.kappa
    eps = analysis["epsilon"]
    stop = integ["stop_relative"]
    h = None
    if integ["method"] == "ode":
        t1 = integ["t1"]
        if t1 == "auto":
            if stop is None:
                raise ValueError("integrator.t1 = 'auto' needs integrator.stop_relative")
            t1 = integ["t1_factor"] * math.log(1 / stop) / (2 * kappa)
        max_condition = {"auto": "auto", "off": None}.get(integ["max_condition"], integ["max_condition"])
        tr = simulate(problem, flow, theta0, t1, ts=integ["ts"], num_saves=integ["num_saves"],
                      solver=integ["solver"], rtol=integ["rtol"], atol=integ["atol"],
                      dt0=integ["dt0"], max_steps=integ["max_steps"],
                      cost_target_relative=stop, sigma_min_tol=integ["sigma_min_tol"],
                      max_condition=max_condition, theta_norm_max=integ["theta_norm_max"],
                      diagnostics=integ["diagnostics"], check_finite=integ["check_finite"])
    else:
        h = 1.0 / kappa if integ["step_size"] == "auto" else integ["step_size"]
        t1 = h * integ["num_steps"]
        tr = euler_steps(problem, flow, theta0, step_size=h, num_steps=integ["num_steps"],
                         cost_target_relative=stop, backtracking=integ["backtracking"],
                         diagnostics=integ["diagnostics"])
    smin0, smin1, grad_final = (np.asarray(a) for a in _end_diagnostics(problem, theta0, tr.theta_final))
    lsq = _least_squares(problem, theta0, c["compare"]["least_squares_max_nfev"]) if c["compare"]["least_squares"] else None

    ts, cost, valid = np.asarray(tr.ts), np.asarray(tr.cost), np.asarray(tr.valid)
    sigma_min = np.asarray(tr.sigma_min)
    rank = np.asarray(tr.rank)
    floor = theory.cost_floor(np.asarray(problem.targets), kappa)
    codes = np.asarray(tr.stop_code)
    t_final, cost_final, cost0 = (np.asarray(a) for a in (tr.t_final, tr.cost_final, tr.cost0))
    rows = []
    for i in range(v["seeds"]):
        ok = valid[i] & np.isfinite(cost[i])
        t_i = np.append(ts[i][ok], t_final[i])
        c_i = np.append(cost[i][ok], cost_final[i])
        order = np.argsort(t_i, kind="stable")
        t_i, c_i = t_i[order], c_i[order]
        rate = theory.fit_decay_rate(t_i, c_i, floor=floor)
        tail = t_i >= (1 - analysis["tail_fraction"]) * t_i[-1]
        tail_rate = theory.fit_decay_rate(t_i[tail], c_i[tail], floor=floor)
        lam0, lam1 = float(smin0[i]) ** 2, float(smin1[i]) ** 2
        p0, p1 = predicted_tail_rate(flow, problem, lam0), predicted_tail_rate(flow, problem, lam1)
        if h is not None:
            p0, p1 = _euler_rate(p0, h), _euler_rate(p1, h)
        reason = STOP_REASONS[int(codes[i])]
        if reason == "cost_target" and stop == eps:
            t_meas = float(t_final[i])
        else:
            t_meas = _first_crossing(t_i, c_i, eps * float(cost0[i]))
        t_pred = math.log(1 / eps) / p0 if p0 and math.isfinite(p0) else math.nan
        s_run = np.concatenate([sigma_min[i][ok], [smin0[i], smin1[i]]])
        s_run = s_run[np.isfinite(s_run)]
        min_sigma = float(np.min(s_run)) if s_run.size else math.nan
        r_ok = rank[i][ok]
        row = {
            "cell": cell.id, "seed": i, "flow": v["flow"], "kind": c["flows"][v["flow"]]["kind"],
            "method": integ["method"], "width": _width(study, v), "depth": len(hidden_widths(study, v)),
            "activation": v["activation"], "N": dataset.num_points, "M": dataset.in_size,
            "Q": dataset.out_size, "K": problem.num_params, "QN": problem.num_outputs,
            "kappa": kappa, "C0": float(cost0[i]), "C_final": float(cost_final[i]),
            "t_final": float(t_final[i]),
            "measured_rate": rate, "measured_tail_rate": tail_rate,
            "predicted_rate_start": p0, "predicted_rate_end": p1,
            "relative_error": _relerr(rate, p0), "tail_relative_error": _relerr(tail_rate, p1),
            "epsilon": eps, "T_eps_predicted": t_pred, "T_eps_measured": t_meas,
            "min_sigma_min": min_sigma, "min_lambda_min": min_sigma**2,
            "rank_start": float(r_ok[0]) if r_ok.size and np.isfinite(r_ok[0]) else math.nan,
            "min_rank": float(np.nanmin(r_ok)) if r_ok.size and np.any(np.isfinite(r_ok)) else math.nan,
            "full_rank": min(problem.num_params, problem.num_outputs),
            "grad_norm_final": float(grad_final[i]),
            "stop_reason": reason, "steps": int(np.asarray(tr.num_steps)[i]),
            "field_evals": int(np.asarray(tr.num_field_evals)[i]),
            "wall_time": float(tr.wall_time), "compile_time": float(tr.compile_time),
        }
        if lsq is not None:
            L = lsq[i]
            row.update(lsq_cost=L["lsq_cost"], lsq_nfev=L["lsq_nfev"], lsq_status=L["lsq_status"],
                       cost_ratio_to_lsq=float(cost_final[i]) / L["lsq_cost"] if L["lsq_cost"] > 0 else math.nan,
                       lsq_wall_time=L["lsq_wall_time"])
        rows.append(row)

    arrays = {
        "ts": ts, "valid": valid, "cost": cost, "theta_norm": np.asarray(tr.theta_norm),
        "sigma_min": sigma_min, "sigma_max": np.asarray(tr.sigma_max), "rank": rank,
        "cost0": cost0, "t_final": t_final, "cost_final": cost_final, "stop_code": codes,
        "num_steps": np.asarray(tr.num_steps), "num_field_evals": np.asarray(tr.num_field_evals),
        "sigma_min_start": smin0, "sigma_min_end": smin1, "grad_norm_final": grad_final,
        "kappa": np.asarray(kappa), "targets": np.asarray(problem.targets),
    }
    if c["output"]["save_outputs"]:
        arrays["outputs"] = np.asarray(tr.outputs)
        arrays["outputs0"] = np.asarray(tr.outputs0)
    if lsq is not None:
        arrays["lsq_theta"] = np.stack([L["lsq_theta"] for L in lsq])
        arrays["theta_final"] = np.asarray(tr.theta_final)
    return arrays, rows


def _width(study, v):
    ws = hidden_widths(study, v)
    return ws[0] if len(set(ws)) == 1 else "-".join(map(str, ws))


def _relerr(measured, predicted):
    if not (math.isfinite(measured) and math.isfinite(predicted)) or predicted == 0:
        return math.nan
    return abs(measured - predicted) / abs(predicted)


def _timed_cell(study, cell):
    start = time.perf_counter()
    arrays, rows = run_cell(study, cell)
    return arrays, rows, time.perf_counter() - start


_CELL_ERRORS = (ValueError, TypeError, FloatingPointError)


def run_study(
    study: Study,
    out_dir: str | None = None,
    *,
    progress: bool = True,
    jobs: int = 1,
    after_cell: Callable[[Cell, list[dict]], None] | None = None,
) -> RunStore:
    """Run every unfinished cell of `study` into `out_dir` (default study's output.dir).

    Finished cells of an earlier run of the same config are skipped; a folder holding another
    config raises StoreError. A failing cell is recorded as failed and the sweep goes on; the
    returned store's manifest says which. `jobs` > 1 runs that many cells at once in threads
    (XLA compiles on one core: two cores compile two cells at once); results are identical,
    only the store is written from this thread. `after_cell` is called after each stored
    cell."""
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cells = expand_grid(study)
    store = RunStore.open(out_dir or study.out_dir, study, cells)
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
        arrays, rows, wall = result
        store.save_cell(cell.id, arrays, rows, wall_time=wall)
        if bar is not None:
            s = max(r["t_final"] for r in rows)
            ratio = max((r["C_final"] / r["C0"] for r in rows if r["C0"] > 0), default=math.nan)
            bar.set_description(cell.id)
            bar.set_postfix_str(f"s={s:.3g} C/C0={ratio:.2e} {wall:.1f}s")
            bar.update()
        if after_cell is not None:
            after_cell(cell, rows)

    pool = None
    try:
        if jobs == 1 or len(todo) < 2:
            for cell in todo:
                if bar is not None:
                    bar.set_description(cell.id)
                store.mark(cell.id, "running", started=_now(), values=cell.values)
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
                store.mark(cell.id, "running", started=_now(), values=cell.values)
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


def _now():
    from .store import now

    return now()
