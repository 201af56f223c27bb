r"""Other optimisers on any flowlab problem, in one timing harness, for side-by-side studies.

Each method is an initial state and a pure step `state -> state` on θ in R^K (the problem's flat
parameters); `run` advances it in jit-compiled chunks of `chunk` steps, times every chunk
after compiling it (compile time reported separately), and keeps θ at each record point so
that errors (e.g. a PDE's relative L2 error, `flowlab.pde.relative_l2_errors`) are measured
afterwards, outside the timed region. Methods (`METHODS`):

- `adam(lr)`: optax Adam on C(θ);
- `lbfgs()`: optax L-BFGS with its zoom line search;
- `gauss_newton()` / `levenberg_marquardt()`: optimistix's solvers on the residual
  X(θ) − Y (whose C is (κ/2)|·|², the same minimiser); `linear_solver` lineax
  (default: dense QR; `lineax.LSMR` is the matrix-free choice where J does not fit);
- `adapted(flow, ...)`: flowlab's discrete steps θ ← θ + h·F(θ) with `euler_steps`' line
  searches (the same step `flowlab.euler_steps` takes).

A run stops at its step budget, its time budget, a non-finite cost, or the method's own
termination (optimistix's convergence test; the adapted steps' 'no_descent').

Besides the chunked `run`, two one-loop forms for a time-to-target race, whose callers compile
and time them: `until_done(method, problem, max_steps)` steps a method in one `while_loop` to
its own termination (for the optimistix methods, the loop of `optimistix.least_squares`), and
`adam_to_target(problem, lr, target)` runs Adam in one `while_loop` to C ≤ target. And scipy's
`least_squares` ('trf' or 'lm', exact Jacobian from jax), which runs on the host:
`scipy_least_squares(problem, θ0, ...)` returns a `Run` too.

These are the one place the baselines of the benchmarks (benchmarks/) and of the study runner
(`[compare] least_squares`) are written.
"""

import dataclasses
import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

from .integrate import IntegratorOptions
from .integrate._euler import _search


@dataclasses.dataclass(frozen=True)
class Method:
    """A named optimiser: `init(problem, θ0) -> state`, `step(problem, state) -> state`,
    `theta(state)`, `done(state)` (a bool array: the method has terminated), `failed(state)`
    (a bool array: a step failed, e.g. optimistix's linear solve; `until_done` stops there,
    `run` goes on to the non-finite cost that usually follows)."""

    name: str
    settings: dict
    init: Callable
    step: Callable
    theta: Callable = lambda s: s[0]
    done: Callable = lambda s: jnp.asarray(False)
    failed: Callable = lambda s: jnp.asarray(False)


@dataclasses.dataclass
class Run:
    """The record of one run: at each record point the iterations done, the wall seconds spent
    in compiled steps so far (compile excluded), the cost and θ; `info` holds what a method
    reports of itself at the end (scipy's status, nfev, njev, message)."""

    name: str
    settings: dict
    iterations: np.ndarray
    seconds: np.ndarray
    cost: np.ndarray
    thetas: np.ndarray
    compile_seconds: float
    stop: str
    info: dict = dataclasses.field(default_factory=dict)

    def first_reaching(self, values: np.ndarray, level: float) -> tuple[float, int]:
        """(seconds, iterations) at the first record with value ≤ level (NaN, −1 if never)."""
        hit = np.nonzero(np.asarray(values) <= level)[0]
        if hit.size == 0:
            return float("nan"), -1
        return float(self.seconds[hit[0]]), int(self.iterations[hit[0]])


def _adam_update(opt, problem, theta, opt_state):
    """One Adam update: (C(θ) before it, θ after it, the optimiser state after it)."""
    cost, g = jax.value_and_grad(problem.cost)(theta)
    updates, opt_state = opt.update(g, opt_state, theta)
    return cost, optax.apply_updates(theta, updates), opt_state


