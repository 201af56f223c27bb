"""Integrate a flow with diffrax, saving statistics rather than states, with named stops."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Float

from ..flows import AbstractFlow
from ..linalg import extreme_singular_values
from ._batch import initial_theta, over_seeds, prepare, run_batched
from ._options import IMPLICIT_SOLVERS, IntegratorOptions
from ._output_path import OutputPathSolver
from ._record import cost_target, resolved_cost, saved_statistics
from ._results import RESULTS, STOP_CODE, from_linear_solve
from ._trajectory import Trajectory


def make_solver(name: str) -> diffrax.AbstractSolver:
    """A diffrax solver by name. Implicit ones use Newton with a matrix-free GMRES solve:
    diffrax's default root finder would materialise the dense K × K Jacobian."""
    explicit = {
        "tsit5": diffrax.Tsit5,
        "dopri5": diffrax.Dopri5,
        "dopri8": diffrax.Dopri8,
        "bosh3": diffrax.Bosh3,
        "heun": diffrax.Heun,
        "euler": diffrax.Euler,
    }
    implicit = {"kvaerno3": diffrax.Kvaerno3, "kvaerno5": diffrax.Kvaerno5}
    assert set(implicit) == set(IMPLICIT_SOLVERS)
    if name in explicit:
        return explicit[name]()
    if name in implicit:
        newton = optx.Newton(
            rtol=1e-8, atol=1e-8, linear_solver=lx.GMRES(rtol=1e-8, atol=1e-10, restart=30)
        )
        return implicit[name](root_finder=newton)
    raise ValueError(
        f"unknown ODE solver {name!r}; expected one of {sorted(explicit) + sorted(implicit)}"
    )


def _field_evals_per_step(solver) -> tuple[int, int] | None:
    """(evaluations per step, extra evaluations at the start), or None when not fixed."""
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if isinstance(tableau, diffrax.ButcherTableau) and not tableau.implicit:
        stages = len(tableau.c) + 1
        return (stages - 1, 1) if tableau.fsal else (stages, 0)
    return None


def _summed(fn):
    """diffrax root-finds all events at once, as a tuple in which only the triggered one is
    nonzero: their sum is that one."""
    def scalar(t, args):
        values, aux = fn(t, args)
        return sum(jax.tree_util.tree_leaves(values)), aux
    return scalar


class _EventBisection(optx.Bisection):
    """Bisection for diffrax's event root find. Newton, diffrax's usual choice, differentiates
    every event function in s (the guards too): 40 % of the tracing time of a solve. Bisection
    to |Δs| ≤ 1e-9 + 1e-12·s takes ~40 cost evaluations, once per solve."""

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        dtype = jax.tree_util.tree_leaves(f_struct)[0].dtype
        return super().init(_summed(fn), y, args, options, jax.ShapeDtypeStruct((), dtype),
                            aux_struct, tags)

    def step(self, fn, y, args, options, state, tags):
        return super().step(_summed(fn), y, args, options, state, tags)

    def terminate(self, fn, y, args, options, state, tags):
        return super().terminate(_summed(fn), y, args, options, state, tags)


# every event function falls through its root: C to the target, a tripped guard (diffrax: t_end − s)
_ROOT_FINDER = _EventBisection(rtol=1e-12, atol=1e-9, flip=True)

#: Guards in the order they name a stop when several trip in the same step.
GUARD_ORDER = ("rank_loss", "theta_diverged", "singular", "non_finite_field", "bound_violated")
#: The failures of the field that ride in the ODE state (see `_flagged_field`), one flag each,
#: and after them the flag of a solve that did not resolve D at full rank (not a failure: it
#: disarms the rate-bound guard, whose premise is full rank).
FIELD_FAILURES = ("singular", "non_finite_field")
FIELD_FLAGS = (*FIELD_FAILURES, "rank_deficient")


