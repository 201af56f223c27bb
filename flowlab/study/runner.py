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
from .store import RunStore

__all__ = ["build_cell", "check_part", "part_cells", "run_cell", "run_study", "solve_cell"]


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


#: seconds between looks at the cells that other runs are computing
POLL_SECONDS = 0.5


def check_part(part) -> tuple[int, int]:
    """`part` as (i, n), checked: integers with 1 ≤ i ≤ n; else ValueError."""
    ok = (isinstance(part, tuple) and len(part) == 2
          and all(isinstance(k, int) and not isinstance(k, bool) for k in part)
          and 1 <= part[0] <= part[1])
    if not ok:
        raise ValueError(f"part must be (i, n) with integers 1 <= i <= n, got {part!r}")
    return part


def part_cells(cells: list[Cell], part: tuple[int, int] | None) -> list[Cell]:
    """The cells of part i of n: those whose index in grid order, counted from 0, is
    ≡ i − 1 (mod n) (part 1 of 3 holds cells 0, 3, 6, ...); every cell when `part` is None."""
    if part is None:
        return list(cells)
    i, n = check_part(part)
    return list(cells)[i - 1::n]


class _Sweep:
    """The cells of one run, each taken while it is free (`RunStore.claim`: other runs may
    work on the folder too), computed and stored."""

    def __init__(self, study, store, bar, after_cell):
        self.study, self.store, self.bar, self.after_cell = study, store, bar, after_cell
        self.failed: list[str] = []

    def _next(self, pending: list[Cell]) -> Cell | None:
        """The first pending cell this run could take, removed from `pending`; None when
        another run computes each of them now. Cells another run finished are dropped."""
        for cell in list(pending):
            got = self.store.claim(cell.id, cell.values)
            if got == "busy":
                continue
            pending.remove(cell)
            if got == "claimed":
                return cell
            if self.bar is not None:  # finished by another run
                self.bar.update()
        return None

    def serial(self, todo: list[Cell]) -> None:
        pending = list(todo)
        while pending:
            cell = self._next(pending)
            if cell is None:  # the rest are other runs': wait until they end (or die)
                time.sleep(POLL_SECONDS)
                continue
            if self.bar is not None:
                self.bar.set_description(cell.id)
            try:
                result, error = _timed_cell(self.study, cell), None
            except _CELL_ERRORS as e:
                result, error = None, e
            self.finish(cell, result, error)

    def parallel(self, todo: list[Cell], jobs: int) -> None:
        """`jobs` cells at once in threads; the store is written from this thread only."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        pending, running = list(todo), {}
        pool = ThreadPoolExecutor(jobs)
        try:
            while pending or running:
                while len(running) < jobs and pending and (cell := self._next(pending)):
                    running[pool.submit(_timed_cell, self.study, cell)] = cell
                if not running:
                    time.sleep(POLL_SECONDS)
                    continue
                done, _ = wait(running, timeout=POLL_SECONDS if pending else None,
                               return_when=FIRST_COMPLETED)
                for fut in done:
                    cell, error = running.pop(fut), fut.exception()
                    if error is not None and not isinstance(error, _CELL_ERRORS):
                        raise error
                    self.finish(cell, None if error else fut.result(), error)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def finish(self, cell: Cell, result, error) -> None:
        bar = self.bar
        if error is not None:
            self.failed.append(cell.id)
            message = f"{type(error).__name__}: {error}"
            if is_out_of_memory(error):
                message = ("out of memory inside XLA (the cell did not fit: fewer seeds at once, "
                           "a smaller model or N, the matrix-free route or more devices): "
                           + " ".join(message.split())[:300])
            self.store.mark(cell.id, "failed", error=message)
            if bar is not None:
                bar.write(f"cell {cell.id} failed: {error}")
                bar.update()
            return
        arrays, records, wall = result
        self.store.save_cell(cell.id, arrays, [r.as_row() for r in records], wall_time=wall)
        if bar is not None:
            s = max(r.t_final for r in records)
            ratio = max((r.C_final / r.C0 for r in records if r.C0 > 0), default=math.nan)
            bar.set_description(cell.id)
            bar.set_postfix_str(f"s={s:.3g} C/C0={ratio:.2e} {wall:.1f}s")
            bar.update()
        if self.after_cell is not None:
            self.after_cell(cell, records)


def run_study(
    study: Study,
    out_dir: str | None = None,
    *,
    progress: bool = True,
    jobs: int = 1,
    after_cell: Callable[[Cell, list[RunRecord]], None] | None = None,
    part: tuple[int, int] | None = None,
) -> RunStore:
    """Run every unfinished cell of `study` (or of its part `part` = (i, n): `part_cells`)
    into `out_dir` (default study's output.dir).

    Finished cells of an earlier run of the same config are skipped, once their files match
    the checksums in the manifest; damaged or missing ones are reported (on stderr) and
    recomputed. Other runs may work on the folder at the same time: a cell another run
    computes is left to it (and waited for at the end; if that run dies, this one computes
    the cell). A folder holding another config raises StoreError; a data file changed since
    the config was read raises ConfigError. A failing cell is recorded as failed and the sweep
    goes on; the returned store's manifest says which. `jobs` > 1 runs that many cells at once
    in threads (XLA compiles on one core: two cores compile two cells at once); results are
    identical, only the store is written from this thread. `after_cell` is called after each
    stored cell.

    **Arguments:**

    - `study`: the loaded config.
    - `out_dir`: the run folder.
    - `progress`: show a progress bar (tqdm).
    - `jobs`: cells computed at once.
    - `after_cell`: called with each stored cell and its records.
    - `part`: (i, n) with 1 ≤ i ≤ n: compute only the cells of part i of n.

    **Returns:** the run folder's store; its manifest holds every cell's status, other runs'
    too.
    """
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cells = expand_grid(study)
    mine = part_cells(cells, part)
    study.check_data_file()
    store = RunStore.open(out_dir or study.out_dir, study, cells, part=part)
    for note in store.notes:
        print(f"flowlab: warning: {note}", file=sys.stderr)
    todo = [cell for cell in mine if not store.is_done(cell.id)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="cell", dynamic_ncols=True)
    sweep = _Sweep(study, store, bar, after_cell)
    status = "interrupted"
    try:
        if jobs == 1 or len(todo) < 2:
            sweep.serial(todo)
        else:
            sweep.parallel(todo, int(jobs))
        status = "failed" if sweep.failed else "complete"
    finally:
        if bar is not None:
            bar.close()
        store.close(status)
    return store