def adam(lr: float) -> Method:
    """optax Adam on C(θ), learning rate `lr` (optax's other defaults)."""
    opt = optax.adam(lr)

    def step(problem, s):
        _, theta, opt_state = _adam_update(opt, problem, *s)
        return theta, opt_state

    return Method("adam", {"lr": lr}, lambda p, th: (th, opt.init(th)), step)


def adam_to_target(problem, lr: float, target: float | Scalar) -> Callable[
        [Float[Array, " K"], Int[ArrayLike, ""]], tuple[Int[Array, ""], Scalar]]:
    """optax Adam (the update of `adam(lr)`) in one `while_loop` that stops at C ≤ `target`
    or at a step limit: the form for a time-to-target race, to be compiled and timed by the
    caller (`jax.jit(fn).lower(θ0, limit).compile()`).

    The loop evaluates C and ∇C together, so the cost it tests is that of the iterate before
    the last update (one forward pass saved per step); at the target the count and cost
    returned are those of that iterate.

    **Arguments:**

    - `problem`: a flowlab problem (its `cost`), closed over by the returned function.
    - `lr`: Adam's learning rate.
    - `target`: stop once C ≤ target (absolute, in C's units).

    **Returns:** `fn(θ0, limit) -> (steps, cost)`: the steps taken to the first iterate with
    C ≤ target (or `limit` steps if none), and that iterate's cost.
    """
    opt = optax.adam(lr)

    def fn(theta, limit):
        def cond(s):
            return (s[3] > target) & (s[2] < limit)

        def body(s):
            th, st, i, _ = s
            c, th, st = _adam_update(opt, problem, th, st)
            return th, st, i + 1, c

        th, _, i, c = jax.lax.while_loop(cond, body,
                                         (theta, opt.init(theta), 0, problem.cost(theta)))
        met = c <= target
        return jnp.where(met, jnp.maximum(i - 1, 0), i), jnp.where(met, c, problem.cost(th))

    return fn


def lbfgs(memory_size: int = 10) -> Method:
    """optax L-BFGS (`memory_size` pairs) with its zoom line search, on C(θ)."""
    opt = optax.lbfgs(memory_size=memory_size)

    def step(problem, s):
        theta, opt_state = s
        value, grad = optax.value_and_grad_from_state(problem.cost)(theta, state=opt_state)
        updates, opt_state = opt.update(grad, opt_state, theta, value=value, grad=grad,
                                        value_fn=problem.cost)
        return optax.apply_updates(theta, updates), opt_state

    return Method("lbfgs", {"memory_size": memory_size}, lambda p, th: (th, opt.init(th)), step)


def _optimistix(name, solver, settings, jac, weighted) -> Method:
    options = {"jac": jac}

    def fn(theta, problem):
        r = problem.residual(theta)
        return (math.sqrt(problem.kappa) * r if weighted else r), None

    def init(problem, theta):
        f_struct = jax.ShapeDtypeStruct((problem.num_outputs,), theta.dtype)
        state = solver.init(fn, theta, problem, options, f_struct, None, frozenset())
        return theta, state, jnp.asarray(False), jnp.asarray(False)

    def step(problem, s):
        # steps after termination (within a chunk) are taken and kept: at convergence they
        # barely move θ, and `run` stops at the end of the chunk
        theta, state, done, failed = s
        y, state, _ = solver.step(fn, theta, problem, options, state, frozenset())
        stop, result = solver.terminate(fn, y, problem, options, state, frozenset())
        return y, state, done | stop, failed | (result != optx.RESULTS.successful)

    # the options in the settings only where they are not the defaults (tables label by them)
    settings = {**settings, **({"jac": jac} if jac != "fwd" else {}),
                **({"weighted": True} if weighted else {})}
    return Method(name, settings, init, step, done=lambda s: s[2], failed=lambda s: s[3])


