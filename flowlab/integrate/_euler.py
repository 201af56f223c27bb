r"""Discrete counterparts: forward-Euler steps θ_{k+1} = θ_k + h_k F(θ_k) of a flow.

For the AdaptedFlow, h = 1/κ is the minimum-norm Gauss–Newton step (quadratic convergence
near a full-rank solution); linearised, each step multiplies the cost by (1 − hκ)². Far from
a solution a full step can raise C by orders of magnitude (MATH §8), so a practical fitter searches along the direction v = F(θ_k) (settings of
`IntegratorOptions`):
- `backtracking`: halve h until C decreases (at most `max_backtracks` times); with
  `sufficient_decrease` = c, until the Armijo condition C(θ + hv) ≤ C(θ) + c·h·∂_vC(θ) holds
  (∂_vC = ⟨∇_X C, Dv⟩ by one jvp);
- `grid_search` = n: ENGD's line search (Müller & Zeinhofer 2023): C at h·2^{−j}, j = 0..n−1,
  and the lowest taken (n cost evaluations, no Jacobian).
- `levenberg_marquardt`: the adapted step damped, v_λ = −Dᵀ(Θ + λI)⁻¹∇_X C, taken when C
  falls; λ follows the gain ratio ρ = (C − C(θ + hv_λ))/(C − C_lin), C_lin the cost of the
  linearised step X + hDv_λ (one jvp), by Nielsen's rule (λ·max(1/3, 1 − (2ρ − 1)³) after a
  success; ×2, ×4, … after failures), from λ0 = `initial_damping`·rᵀΘr/rᵀr. Linearised, output
  mode i contracts by λ/(λ_i + λ) per step: the adapted step's (1 − hκ) on the modes with
  λ_i ≫ λ, while the short step on the tail keeps θ where the linearisation holds (where full
  Gauss–Newton steps cycle: docs, Benchmarks → Large N). Needs a solver with a damped solve
  (Cholesky, GramOrQR, SVD, Nyström).
When no tried step lowers C the run ends where it is with stop reason 'no_descent' (a stall,
e.g. at the round-off floor, or a direction that is not one of descent).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..flows import AbstractFlow
from ..linalg import spectrum_ends
from ._batch import initial_theta, over_seeds, prepare, run_batched
from ._options import IntegratorOptions
from ._record import cost_target, saved_statistics
from ._results import RESULTS, STOP_CODE, from_linear_solve
from ._trajectory import Trajectory


def _search(problem, theta, v, cost, opts: IntegratorOptions):
    """The step along v: (h, halvings, whether C(θ + hv) is accepted as a decrease)."""
    h = opts.step_size
    if opts.grid_search is not None:
        hs = h * 0.5 ** jnp.arange(opts.grid_search, dtype=theta.dtype)
        costs = jax.lax.map(lambda hh: problem.cost(theta + hh * v), hs,
                            batch_size=min(opts.grid_search, 8))
        costs = jnp.where(jnp.isnan(costs), jnp.inf, costs)
        j = jnp.argmin(costs)
        return hs[j], j, costs[j] < cost
    if not opts.backtracking:
        return h, jnp.asarray(0), jnp.asarray(True)
    slope = jnp.zeros((), theta.dtype)
    if opts.sufficient_decrease is not None:
        x, dx = jax.jvp(problem.outputs, (theta,), (v,))
        slope = opts.sufficient_decrease * jnp.vdot(problem.output_gradient(x), dx)

    def accepted(s):
        hh, c, _ = s
        return (c < cost) & (c <= cost + hh * slope)

    def shrink(s):
        hh, _, tries = s
        return hh / 2, problem.cost(theta + hh / 2 * v), tries + 1

    h, c, tries = jax.lax.while_loop(
        lambda s: ~accepted(s) & (s[2] < opts.max_backtracks), shrink,
        (h, problem.cost(theta + h * v), jnp.asarray(0)))
    return h, tries, accepted((h, c, tries))


def _checked(v, result):
    """(v with zeros where the step failed, whether it is usable, the stop it means if not):
    'singular' where the linear solve failed, 'non_finite_field' where v is not finite."""
    stop = from_linear_solve(result)
    singular = stop == RESULTS.singular
    usable = ~singular & jnp.all(jnp.isfinite(v)) & (stop != RESULTS.non_finite_field)
    failure = jnp.where(singular, STOP_CODE["singular"], STOP_CODE["non_finite_field"])
    return jnp.where(usable, v, 0.0), usable, failure


def _damped_step(problem, flow, theta, cost, damping, growth, h):
    """One Levenberg–Marquardt trial: (v, X(θ + hv), C there, whether v is usable, the stop a
    failed solve means, whether the trial is accepted, the next λ and growth factor)."""
    v, finite, failure = _checked(*flow.damped_velocity(problem, theta, damping))
    x, dx = jax.jvp(problem.outputs, (theta,), (v,))
    linearised = problem.loss(x + h * dx, problem.targets)
    x_new = problem.outputs(theta + h * v)
    new_cost = problem.loss(x_new, problem.targets)
    gain = (cost - new_cost) / (cost - linearised)
    accepted = finite & (new_cost < cost) & (gain > 0)
    shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3)
    damping = jnp.where(accepted, damping * shrink, damping * growth)
    growth = jnp.where(accepted, 2.0, 2.0 * growth)
    return v, x_new, new_cost, finite, failure, accepted, damping, growth


def _with_ends(hist: dict, row, ends) -> dict:
    """The saved rows with (σ_min, σ_max, rank) of D written into row `row`."""
    out = dict(hist)
    for name, value in zip(("sigma_min", "sigma_max", "rank"), ends):
        out[name] = hist[name].at[row].set(value.astype(hist[name].dtype))
    return out


def _initial_damping(problem, theta0, opts):
    """λ0 = initial_damping · rᵀΘr/rᵀr: the mean eigenvalue of Θ as seen by the residual
    (initial_damping itself where r = 0)."""
    r = problem.residual(theta0)
    _, vjp = jax.vjp(problem.outputs, theta0)
    (dtr,) = vjp(r)
    rr = jnp.vdot(r, r)
    scale = jnp.where(rr > 0, jnp.vdot(dtr, dtr) / jnp.where(rr > 0, rr, 1.0), 1.0)
    return (opts.initial_damping * scale).astype(theta0.dtype)


def _iterate(problem, flow, theta0, opts: IntegratorOptions) -> dict:
    flow = flow.at_start(problem, theta0)
    cost0 = problem.cost(theta0)
    target = cost_target(opts, cost0, problem)
    target = jnp.asarray(-jnp.inf, theta0.dtype) if target is None else target

    # the diagnostics of iterate k come from the solve of step k (not for Levenberg–Marquardt,
    # whose damped solve does not factorise D Dᵀ itself)
    reuse = opts.diagnostics and not opts.levenberg_marquardt

    def record(theta, t, x, damping):
        row = {"ts": t, **saved_statistics(problem, flow, theta, x, opts, spectrum=not reuse)}
        if opts.levenberg_marquardt:  # the λ of the step that reached this row
            row["extras"] = {**row["extras"], "damping": damping}
        return row

    def step(state):
        i, theta, t, cost, code, evals, halvings, damping, growth, failures, hist = state
        used = damping
        if opts.levenberg_marquardt:
            h = opts.step_size
            v, x, new_cost, finite, failure, moved, damping, growth = _damped_step(
                problem, flow, theta, cost, damping, growth, h)
            tries = (~moved).astype(halvings.dtype)
            failures = jnp.where(moved, 0, failures + 1)
            # a rejected trial raises λ and goes on, until max_backtracks fail in a row or the
            # step no longer changes θ in this precision (λ has grown past any use)
            negligible = (jnp.linalg.norm(h * v)
                          <= jnp.finfo(theta.dtype).eps * jnp.linalg.norm(theta))
            halt = ~moved & ((failures >= opts.max_backtracks) | negligible)
        else:
            if reuse:
                v, result, ends = flow.velocity_spectrum(problem, theta)
                hist = _with_ends(hist, i, ends)
            else:
                v, result = flow.velocity_and_result(problem, theta)
            v, finite, failure = _checked(v, result)
            h, tries, descent = _search(problem, theta, v, cost, opts)
            x = problem.outputs(theta + h * v)
            new_cost = problem.loss(x, problem.targets)
            # a non-finite field, or no step that lowers C, ends the run where it is; nothing
            # new is recorded
            moved = finite & descent
            halt = ~moved
        theta = jnp.where(moved, theta + h * v, theta)
        t = jnp.where(moved, t + h, t)
        cost = jnp.where(moved, new_cost, cost)
        halted = jnp.where(finite, STOP_CODE["no_descent"], failure)
        code = jnp.where(moved, jnp.where(new_cost <= target, STOP_CODE["cost_target"], code),
                         jnp.where(halt, halted, code))
        hist = jax.lax.cond(
            moved,
            lambda hs: jax.tree_util.tree_map(lambda b, r: b.at[i + 1].set(r), hs,
                                              record(theta, t, x, used)),
            lambda hs: hs,
            hist,
        )
        return (i + 1, theta, t, cost, code, evals + 1, halvings + tries, damping, growth,
                failures, hist)

    zero = jnp.zeros((), theta0.dtype)
    outputs0 = problem.outputs(theta0)
    damping0 = (_initial_damping(problem, theta0, opts) if opts.levenberg_marquardt
                else zero)
    first = record(theta0, zero, outputs0, damping0)
    # row k holds iterate k; rows never reached keep +inf (valid = False)
    hist = jax.tree_util.tree_map(
        lambda a: jnp.full((opts.num_steps + 1, *a.shape), jnp.inf, a.dtype).at[0].set(a), first
    )
    code0 = jnp.where(cost0 <= target, STOP_CODE["cost_target"], STOP_CODE["t1_reached"])
    bad_start = ~(jnp.all(jnp.isfinite(theta0)) & jnp.isfinite(cost0))
    code0 = jnp.where(bad_start, STOP_CODE["non_finite_start"], code0)
    state = (jnp.asarray(0), theta0, zero, cost0, code0, jnp.asarray(0), jnp.asarray(0),
             damping0, jnp.asarray(2.0, theta0.dtype), jnp.asarray(0), hist)
    _, theta, t, cost, code, evals, halvings, *_, hist = jax.lax.while_loop(
        lambda s: (s[0] < opts.num_steps) & (s[4] == STOP_CODE["t1_reached"]), step, state
    )
    if reuse:  # the last iterate took no step: its spectrum apart, unless a failed step's solve gave it
        last = jnp.sum(jnp.isfinite(hist["ts"])) - 1
        hist = jax.lax.cond(
            jnp.isnan(hist["sigma_min"][last]),
            lambda hs: _with_ends(hs, last, spectrum_ends(problem, theta,
                                                          flow.spectrum_route(problem))),
            lambda hs: hs, hist)
    ts = hist.pop("ts")
    return {
        "ts": ts, "valid": jnp.isfinite(ts), **hist, "theta": hist.get("theta"),
        "cost0": cost0, "outputs0": outputs0, "t_final": t, "cost_final": cost,
        "theta_final": theta, "stop_code": code, "num_steps": evals,
        # the step that found no descent (or a failed field) moved nothing; every rejected
        # Levenberg–Marquardt trial is a step that moved nothing
        "num_accepted_steps": evals - (halvings if opts.levenberg_marquardt else (
            (code == STOP_CODE["no_descent"]) | (code == STOP_CODE["non_finite_field"])
            | (code == STOP_CODE["singular"]))),
        "num_rejected_steps": halvings,
        "num_field_evals": evals,
    }


@eqx.filter_jit
def _iterate_batch(problem, flow, theta0, opts):
    return over_seeds(lambda th: _iterate(problem, flow, th, opts), theta0, opts)


def euler_steps(
    problem,
    flow: AbstractFlow,
    theta0: Float[Array, "*b K"] | None = None,
    *,
    options: IntegratorOptions | None = None,
    shard: bool | str = False,
    **settings,
) -> Trajectory:
    """Up to `num_steps` Euler steps θ_{k+1} = θ_k + h_k F(θ_k) of size `step_size` (default
    1/κ, the Gauss–Newton step of the adapted flow) from θ0, optionally searched along F by
    `backtracking`, `grid_search` or `levenberg_marquardt` (MATH §6, §8, §10).

    Stops at the cost target, at a non-finite field or a failed solve, or with 'no_descent'
    when a line search finds no step that lowers C; the stop is recorded, not raised. `ts`
    holds the accumulated Σ h_k, so the result compares directly with the flow at time s;
    `num_rejected_steps` counts step halvings (rejected Levenberg–Marquardt trials).

    **Arguments:**

    - `problem`: the problem (an `AbstractProblem`).
    - `flow`: the vector field F (an `AbstractFlow`).
    - `theta0`: one parameter vector (K,) or a batch (B, K); None: the problem's θ0.
    - `options`: an `IntegratorOptions`; None: the defaults.
    - `shard`: splits the seeds over devices as in `simulate`.
    - `settings`: keyword settings of `IntegratorOptions` that update `options` (step_size,
      num_steps, backtracking, max_backtracks, sufficient_decrease, grid_search,
      levenberg_marquardt, initial_damping, cost_target, cost_target_relative,
      diagnostics, save_theta, extras, seed_batching).

    **Returns:**

    A `Trajectory` (batched when θ0 is) of num_steps + 1 rows: θ0 and each accepted step;
    the rows after the stop have valid = False.

    **Raises:**

    - `TypeError`, `SettingError`, `ValueError`: as `simulate`; also a `ValueError` when
      `levenberg_marquardt` is set and the flow has no damped step (only the `AdaptedFlow`
      has one, with a solver that takes the damped solve).
    """
    flow, opts = prepare(problem, flow, options, settings, stepping=True)
    if opts.levenberg_marquardt:
        flow.check_damped(problem)
    theta0 = initial_theta(problem, theta0)
    return run_batched(_iterate_batch, problem, flow, theta0, opts.resolve(problem, flow), shard)