def _guards(problem, flow, t, theta, flags, cost0, opts: IntegratorOptions) -> dict:
    """Each degeneration check at (s, θ), as a function returning True where it trips.
    `flags` are the field-failure flags carried in the state (see `_flagged_field`), or None."""
    out = {}
    if opts.bound_slack is not None:
        def bound_violated():
            bound = cost0 * jnp.exp(-flow.rate_bound(problem) * t)
            above = jnp.sqrt(problem.cost(theta)) > (
                (1 + opts.bound_slack) * jnp.sqrt(bound) + jnp.sqrt(resolved_cost(problem, opts)))
            if flags is None:
                return above
            return above & (flags[len(FIELD_FAILURES)] == 0)  # full rank at every solve so far
        out["bound_violated"] = bound_violated
    if opts.theta_norm_max is not None:
        out["theta_diverged"] = lambda: jnp.linalg.norm(theta) > opts.theta_norm_max
    if flags is not None:
        for i, name in enumerate(FIELD_FAILURES):
            out[name] = lambda i=i: flags[i] > 0
    if opts.sigma_min_tol is not None or opts.max_condition is not None:
        def rank_loss():
            low, high = extreme_singular_values(problem, theta, flow.spectrum_route(problem))
            bad = ~(jnp.isfinite(low) & jnp.isfinite(high))
            if opts.sigma_min_tol is not None:
                bad = bad | (low < opts.sigma_min_tol)
            if opts.max_condition is not None:
                bad = bad | (low * opts.max_condition < high)
            return bad
        out["rank_loss"] = rank_loss
    return {name: out[name] for name in GUARD_ORDER if name in out}


def _flagged_field(flow):
    """The field on y = (θ, φ), φ one flag per FIELD_FAILURES: θ' = 0 and φ_i' = 1 where the
    field fails that way, so φ_i > 0 after the step that met the failure. The check rides in
    the state instead of evaluating the field again per step; a failed linear solve is named
    'singular' even where it also left θ' non-finite. The last flag (FIELD_FLAGS) counts the
    time spent where the solve did not resolve D at full rank."""
    def field(t, y, args):
        v, result, full_rank = flow.velocity_details(args, y[0])
        stop = from_linear_solve(result)
        singular = stop == RESULTS.singular
        non_finite = ~singular & (~jnp.all(jnp.isfinite(v)) | (stop == RESULTS.non_finite_field))
        ok = ~(singular | non_finite)
        flags = jnp.stack([singular, non_finite, ~full_rank]).astype(v.dtype)
        return jnp.where(ok, v, 0.0), flags
    return diffrax.ODETerm(field)


def _events(problem, flow, theta0, cost0, target, theta_of, flags_of, y0, opts):
    """One diffrax event per stop, in order of precedence (diffrax masks all but the first
    that trips, so the mask names the stop without evaluating the guards again), and their
    names."""
    cond_fns, names = [], []
    if target is not None:
        names.append("cost_target")
        cond_fns.append(lambda t, y, args, **kw: (jnp.log(problem.cost(theta_of(y)))
                                                   - jnp.log(target)))

    def guard(name):
        # the root finder for the cost event traces every event with a JVP in s: the guards'
        # boolean need none (stop_gradient keeps eigensolves and the field out of it)
        def cond(t, y, args, **kw):
            y = jax.lax.stop_gradient(y)
            return _guards(problem, flow, t, theta_of(y), flags_of(y), cost0, opts)[name]()
        return cond

    for name in _guards(problem, flow, 0.0, theta0, flags_of(y0), cost0, opts):
        names.append(name)
        cond_fns.append(guard(name))
    if not cond_fns:
        return None, names
    root_finder = _ROOT_FINDER if target is not None else None
    return diffrax.Event(tuple(cond_fns), root_finder=root_finder), names


def _stepping(problem, flow, cost0, target, opts, flagged=False):
    """The diffrax solver and step-size controller (`flagged`: y = (θ, φ), and the step size
    is controlled on θ alone: a flag switching on is no error of the solve)."""
    norm = (lambda e: optx.rms_norm(e[0])) if flagged else optx.rms_norm
    controller = diffrax.PIDController(rtol=opts.rtol, atol=opts.atol, dtmin=opts.dtmin,
                                       force_dtmin=opts.dtmin is not None, norm=norm)
    if opts.ode_solver != "output_path":
        return make_solver(opts.ode_solver), controller
    # where Gauss–Newton cannot reach X*(s) even over a step of 1e-9·t1, X*(s) has left the
    # image of θ ↦ X near θ: D lost rank (ends as rank_loss, not max_steps)
    controller = diffrax.PIDController(rtol=opts.rtol, atol=opts.atol, dtmin=1e-9 * opts.t1)
    # step exactly to the save times, and to just past the path's T_ε so that the cost event
    # is root-found inside one step of X on the path, not on an interpolant
    nodes = opts.ts
    if target is not None:
        t_hit = jnp.log(cost0 / target) / (2 * problem.kappa) + 10 * opts.rtol / problem.kappa
        nodes = jnp.sort(jnp.append(nodes, jnp.clip(t_hit, 0.0, opts.t1)))
    return (OutputPathSolver(flow, tol=opts.rtol),
            diffrax.ClipStepSizeController(controller, step_ts=nodes))


