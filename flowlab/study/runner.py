r"""Run a Study: expand the grid into cells and run each as build → solve → measure: its
problem, flow and options built (`build_cell`), its seeds solved as one vmapped batch
(`solve_cell`), every run measured against what its flow predicts (`study.measure`), and a typed
`RunRecord` per run stored in a resumable folder.

Optional analyses, asked for in the config's [analysis] table, add a group to each record:
`equilibrium = true` (rank, stationarity and Hessian null space at the end point, MATH §4) and
`path_lengths = true` (sub-Riemannian lengths, MATH §3.5); `[compare] least_squares = true`
adds scipy's least_squares from the same start.
"""

import math
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..baselines import scipy_least_squares
from ..geometry import SUBRIEMANNIAN_EXTRAS
from ..integrate import Trajectory, euler_steps, simulate
from .build import make_dataset, make_flow, make_models, make_options, make_problem
from .config import Study
from .extras import ExtraAnalyses
from .grid import Cell, expand_grid
from .measure import CellSetup, measure
from .memory import is_out_of_memory
from .records import RunRecord
from .store import RunStore, now

__all__ = ["build_cell", "run_cell", "run_study", "solve_cell"]


def _least_squares(problem, theta0, max_nfev):
    """scipy.optimize.least_squares (trf, exact Jacobian, tolerances 1e-15) from each start
    (`flowlab.baselines.scipy_least_squares`), as the records' lsq fields; its wall time
    includes the first start's compile, as the flow's does."""
    out = []
    for th in np.asarray(theta0):
        r = scipy_least_squares(problem, th, method="trf", ftol=1e-15, xtol=1e-15, gtol=1e-15,
                                max_nfev=max_nfev)
        out.append({"lsq_cost": r.info["cost"], "lsq_nfev": r.info["nfev"],
                    "lsq_status": r.info["status"], "lsq_theta": r.thetas[-1],
                    "lsq_wall_time": r.compile_seconds + float(r.seconds[-1])})
    return out


def build_cell(study: Study, cell: Cell) -> CellSetup:
    """The cell's dataset, problem, start points (one per seed), flow and integrator options,
    with the extras its analyses save along the run."""
    v = cell.values
    dataset = make_dataset(study, v)
    models = make_models(study, v, dataset)
    problem = make_problem(study, models[0], dataset)
    theta0 = jnp.stack([problem.flatten(m) for m in models])
    flow = make_flow(study, v["flow"])
    opts = make_options(study, v, problem, flow)
    if study.config["analysis"]["path_lengths"]:
        opts = opts.build(opts, extras=SUBRIEMANNIAN_EXTRAS, save_theta=True)
    more = ExtraAnalyses(study, v, problem, models[0])  # test loss, PDE error (study.extras)
    opts = more.options(opts)
    return CellSetup(study=study, cell=cell, dataset=dataset, problem=problem, theta0=theta0,
                     flow=flow, options=opts, extras=more)


def solve_cell(setup: CellSetup) -> Trajectory:
    """All seeds of the cell in one batched solve: the ODE (`simulate`) or Euler steps."""
    solve = euler_steps if setup.euler else simulate
    return solve(setup.problem, setup.flow, setup.theta0, options=setup.options)


def run_cell(study: Study, cell: Cell) -> tuple[dict, list[RunRecord]]:
    """Build, solve and measure one cell (all seeds in one vmapped call); returns (arrays, one
    record per seed)."""
    setup = build_cell(study, cell)
    tr = solve_cell(setup)
    compare = study.config["compare"]
    lsq = (_least_squares(setup.problem, setup.theta0, compare["least_squares_max_nfev"])
           if compare["least_squares"] else None)
    return measure(setup, tr, lsq)


def _timed_cell(study, cell):
    start = time.perf_counter()
    arrays, records = run_cell(study, cell)
    return arrays, records, time.perf_counter() - start


# XLA's runtime errors (an out-of-memory among them) fail the cell, named, not the sweep
_CELL_ERRORS = (ValueError, TypeError, FloatingPointError,
                getattr(jax.errors, "JaxRuntimeError", RuntimeError))


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
            message = f"{type(error).__name__}: {error}"
            if is_out_of_memory(error):
                message = ("out of memory inside XLA (the cell did not fit: fewer seeds at once, "
                           "a smaller model or N, the matrix-free route or more devices): "
                           + " ".join(message.split())[:300])
            store.mark(cell.id, "failed", error=message)
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
