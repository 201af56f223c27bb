r"""Discrete counterparts: forward-Euler steps θ_{k+1} = θ_k + h_k F(θ_k) of a flow.

For the AdaptedFlow, h = 1/κ is the minimum-norm Gauss–Newton step (quadratic convergence
near a full-rank solution); linearised, each step multiplies the cost by (1 − hκ)². Far from
a solution a full step can raise C by orders of magnitude (MATH §8: a 1-D Poisson fit went to
C ~ 1e14), so a practical fitter searches along the direction v = F(θ_k) (settings of
`IntegratorOptions`):
- `backtracking`: halve h until C decreases (at most `max_backtracks` times); with
  `sufficient_decrease` = c, until the Armijo condition C(θ + hv) ≤ C(θ) + c·h·∂_vC(θ) holds
  (∂_vC = ⟨∇_X C, Dv⟩ by one jvp);
- `grid_search` = n: ENGD's line search (Müller & Zeinhofer 2023): C at h·2^{−j}, j = 0..n−1,
  and the lowest taken (n cost evaluations, no Jacobian).
When no tried step lowers C the run ends where it is with stop reason 'no_descent' (a stall,
e.g. at the round-off floor, or a direction that is not one of descent).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..flows import AbstractFlow
from ._batch import initial_theta, over_seeds, prepare, run_batched
from ._options import IntegratorOptions
from ._record import cost_target, saved_statistics
from ._trajectory import STOP_CODE, Trajectory


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


def _iterate(problem, flow, theta0, opts: IntegratorOptions) -> dict:
    flow = flow.at_start(problem, theta0)
    cost0 = problem.cost(theta0)
    target = cost_target(opts, cost0)
    target = jnp.asarray(-jnp.inf, theta0.dtype) if target is None else target

    def record(theta, t, x):
        return {"ts": t, **saved_statistics(problem, flow, theta, x, opts)}

    def step(state):
        i, theta, t, cost, code, evals, halvings, hist = state
        v = flow.velocity(problem, theta)
        finite = jnp.all(jnp.isfinite(v))
        v = jnp.where(finite, v, 0.0)

        h, tries, descent = _search(problem, theta, v, cost, opts)
        x = problem.outputs(theta + h * v)
        new_cost = problem.loss(x, problem.targets)
        # a non-finite field, or no step that lowers C, ends the run where it is; nothing new
        # is recorded
        moved = finite & descent
        theta = jnp.where(moved, theta + h * v, theta)
        t = jnp.where(moved, t + h, t)
        cost = jnp.where(moved, new_cost, cost)
        code = jnp.where(moved, jnp.where(new_cost <= target, STOP_CODE["cost_target"], code),
                         jnp.where(finite, STOP_CODE["no_descent"], STOP_CODE["non_finite_field"]))
        hist = jax.lax.cond(
            moved,
            lambda hs: jax.tree_util.tree_map(lambda b, r: b.at[i + 1].set(r), hs,
                                              record(theta, t, x)),
            lambda hs: hs,
            hist,
        )
        return i + 1, theta, t, cost, code, evals + 1, halvings + tries, hist

    zero = jnp.zeros((), theta0.dtype)
    outputs0 = problem.outputs(theta0)
    first = record(theta0, zero, outputs0)
    # row k holds iterate k; rows never reached keep +inf (valid = False)
    hist = jax.tree_util.tree_map(
        lambda a: jnp.full((opts.num_steps + 1, *a.shape), jnp.inf, a.dtype).at[0].set(a), first
    )
    code0 = jnp.where(cost0 <= target, STOP_CODE["cost_target"], STOP_CODE["t1_reached"])
    bad_start = ~(jnp.all(jnp.isfinite(theta0)) & jnp.isfinite(cost0))
    code0 = jnp.where(bad_start, STOP_CODE["non_finite_start"], code0)
    state = (jnp.asarray(0), theta0, zero, cost0, code0, jnp.asarray(0), jnp.asarray(0), hist)
    _, theta, t, cost, code, evals, halvings, hist = jax.lax.while_loop(
        lambda s: (s[0] < opts.num_steps) & (s[4] == STOP_CODE["t1_reached"]), step, state
    )
    ts = hist.pop("ts")
    return {
        "ts": ts, "valid": jnp.isfinite(ts), **hist, "theta": hist.get("theta"),
        "cost0": cost0, "outputs0": outputs0, "t_final": t, "cost_final": cost,
        "theta_final": theta, "stop_code": code, "num_steps": evals,
        # the step that found no descent (or a non-finite field) moved nothing
        "num_accepted_steps": evals - ((code == STOP_CODE["no_descent"])
                                       | (code == STOP_CODE["non_finite_field"])),
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
    """Up to `num_steps` Euler steps of size `step_size` (default 1/κ) from θ0 ((K,) or a batch
    (B, K)), stopping at the cost target or a non-finite field. The settings are an
    `IntegratorOptions` updated by keyword `settings` (step_size, num_steps, backtracking,
    max_backtracks, sufficient_decrease, grid_search, cost_target, cost_target_relative,
    diagnostics, save_theta, extras). Stops at the target, at a non-finite field, or with
    'no_descent' when a line search finds no step that lowers C.
    `ts` holds the accumulated Σ h_k, so the result compares directly with the flow at time s;
    `num_rejected_steps` counts step halvings. `shard` splits the seeds over devices as in
    `simulate`."""
    opts = prepare(problem, flow, options, settings)
    theta0 = initial_theta(problem, theta0)
    return run_batched(_iterate_batch, problem, flow, theta0, opts.resolve(problem, flow), shard)