def _stop_code(sol, names, on_path, theta0, cost0):
    """The stop reason's code from diffrax's result and the event mask."""
    code = jnp.where(sol.result == diffrax.RESULTS.successful, STOP_CODE["t1_reached"],
                     STOP_CODE["solver_failed"])
    code = jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, STOP_CODE["max_steps"], code)
    if on_path:  # Θ singular at a Gauss–Newton iterate, or X*(s) out of reach: D lost rank
        lost_rank = ((sol.result == diffrax.RESULTS.singular)
                     | (sol.result == diffrax.RESULTS.dt_min_reached))
        code = jnp.where(lost_rank, STOP_CODE["rank_loss"], code)
    if sol.event_mask is not None:
        for name, mask in zip(names, sol.event_mask):
            code = jnp.where(mask, STOP_CODE[name], code)
    # a non-finite start is named as such, also under jit where initial_theta cannot raise
    bad_start = ~(jnp.all(jnp.isfinite(theta0)) & jnp.isfinite(cost0))
    return jnp.where(bad_start, STOP_CODE["non_finite_start"], code)


def _field_evals(sol, solver, on_path):
    steps = sol.stats["num_steps"]
    per_step = _field_evals_per_step(solver)
    if on_path:  # one D⁺ per Gauss–Newton iteration (accepted steps)
        return sol.solver_state[1].astype(steps.dtype)
    if per_step is None:
        return jnp.full_like(steps, -1)
    return per_step[0] * steps + per_step[1]


def _solve(problem, flow: AbstractFlow, theta0, opts: IntegratorOptions) -> dict:
    flow = flow.at_start(problem, theta0)
    cost0 = problem.cost(theta0)
    on_path = opts.ode_solver == "output_path"
    # (Gauss–Newton onto the output path checks its own iterates)
    if opts.check_finite and not on_path:
        y0 = (theta0, jnp.zeros(len(FIELD_FLAGS), theta0.dtype))
        term, theta_of, flags_of = _flagged_field(flow), (lambda y: y[0]), (lambda y: y[1])
    else:
        y0, term = theta0, diffrax.ODETerm(flow)
        theta_of, flags_of = (lambda y: y), (lambda y: None)

    def stats(t, y, args):
        theta = theta_of(y)
        return saved_statistics(problem, flow, theta, problem.outputs(theta), opts)

    target = cost_target(opts, cost0, problem)
    event, names = _events(problem, flow, theta0, cost0, target, theta_of, flags_of, y0, opts)
    solver, controller = _stepping(problem, flow, cost0, target, opts,
                                   flagged=flags_of(y0) is not None)
    sol = diffrax.diffeqsolve(
        term, solver, t0=0.0, t1=opts.t1, dt0=opts.dt0, y0=y0, args=problem,
        saveat=diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=opts.ts, fn=stats),
                  diffrax.SubSaveAt(t1=True, fn=lambda t, y, args: theta_of(y))],
            solver_state=on_path,
        ),
        stepsize_controller=controller, event=event, max_steps=opts.max_steps, throw=False,
        # no reverse-mode through the solve: a plain while loop traces the step once (the
        # checkpointed default traces the field and the guards three times more)
        adjoint=diffrax.ForwardMode(),
        progress_meter=diffrax.TqdmProgressMeter() if opts.progress else diffrax.NoProgressMeter(),
    )
    saved, ts_saved = sol.ys[0], sol.ts[0]
    theta_final = sol.ys[1][-1]
    return {
        "ts": ts_saved,
        "valid": jnp.isfinite(ts_saved),
        **{k: saved[k] for k in ("cost", "outputs", "theta_norm", "sigma_min", "sigma_max",
                                 "rank", "extras")},
        "theta": saved.get("theta"),
        "cost0": cost0,
        "outputs0": problem.outputs(theta0),
        "t_final": sol.ts[1][-1],
        "cost_final": problem.cost(theta_final),
        "theta_final": theta_final,
        "stop_code": _stop_code(sol, names, on_path, theta0, cost0),
        "num_steps": sol.stats["num_steps"],
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "num_field_evals": _field_evals(sol, solver, on_path),
    }


