"""Integrate a flow with diffrax, saving statistics rather than states, with named stops."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Float

from ..flows import AbstractFlow
from ..linalg import singular_values
from ._batch import initial_theta, over_seeds, prepare, run_batched
from ._options import IMPLICIT_SOLVERS, IntegratorOptions
from ._output_path import OutputPathSolver
from ._record import cost_target, resolved_cost, saved_statistics
from ._trajectory import STOP_CODE, Trajectory


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


def _guards(problem, flow, t, theta, cost0, opts: IntegratorOptions) -> dict[str, Array]:
    """Each degeneration check at (s, θ): True where it trips."""
    out = {}
    if opts.bound_slack is not None:
        bound = cost0 * jnp.exp(-flow.rate_bound(problem) * t)
        out["bound_violated"] = jnp.sqrt(problem.cost(theta)) > (
            (1 + opts.bound_slack) * jnp.sqrt(bound) + jnp.sqrt(resolved_cost(problem, opts)))
    if opts.theta_norm_max is not None:
        out["theta_diverged"] = jnp.linalg.norm(theta) > opts.theta_norm_max
    if opts.check_finite:
        out["non_finite_field"] = ~jnp.all(jnp.isfinite(flow.velocity(problem, theta)))
    if opts.sigma_min_tol is not None or opts.max_condition is not None:
        sigma = singular_values(problem, theta, route=flow.spectrum_route(problem))
        bad = ~jnp.all(jnp.isfinite(sigma))
        if opts.sigma_min_tol is not None:
            bad = bad | (sigma[0] < opts.sigma_min_tol)
        if opts.max_condition is not None:
            bad = bad | (sigma[0] * opts.max_condition < sigma[-1])
        out["rank_loss"] = bad
    return out


def _solve(problem, flow: AbstractFlow, theta0, opts: IntegratorOptions) -> dict:
    flow = flow.at_start(problem, theta0)
    cost0 = problem.cost(theta0)
    theta_of = lambda y: y  # noqa: E731

    def stats(t, y, args):
        theta = theta_of(y)
        return saved_statistics(problem, flow, theta, problem.outputs(theta), opts)

    cond_fns = {}
    target = cost_target(opts, cost0)
    if target is not None:
        cond_fns["cost"] = lambda t, y, args, **kw: (jnp.log(problem.cost(theta_of(y)))
                                                     - jnp.log(target))
    if opts.any_guard:
        cond_fns["guard"] = lambda t, y, args, **kw: jnp.any(
            jnp.stack(list(_guards(problem, flow, t, theta_of(y), cost0, opts).values()))
        )
    event = None
    if cond_fns:
        event = diffrax.Event(
            cond_fns, root_finder=optx.Newton(rtol=1e-12, atol=1e-12) if target is not None else None
        )

    term, y0 = diffrax.ODETerm(flow), theta0
    controller = diffrax.PIDController(rtol=opts.rtol, atol=opts.atol, dtmin=opts.dtmin,
                                       force_dtmin=opts.dtmin is not None)
    on_path = opts.solver == "output_path"
    if on_path:
        solver = OutputPathSolver(flow, tol=opts.rtol)
        # where Gauss–Newton cannot reach X*(s) even over a step of 1e-9·t1, X*(s) has left
        # the image of θ ↦ X near θ: D lost rank (ends as rank_loss, not max_steps)
        controller = diffrax.PIDController(rtol=opts.rtol, atol=opts.atol, dtmin=1e-9 * opts.t1)
        # step exactly to the save times, and to just past the path's T_ε so that the cost
        # event is root-found inside one step of X on the path, not on an interpolant
        nodes = opts.ts
        if target is not None:
            t_hit = jnp.log(cost0 / target) / (2 * problem.kappa) + 10 * opts.rtol / problem.kappa
            nodes = jnp.sort(jnp.append(nodes, jnp.clip(t_hit, 0.0, opts.t1)))
        controller = diffrax.ClipStepSizeController(controller, step_ts=nodes)
    else:
        solver = make_solver(opts.solver)
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=0.0,
        t1=opts.t1,
        dt0=opts.dt0,
        y0=y0,
        args=problem,
        saveat=diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=opts.ts, fn=stats),
                  diffrax.SubSaveAt(t1=True, fn=lambda t, y, args: theta_of(y))],
            solver_state=on_path,
        ),
        stepsize_controller=controller,
        event=event,
        max_steps=opts.max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if opts.progress else diffrax.NoProgressMeter(),
    )
    saved, ts_saved = sol.ys[0], sol.ts[0]
    t_final, theta_final = sol.ts[1][-1], sol.ys[1][-1]

    code = jnp.where(sol.result == diffrax.RESULTS.successful, STOP_CODE["t1_reached"],
                     STOP_CODE["solver_failed"])
    code = jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, STOP_CODE["max_steps"], code)
    if on_path:  # Θ singular at a Gauss–Newton iterate, or X*(s) out of reach: D lost rank
        lost_rank = ((sol.result == diffrax.RESULTS.singular)
                     | (sol.result == diffrax.RESULTS.dt_min_reached))
        code = jnp.where(lost_rank, STOP_CODE["rank_loss"], code)
    if event is not None:
        if "guard" in cond_fns:
            tripped = _guards(problem, flow, t_final, theta_final, cost0, opts)
            guard_code = STOP_CODE["rank_loss"]
            for name in ("bound_violated", "non_finite_field", "theta_diverged", "rank_loss"):
                if name in tripped:
                    guard_code = jnp.where(tripped[name], STOP_CODE[name], guard_code)
            code = jnp.where(sol.event_mask["guard"], guard_code, code)
        if "cost" in cond_fns:
            code = jnp.where(sol.event_mask["cost"], STOP_CODE["cost_target"], code)

    # a non-finite start is named as such, also under jit where initial_theta cannot raise
    bad_start = ~(jnp.all(jnp.isfinite(theta0)) & jnp.isfinite(cost0))
    code = jnp.where(bad_start, STOP_CODE["non_finite_start"], code)
    steps = sol.stats["num_steps"]
    per_step = _field_evals_per_step(solver)
    if on_path:  # one D⁺ per Gauss–Newton iteration (accepted steps)
        evals = sol.solver_state[1].astype(steps.dtype)
    elif per_step is None:
        evals = jnp.full_like(steps, -1)
    else:
        evals = per_step[0] * steps + per_step[1]
    return {
        "ts": ts_saved,
        "valid": jnp.isfinite(ts_saved),
        **{k: saved[k] for k in ("cost", "outputs", "theta_norm", "sigma_min", "sigma_max",
                                 "rank", "extras")},
        "theta": saved.get("theta"),
        "cost0": cost0,
        "outputs0": problem.outputs(theta0),
        "t_final": t_final,
        "cost_final": problem.cost(theta_final),
        "theta_final": theta_final,
        "stop_code": code,
        "num_steps": steps,
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "num_field_evals": evals,
    }


@eqx.filter_jit
def _solve_batch(problem, flow, theta0, opts):
    return over_seeds(lambda th: _solve(problem, flow, th, opts), theta0, opts)


def solve(problem, flow: AbstractFlow, theta0: Float[Array, " K"], t1: float | None = None, *,
          options: IntegratorOptions | None = None, **settings) -> Trajectory:
    """The pure, jit- and vmap-able core of `simulate` for one θ0 (no timing)."""
    if t1 is not None:
        settings["t1"] = t1
    opts = prepare(problem, flow, options, settings).resolve(problem, flow)
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

    θ0 is one parameter vector (K,) or a batch (B, K) of them (one vmapped solve); None means
    the problem's θ0. The settings are an `IntegratorOptions` (`options`), updated by keyword
    `settings` of the same names (t1, ts, num_saves, solver, rtol, atol, dt0, max_steps,
    cost_target, cost_target_relative, sigma_min_tol, max_condition, theta_norm_max,
    check_finite, diagnostics, save_theta, extras, progress; see its fields for meaning and
    defaults). Saves at the save times the cost, the outputs and diagnostics (σ_min, σ_max,
    rank of D from the Gram, |θ|); θ itself only with save_theta; `extras` maps names to
    functions (problem, flow, θ) -> array, saved into Trajectory.extras.

    Stops early, with the reason recorded, at the cost target (root-found), on rank loss
    (σ_min(D) < sigma_min_tol or σ_max/σ_min > max_condition), |θ| > theta_norm_max, a
    non-finite field, or when max_steps is exhausted. The guards are checked once per
    accepted step.

    shard=True splits the seed axis over all devices (flowlab.devices: padded to a multiple
    of the device count, padding stripped); 'auto' does so when there are several devices
    and several seeds. Results equal the unsharded run's.
    """
    if t1 is not None:
        settings["t1"] = t1
    opts = prepare(problem, flow, options, settings)
    theta0 = initial_theta(problem, theta0)
    return run_batched(_solve_batch, problem, flow, theta0, opts.resolve(problem, flow), shard)