def gauss_newton(rtol: float = 1e-12, atol: float = 1e-14,
                 linear_solver: lx.AbstractLinearSolver | None = None, *, jac: str = "fwd",
                 weighted: bool = False) -> Method:
    """optimistix.GaussNewton on the residual.

    **Arguments:**

    - `rtol`, `atol`: optimistix's Cauchy termination tolerances.
    - `linear_solver`: lineax solver of the Gauss–Newton system (default
      `lineax.AutoLinearSolver(well_posed=None)`, optimistix's own: a dense QR of J here;
      `lineax.LSMR` is the matrix-free choice where J does not fit).
    - `jac`: how optimistix linearises the residual, "fwd" (jvps) or "bwd" (vjps).
    - `weighted`: solve for √κ·r (whose ½|·|² is C) instead of r (½|r|² = C/κ): the same
      minimiser; only the absolute tolerance reads differently.

    **Returns:** the `Method` (`done` at optimistix's termination, `failed` at a step whose
    result is not successful).
    """
    ls = lx.AutoLinearSolver(well_posed=None) if linear_solver is None else linear_solver
    return _optimistix("optx_gauss_newton", optx.GaussNewton(rtol, atol, linear_solver=ls),
                       {"rtol": rtol, "atol": atol, "linear_solver": type(ls).__name__},
                       jac, weighted)


def levenberg_marquardt(rtol: float = 1e-12, atol: float = 1e-14,
                        linear_solver: lx.AbstractLinearSolver | None = None, *,
                        jac: str = "fwd", weighted: bool = False) -> Method:
    """optimistix.LevenbergMarquardt on the residual (a trust region; dense QR of [J; √λI] by
    default, `linear_solver=lineax.QR()`, optimistix's own). The other arguments as for
    `gauss_newton`.

    **Returns:** the `Method` (`done` and `failed` as for `gauss_newton`).
    """
    ls = lx.QR() if linear_solver is None else linear_solver
    return _optimistix("optx_levenberg_marquardt",
                       optx.LevenbergMarquardt(rtol, atol, linear_solver=ls),
                       {"rtol": rtol, "atol": atol, "linear_solver": type(ls).__name__},
                       jac, weighted)


def adapted(flow, **settings) -> Method:
    """flowlab's discrete steps of `flow` (`euler_steps` settings: step_size, backtracking,
    max_backtracks, sufficient_decrease, grid_search)."""

    def init(problem, theta):
        return theta, problem.cost(theta), jnp.asarray(False)

    def step(problem, s):
        theta, cost, done = s
        opts = IntegratorOptions.build(**settings).resolve(problem, flow)
        v = flow.velocity(problem, theta)
        finite = jnp.all(jnp.isfinite(v))
        v = jnp.where(finite, v, 0.0)
        h, _, descent = _search(problem, theta, v, cost, opts)
        moved = finite & descent & ~done
        new = theta + h * v
        return (jnp.where(moved, new, theta), jnp.where(moved, problem.cost(new), cost),
                done | ~moved)

    return Method("adapted_steps", {"flow": type(flow).__name__, **settings}, init, step,
                  done=lambda s: s[2])


METHODS = {"adam": adam, "lbfgs": lbfgs, "gauss_newton": gauss_newton,
           "levenberg_marquardt": levenberg_marquardt, "adapted": adapted}


