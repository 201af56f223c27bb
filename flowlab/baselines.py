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
"""

import dataclasses
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import optimistix as optx

from .integrate import IntegratorOptions
from .integrate._euler import _search


@dataclasses.dataclass(frozen=True)
class Method:
    """A named optimiser: `init(problem, θ0) -> state`, `step(problem, state) -> state`,
    `theta(state)`, `done(state)` (a bool array: the method has terminated)."""

    name: str
    settings: dict
    init: Callable
    step: Callable
    theta: Callable = lambda s: s[0]
    done: Callable = lambda s: jnp.asarray(False)


@dataclasses.dataclass
class Run:
    """The record of one run: at each record point the iterations done, the wall seconds spent
    in compiled steps so far (compile excluded), the cost and θ."""

    name: str
    settings: dict
    iterations: np.ndarray
    seconds: np.ndarray
    cost: np.ndarray
    thetas: np.ndarray
    compile_seconds: float
    stop: str

    def first_reaching(self, values: np.ndarray, level: float) -> tuple[float, int]:
        """(seconds, iterations) at the first record with value ≤ level (NaN, −1 if never)."""
        hit = np.nonzero(np.asarray(values) <= level)[0]
        if hit.size == 0:
            return float("nan"), -1
        return float(self.seconds[hit[0]]), int(self.iterations[hit[0]])


def adam(lr: float) -> Method:
    opt = optax.adam(lr)

    def step(problem, s):
        theta, opt_state = s
        g = jax.grad(problem.cost)(theta)
        updates, opt_state = opt.update(g, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    return Method("adam", {"lr": lr}, lambda p, th: (th, opt.init(th)), step)


def lbfgs(memory_size: int = 10) -> Method:
    opt = optax.lbfgs(memory_size=memory_size)

    def step(problem, s):
        theta, opt_state = s
        value, grad = optax.value_and_grad_from_state(problem.cost)(theta, state=opt_state)
        updates, opt_state = opt.update(grad, opt_state, theta, value=value, grad=grad,
                                        value_fn=problem.cost)
        return optax.apply_updates(theta, updates), opt_state

    return Method("lbfgs", {"memory_size": memory_size}, lambda p, th: (th, opt.init(th)), step)


def _optimistix(name, solver, settings) -> Method:
    def fn(theta, problem):
        return problem.residual(theta), None

    def init(problem, theta):
        f_struct = jax.ShapeDtypeStruct((problem.num_outputs,), theta.dtype)
        state = solver.init(fn, theta, problem, {}, f_struct, None, frozenset())
        return theta, state, jnp.asarray(False)

    def step(problem, s):
        # steps after termination (within a chunk) are taken and kept: at convergence they
        # barely move θ, and `run` stops at the end of the chunk
        theta, state, done = s
        y, state, _ = solver.step(fn, theta, problem, {}, state, frozenset())
        stop, _ = solver.terminate(fn, y, problem, {}, state, frozenset())
        return y, state, done | stop

    return Method(name, settings, init, step, done=lambda s: s[2])


def gauss_newton(rtol: float = 1e-12, atol: float = 1e-14,
                 linear_solver: lx.AbstractLinearSolver | None = None) -> Method:
    """optimistix.GaussNewton (dense QR of J by default, jac = forward mode)."""
    ls = lx.AutoLinearSolver(well_posed=None) if linear_solver is None else linear_solver
    return _optimistix("optx_gauss_newton", optx.GaussNewton(rtol, atol, linear_solver=ls),
                       {"rtol": rtol, "atol": atol, "linear_solver": type(ls).__name__})


def levenberg_marquardt(rtol: float = 1e-12, atol: float = 1e-14,
                        linear_solver: lx.AbstractLinearSolver | None = None) -> Method:
    """optimistix.LevenbergMarquardt (trust region; dense QR of [J; √λI] by default)."""
    ls = lx.QR() if linear_solver is None else linear_solver
    return _optimistix("optx_levenberg_marquardt",
                       optx.LevenbergMarquardt(rtol, atol, linear_solver=ls),
                       {"rtol": rtol, "atol": atol, "linear_solver": type(ls).__name__})


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