@eqx.filter_jit
def _solve_batch(problem, flow, theta0, opts):
    return over_seeds(lambda th: _solve(problem, flow, th, opts), theta0, opts)


def solve(problem, flow: AbstractFlow, theta0: Float[Array, " K"], t1: float | None = None, *,
          options: IntegratorOptions | None = None, **settings) -> Trajectory:
    """The pure, jit- and vmap-able core of `simulate` for one θ0 (no timing).

    **Arguments:**

    - `problem`, `flow`, `t1`, `options`, `settings`: as in `simulate`.
    - `theta0`: one parameter vector θ0, shape (K,), unchecked (a non-finite θ0 ends the run
      with 'non_finite_start').

    **Returns:**

    A `Trajectory` (its `wall_time` and `compile_time` are NaN).

    **Raises:**

    - `TypeError`, `SettingError`, `ValueError`: as `simulate`, from the flow and the
      settings.
    """
    if t1 is not None:
        settings["t1"] = t1
    flow, opts = prepare(problem, flow, options, settings)
    opts = opts.resolve(problem, flow)
    return Trajectory(**_solve(problem, flow, theta0, opts), targets=problem.targets,
                      kappa=problem.kappa)


def simulate(
    problem,
    flow: AbstractFlow,
    theta0: Float[Array, "*b K"] | None = None,
    t1: float | None = None,
    *,
    options: IntegratorOptions | None = None,
    shard: bool | str = False,
    **settings,
) -> Trajectory:
    r"""Integrate θ' = flow(θ) from θ0 over s in [0, t1] with diffrax (jit-compiled).

    Saves at the save times the cost, the outputs and diagnostics (σ_min, σ_max, rank of D
    from the Gram, |θ|); θ itself only with save_theta; `extras` maps names to functions
    (problem, flow, θ) -> array, saved into Trajectory.extras.

    Stops early, with the reason recorded, at the cost target (root-found), on rank loss
    (σ_min(D) < sigma_min_tol or σ_max/σ_min > max_condition), |θ| > theta_norm_max, a
    non-finite field, a failed solve, a violated rate bound, or when max_steps is exhausted.
    The guards are checked once per accepted step. A stop is recorded, not raised
    (`Trajectory.stop_reason`; docs, How-to → Exit codes and stop reasons).

    **Arguments:**

    - `problem`: the problem (an `AbstractProblem`).
    - `flow`: the vector field (an `AbstractFlow`), resolved for the problem once per call.
    - `theta0`: one parameter vector (K,) or a batch (B, K) of them (one batched solve);
      None: the problem's θ0.
    - `t1`: the end of the integration (a shortcut for the setting of that name).
    - `options`: an `IntegratorOptions`; None: the defaults.
    - `shard`: True splits the seed axis over all devices (`flowlab.devices`: padded to a
      multiple of the device count, padding stripped); 'auto' does so when there are several
      devices and several seeds; False: one device. Results equal the unsharded run's.
    - `settings`: keyword settings of `IntegratorOptions` that update `options` (t1, ts,
      num_saves, ode_solver, rtol, atol, dt0, dtmin, max_steps, seed_batching, cost_target,
      cost_target_relative, sigma_min_tol, max_condition, theta_norm_max, bound_slack,
      check_finite, diagnostics, save_theta, extras, progress; see its fields for meaning
      and defaults).

    **Returns:**

    A `Trajectory` (batched when θ0 is), with the compile and run times of this call.

    **Raises:**

    - `TypeError`: when `flow` is not an `AbstractFlow`, `options` not an
      `IntegratorOptions`, or a setting is unknown or renamed (`solver` is `ode_solver`).
    - `SettingError` (a ValueError): when a setting's value is refused.
    - `ValueError`: when θ0 is not of shape (K,) or (B, K) or holds NaN or inf, the flow
      cannot apply to the problem (e.g. the 'cholesky' solver with K < QN), `ode_solver` is
      'output_path' for a flow without an output path, or `shard` is not True, False or
      'auto'.
    """
    if t1 is not None:
        settings["t1"] = t1
    flow, opts = prepare(problem, flow, options, settings)
    theta0 = initial_theta(problem, theta0)
    return run_batched(_solve_batch, problem, flow, theta0, opts.resolve(problem, flow), shard)