def run(method: Method, problem, theta0=None, *, max_steps: int, chunk: int = 1,
        max_seconds: float = float("inf")) -> Run:
    """Advance `method` from θ0 (default the problem's) in compiled chunks of `chunk` steps
    until `max_steps`, `max_seconds` of stepping, a non-finite cost or the method's own end."""
    theta0 = problem.theta0 if theta0 is None else jnp.asarray(theta0)

    state = eqx.filter_jit(method.init)(problem, theta0)
    # a state may hold non-arrays (optimistix keeps jaxprs of its linearisation): the loop
    # carries the arrays, the rest stays as it was built
    state, static = eqx.partition(state, eqx.is_array)

    def body(i, dyn):
        return eqx.partition(method.step(problem, eqx.combine(dyn, static)), eqx.is_array)[0]

    @eqx.filter_jit
    def advance(problem, dyn):
        dyn = jax.lax.fori_loop(0, chunk, body, dyn)
        full = eqx.combine(dyn, static)
        return dyn, problem.cost(method.theta(full)), method.done(full)

    start = time.perf_counter()
    compiled = advance.lower(problem, state).compile()
    compile_s = time.perf_counter() - start
    iters, secs, costs, thetas = [0], [0.0], [float(problem.cost(theta0))], [np.asarray(theta0)]
    spent, done, stop = 0.0, False, "max_steps"
    while iters[-1] < max_steps:
        t = time.perf_counter()
        state, cost, done = jax.block_until_ready(compiled(problem, state))
        spent += time.perf_counter() - t
        iters.append(iters[-1] + chunk)
        secs.append(spent)
        costs.append(float(cost))
        thetas.append(np.asarray(method.theta(eqx.combine(state, static))))
        if not np.isfinite(costs[-1]):
            stop = "non_finite"
            break
        if bool(done):
            stop = "converged"
            break
        if spent >= max_seconds:
            stop = "max_seconds"
            break
    return Run(method.name, method.settings, np.asarray(iters), np.asarray(secs),
               np.asarray(costs), np.stack(thetas), compile_s, stop)


def until_done(method: Method, problem, max_steps: int) -> Callable[
        [Float[Array, " K"]], tuple[Float[Array, " K"], Int[Array, ""]]]:
    """`method` stepped in one `while_loop` from θ0 until its own termination (`done`), a
    failed step (`failed`) or `max_steps` steps: the form for a time-to-target race, to be compiled and timed by the
    caller (`jax.jit(fn).lower(θ0).compile()`). For the optimistix methods this is the loop of
    `optimistix.least_squares(..., max_steps=max_steps, throw=False)`.

    **Arguments:**

    - `method`: a `Method` whose `done` can turn true (the optimistix ones, `adapted`).
    - `problem`: the flowlab problem, closed over by the returned function.
    - `max_steps`: the step budget.

    **Returns:** `fn(θ0) -> (θ, steps)`: the last iterate and the steps taken.
    """

    def fn(theta0):
        state = method.init(problem, theta0)
        # as in `run`: the loop carries the state's arrays, the rest stays as built
        dyn, static = eqx.partition(state, eqx.is_array)

        def cond(carry):
            dyn, i = carry
            state = eqx.combine(dyn, static)
            return ~method.done(state) & ~method.failed(state) & (i < max_steps)

        def body(carry):
            dyn, i = carry
            new = method.step(problem, eqx.combine(dyn, static))
            return eqx.partition(new, eqx.is_array)[0], i + 1

        dyn, steps = jax.lax.while_loop(cond, body, (dyn, jnp.asarray(0)))
        return method.theta(eqx.combine(dyn, static)), steps

    return fn


@eqx.filter_jit
def _scaled_residual(problem, theta, scale):
    return scale * problem.residual(theta)


@eqx.filter_jit
def _scaled_jacobian(problem, theta, scale, mode):
    return scale * problem.jacobian(theta, mode)


#: scipy's least_squares status -> `Run.stop` (-2, a stop from the callback, is told apart there)
_SCIPY_STOPS = {-1: "improper_input", 0: "max_steps", 1: "converged", 2: "converged",
                3: "converged", 4: "converged"}


