r"""Discrete counterparts: forward-Euler steps θ_{k+1} = θ_k + h_k F(θ_k) of a flow.

For the AdaptedFlow, h = 1/κ is the minimum-norm Gauss–Newton step (quadratic convergence
near a full-rank solution); linearised, each step multiplies the cost by (1 − hκ)². With
`backtracking` a step is halved until the cost decreases (at most `max_backtracks` times).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..flows import AbstractFlow
from ._batch import initial_theta, prepare, run_batched
from ._options import IntegratorOptions
from ._record import cost_target, saved_statistics
from ._trajectory import STOP_CODE, Trajectory


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

        def shrink(s):
            h, _, tries = s
            return h / 2, problem.cost(theta + h / 2 * v), tries + 1

        h = opts.step_size
        tries = jnp.asarray(0)
        if opts.backtracking:
            h, _, tries = jax.lax.while_loop(
                lambda s: (~(s[1] < cost)) & (s[2] < opts.max_backtracks), shrink,
                (h, problem.cost(theta + h * v), tries),
            )
        x = problem.outputs(theta + h * v)
        new_cost = problem.loss(x, problem.targets)
        # a non-finite field ends the run where it is; nothing new is recorded
        theta = jnp.where(finite, theta + h * v, theta)
        t = jnp.where(finite, t + h, t)
        cost = jnp.where(finite, new_cost, cost)
        code = jnp.where(finite, jnp.where(new_cost <= target, STOP_CODE["cost_target"], code),
                         STOP_CODE["non_finite_field"])
        hist = jax.lax.cond(
            finite,
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
    state = (jnp.asarray(0), theta0, zero, cost0, code0, jnp.asarray(0), jnp.asarray(0), hist)
    _, theta, t, cost, code, evals, halvings, hist = jax.lax.while_loop(
        lambda s: (s[0] < opts.num_steps) & (s[4] == STOP_CODE["t1_reached"]), step, state
    )
    ts = hist.pop("ts")
    return {
        "ts": ts, "valid": jnp.isfinite(ts), **hist, "theta": hist.get("theta"),
        "cost0": cost0, "outputs0": outputs0, "t_final": t, "cost_final": cost,
        "theta_final": theta, "stop_code": code, "num_steps": evals,
        "num_accepted_steps": evals, "num_rejected_steps": halvings,
        "num_field_evals": evals,
    }


@eqx.filter_jit
def _iterate_batch(problem, flow, theta0, opts):
    return jax.vmap(lambda th: _iterate(problem, flow, th, opts))(theta0)


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
    max_backtracks, cost_target, cost_target_relative, diagnostics, save_theta, extras).
    `ts` holds the accumulated Σ h_k, so the result compares directly with the flow at time s;
    `num_rejected_steps` counts step halvings. `shard` splits the seeds over devices as in
    `simulate`."""
    opts = prepare(problem, flow, options, settings)
    theta0 = initial_theta(problem, theta0)
    return run_batched(_iterate_batch, problem, flow, theta0, opts.resolve(problem, flow), shard)
