"""What both integrators save at each save point, and the cost target they stop at."""

import jax.numpy as jnp

from ..linalg import spectrum_ends
from ..theory import cost_floor
from ._options import IntegratorOptions


def saved_statistics(problem, flow, theta, outputs, opts: IntegratorOptions,
                     spectrum: bool = True) -> dict:
    """The cost, outputs and |θ| at θ; σ_min, σ_max and rank of D (NaN without diagnostics, or
    with `spectrum` False: the caller fills them from its solve); θ with save_theta; the
    extras."""
    nan = jnp.full((), jnp.nan, theta.dtype)
    out = {"cost": problem.loss(outputs, problem.targets), "outputs": outputs,
           "theta_norm": jnp.linalg.norm(theta), "sigma_min": nan, "sigma_max": nan, "rank": nan}
    if opts.diagnostics and spectrum:  # from a Cholesky factor where Θ resolves D (no eigendecomposition)
        sigma_min, sigma_max, rank = spectrum_ends(problem, theta, flow.spectrum_route(problem))
        out.update(sigma_min=sigma_min, sigma_max=sigma_max, rank=rank)
    if opts.save_theta:
        out["theta"] = theta
    out["extras"] = {name: fn(problem, flow, theta) for name, fn in opts.extras}
    return out


def cost_target(opts: IntegratorOptions, cost0, problem=None):
    """The cost to stop at: the larger of cost_target and C_min + cost_target_relative·(C(θ0) −
    C_min), C_min the loss's infimum (0 for the squared loss; 0 where the loss states none);
    None when neither is set."""
    relative = None
    if opts.cost_target_relative is not None:
        c_min = jnp.zeros_like(cost0)
        if problem is not None:
            c_min = jnp.asarray(problem.loss.minimum(problem.targets), cost0.dtype)
            c_min = jnp.where(jnp.isfinite(c_min), c_min, 0.0)
        relative = c_min + opts.cost_target_relative * (cost0 - c_min)
    targets = [t for t in (opts.cost_target, relative) if t is not None]
    if not targets:
        return None
    return jnp.max(jnp.stack(targets)) if len(targets) > 1 else targets[0]


def resolved_cost(problem, opts: IntegratorOptions):
    """The cost of an error of 100·(atol + rtol·max(1, |Y|∞)) on every output, or the round-off
    floor if larger: below it a solve with these tolerances cannot tell costs apart."""
    noise = 100 * (opts.atol + opts.rtol * jnp.maximum(1.0, jnp.max(jnp.abs(problem.targets))))
    return jnp.maximum(0.5 * problem.kappa * problem.num_outputs * noise**2,
                       cost_floor(problem.targets, problem.kappa))