def scipy_least_squares(problem, theta0: Float[ArrayLike, " K"] | None = None, *,
                        method: str = "trf", jac_mode: str = "auto", weighted: bool = False,
                        ftol: float = 1e-15, xtol: float = 1e-15, gtol: float = 1e-15,
                        max_nfev: int | None = None, cost_target: float | None = None,
                        max_seconds: float = float("inf")) -> Run:
    """`scipy.optimize.least_squares` on the problem's residual, with its exact Jacobian from
    jax (both jit-compiled; compiled once per problem structure and warmed up at θ0 before
    the timed solve, that time reported as `compile_seconds`).

    **Arguments:**

    - `problem`: a flowlab problem (its `residual`, `jacobian`, `kappa`).
    - `theta0`: the start (default the problem's θ0); computed in its dtype.
    - `method`: scipy's "trf" (trust region reflective) or "lm" (MINPACK's lmder).
    - `jac_mode`: `problem.jacobian`'s mode, "auto", "rev" or "fwd".
    - `weighted`: fit √κ·r (scipy's cost ½|·|² is then C) instead of r (cost C/κ): the same
      minimiser; scipy's `gtol` test reads differently.
    - `ftol`, `xtol`, `gtol`, `max_nfev`: scipy's (None: scipy's default budget).
    - `cost_target`: stop once C ≤ cost_target (C in the problem's units), checked after each
      iteration by scipy's callback.
    - `max_seconds`: stop after the first iteration that ends past this wall time.

    **Returns:** a `Run` with two records, θ0 and the end point; `iterations` counts scipy's
    Jacobian evaluations (njev; the residual evaluations where scipy reports no njev),
    `stop` is "converged" (scipy's status 1–4), "max_steps" (max_nfev),
    "cost_target", "max_seconds", "non_finite" or "improper_input"; `info` holds scipy's
    `status`, `message`, `nfev`, `njev`, `optimality` and the final `cost` in C's units.
    """
    from scipy.optimize import least_squares

    theta0 = problem.theta0 if theta0 is None else jnp.asarray(theta0)
    dtype = theta0.dtype
    scale = math.sqrt(problem.kappa) if weighted else 1.0
    to_cost = 1.0 if weighted else problem.kappa  # scipy's ½|f|² -> C

    def fun(x):
        return np.asarray(_scaled_residual(problem, jnp.asarray(x, dtype), scale))

    def jac(x):
        return np.asarray(_scaled_jacobian(problem, jnp.asarray(x, dtype), scale, jac_mode))

    x0 = np.asarray(theta0, np.float64)
    start = time.perf_counter()
    f0 = fun(x0)
    jac(x0)
    compile_s = time.perf_counter() - start
    cost0 = 0.5 * to_cost * float(f0 @ f0)

    hit = {"target": False, "time": False}
    callback = None
    if cost_target is not None or math.isfinite(max_seconds):
        def callback(intermediate_result):
            if cost_target is not None and to_cost * intermediate_result.cost <= cost_target:
                hit["target"] = True
                raise StopIteration
            if time.perf_counter() - start > max_seconds:
                hit["time"] = True
                raise StopIteration

    kwargs = {} if callback is None else {"callback": callback}
    start = time.perf_counter()
    res = least_squares(fun, x0, jac=jac, method=method, ftol=ftol, xtol=xtol, gtol=gtol,
                        max_nfev=max_nfev, **kwargs)
    seconds = time.perf_counter() - start
    cost = 0.5 * to_cost * float(res.fun @ res.fun)
    if not math.isfinite(cost):
        stop = "non_finite"
    elif hit["target"]:
        stop = "cost_target"
    elif hit["time"]:
        stop = "max_seconds"
    else:
        stop = _SCIPY_STOPS.get(int(res.status), f"status_{res.status}")
    njev = int(res.njev) if res.njev is not None else None
    settings = {"method": method, "jac_mode": jac_mode, "weighted": weighted, "ftol": ftol,
                "xtol": xtol, "gtol": gtol, "max_nfev": max_nfev, "cost_target": cost_target,
                "max_seconds": max_seconds}
    info = {"status": int(res.status), "message": str(res.message), "nfev": int(res.nfev),
            "njev": njev, "optimality": float(res.optimality), "cost": cost}
    return Run(f"scipy_{method}", settings, np.asarray([0, njev or int(res.nfev)]),
               np.asarray([0.0, seconds]), np.asarray([cost0, cost]),
               np.stack([x0, np.asarray(res.x)]), compile_s, stop, info)
