r"""Discrete counterparts: forward-Euler steps θ_{k+1} = θ_k + h_k F(θ_k) of a flow.

For the AdaptedFlow, h = 1/κ is the minimum-norm Gauss–Newton step (quadratic convergence
near a full-rank solution); linearised, each step multiplies the cost by (1 − hκ)². With
`backtracking` a step is halved until the cost decreases (at most `max_backtracks` times).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .flows import AbstractFlow
from .linalg import numerical_rank, singular_values
from .simulate import _CODE, Trajectory, initial_theta, run_batched


class _StepOptions(eqx.Module):
    step_size: float = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    cost_target: float | None = eqx.field(static=True)
    cost_target_relative: float | None = eqx.field(static=True)
    backtracking: bool = eqx.field(static=True)
    max_backtracks: int = eqx.field(static=True)
    diagnostics: bool = eqx.field(static=True)
    save_theta: bool = eqx.field(static=True)


def _iterate(problem, flow, theta0, opts: _StepOptions) -> dict:
    cost0 = problem.cost(theta0)
    target = jnp.asarray(-jnp.inf, theta0.dtype)
    if opts.cost_target is not None:
        target = jnp.maximum(target, opts.cost_target)
    if opts.cost_target_relative is not None:
        target = jnp.maximum(target, opts.cost_target_relative * cost0)

    def record(theta, t, x):
        out = {"ts": t, "cost": problem.loss(x, problem.targets), "outputs": x,
               "theta_norm": jnp.linalg.norm(theta)}
        nan = jnp.full((), jnp.nan, theta.dtype)
        if opts.diagnostics:
            sigma = singular_values(problem, theta)
            out.update(sigma_min=sigma[0], sigma_max=sigma[-1],
                       rank=numerical_rank(sigma).astype(theta.dtype))
        else:
            out.update(sigma_min=nan, sigma_max=nan, rank=nan)
        if opts.save_theta:
            out["theta"] = theta
        return out

    def step(state):
        i, theta, t, cost, code, evals, halvings, hist = state
        v = flow.velocity(problem, theta)
        finite = jnp.all(jnp.isfinite(v))
        v = jnp.where(finite, v, 0.0)

        def shrink(s):
            h, _, tries = s
            return h / 2, problem.cost(theta + h / 2 * v), tries + 1

        h = jnp.asarray(opts.step_size, theta.dtype)
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
        code = jnp.where(finite, jnp.where(new_cost <= target, _CODE["cost_target"], code),
                         _CODE["non_finite_field"])
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
    code0 = jnp.where(cost0 <= target, _CODE["cost_target"], _CODE["t1_reached"])
    state = (jnp.asarray(0), theta0, zero, cost0, code0, jnp.asarray(0), jnp.asarray(0), hist)
    _, theta, t, cost, code, evals, halvings, hist = jax.lax.while_loop(
        lambda s: (s[0] < opts.num_steps) & (s[4] == _CODE["t1_reached"]), step, state
    )
    ts = hist.pop("ts")
    return {
        "ts": ts, "valid": jnp.isfinite(ts), **hist, "theta": hist.get("theta"), "extras": {},
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
    step_size: float | None = None,
    num_steps: int = 50,
    cost_target: float | None = None,
    cost_target_relative: float | None = None,
    backtracking: bool = False,
    max_backtracks: int = 30,
    diagnostics: bool = True,
    save_theta: bool = False,
    shard: bool | str = False,
) -> Trajectory:
    """Up to `num_steps` Euler steps of size h (default 1/κ) from θ0 ((K,) or a batch (B, K)),
    stopping at the cost target or a non-finite field. `ts` holds the accumulated Σ h_k, so
    the result compares directly with the flow at time s; `num_rejected_steps` counts step
    halvings. `shard` splits the seeds over devices as in `simulate`."""
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"flow must be a flowlab flow, got {type(flow).__name__}")
    flow.check(problem)
    step_size = 1.0 / problem.kappa if step_size is None else step_size
    for name, value in (("step_size", step_size), ("cost_target", cost_target),
                        ("cost_target_relative", cost_target_relative)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    theta0 = initial_theta(problem, theta0)
    opts = _StepOptions(float(step_size), int(num_steps), cost_target, cost_target_relative,
                        bool(backtracking), int(max_backtracks), bool(diagnostics),
                        bool(save_theta))
    return run_batched(_iterate_batch, problem, flow, theta0, opts, shard)
