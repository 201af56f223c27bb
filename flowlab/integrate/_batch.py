"""Running a compiled solve over a batch of θ0: the θ0 check, sharding, the compile cache and
timing, shared by `simulate` and `euler_steps`."""

import dataclasses
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..devices import device_mesh, replicate, resolve_shard, shard_batch, unshard
from ..flows import AbstractFlow
from ..linalg._spectrum import SEED_AXIS
from ._options import IntegratorOptions
from ._trajectory import Trajectory


def initial_theta(problem, theta0) -> Float[Array, "*b K"]:
    """θ0 as an array of shape (K,) or (B, K) (None: the problem's θ0), checked."""
    theta0 = problem.theta0 if theta0 is None else jnp.asarray(theta0)
    if theta0.ndim not in (1, 2) or theta0.shape[-1] != problem.num_params:
        raise ValueError(
            f"theta0 must have shape (K,) or (B, K) with K = {problem.num_params}, got "
            f"{theta0.shape}"
        )
    if not bool(jnp.all(jnp.isfinite(theta0))):
        raise ValueError("theta0 contains NaN or inf")
    return theta0


def prepare(problem, flow, options, settings, *, stepping: bool = False
            ) -> tuple[AbstractFlow, IntegratorOptions]:
    """The flow resolved for the problem once (`AbstractFlow.resolve`: its 'auto' settings
    decided, checked; `stepping` for Euler steps) and the options of one call: `options`
    updated with keyword `settings`."""
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"flow must be a flowlab flow (AbstractFlow), got {type(flow).__name__}")
    if options is not None and not isinstance(options, IntegratorOptions):
        raise TypeError(f"options must be an IntegratorOptions, got {type(options).__name__}")
    return flow.resolve(problem, stepping=stepping), IntegratorOptions.build(options, **settings)


def over_seeds(fn, theta0, opts: IntegratorOptions):
    """fn applied to each row of θ0 (B, K): vmapped, or one after another by lax.map."""
    if opts.seed_batching == "map":
        return jax.lax.map(fn, theta0)
    return jax.vmap(fn, axis_name=SEED_AXIS)(theta0)


_COMPILED: dict = {}


#: FLOWLAB_XLA_OPT_LEVEL=auto compiles CPU solves of fewer parameters than this at XLA's backend
#: optimisation level 0 (several times faster to compile; at K = 1.05e6 it ran a solve 3× slower,
#: 18 s against 6 s). Not the default: at level 0 a failed Cholesky's NaN went unseen by the
#: finiteness guard (tests/test_underparam.py: max_steps instead of non_finite_field).
FAST_COMPILE_MAX_PARAMS = 100_000


def compiler_options(problem) -> dict | None:
    """XLA options for a solve of `problem` from FLOWLAB_XLA_OPT_LEVEL: 'default' (XLA's
    own, the default), 'auto' (level 0 on CPU below FAST_COMPILE_MAX_PARAMS) or a level 0–3."""
    level = os.environ.get("FLOWLAB_XLA_OPT_LEVEL", "default")
    if level == "default" or jax.default_backend() != "cpu":
        return None
    if level == "auto":
        level = 0 if problem.num_params < FAST_COMPILE_MAX_PARAMS else None
    return None if level is None else {"xla_backend_optimization_level": int(level)}


def compile_cached(jitted, *args, options: dict | None = None):
    """Compile `jitted` once per structure, shapes and static settings of `args` (with XLA
    compiler `options`); returns (compiled, seconds spent compiling now)."""
    # the sharding is part of the key: a sharded batch needs its own executable
    abstract = jax.tree_util.tree_map(
        lambda a: (jax.ShapeDtypeStruct(a.shape, a.dtype), getattr(a, "sharding", None))
        if eqx.is_array(a) else a, args
    )
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    key = (jitted, treedef, tuple(leaves), tuple(sorted((options or {}).items())))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    _COMPILED[key] = jitted.lower(*args).compile(compiler_options=options)
    return _COMPILED[key], time.perf_counter() - start


def run_batched(jitted, problem, flow, theta0, opts, shard) -> Trajectory:
    """Run `jitted(problem, flow, batch, opts)` (vmapped over the seed axis) on θ0 of shape
    (K,) or (B, K), sharded over devices when asked; time it and wrap it as a Trajectory."""
    batched = theta0.ndim == 2
    batch = theta0 if batched else theta0[None]
    args = (problem, flow, batch, opts)
    sharded = resolve_shard(shard, batch.shape[0])
    if sharded:
        mesh = device_mesh()
        opts = dataclasses.replace(opts, seed_batching="vmap")  # each device takes its rows
        args = (*replicate((problem, flow), mesh), shard_batch(batch, mesh), replicate(opts, mesh))
    compiled, compile_time = compile_cached(jitted, *args, options=compiler_options(problem))
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    wall_time = time.perf_counter() - start
    if sharded:
        out = unshard(out, batch.shape[0])
    if not batched:
        out = jax.tree_util.tree_map(lambda a: a[0], out)
    return Trajectory(**out, targets=problem.targets, kappa=problem.kappa,
                      wall_time=wall_time, compile_time=compile_time)
