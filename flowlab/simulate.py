"""Integrate a flow with diffrax, saving statistics rather than states, with named stops."""

import math
import time
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from .devices import device_mesh, replicate, resolve_shard, shard_batch, unshard
from .flows import AbstractFlow
from .linalg import numerical_rank, singular_values

#: Why an integration ended; Trajectory.stop_code indexes this tuple.
STOP_REASONS = (
    "t1_reached",  # integrated to t1
    "cost_target",  # C fell to the target (event, located by root finding)
    "rank_loss",  # σ_min(D) below sigma_min_tol, or σ_max/σ_min above max_condition
    "theta_diverged",  # |θ| above theta_norm_max
    "non_finite_field",  # the vector field returned NaN/inf (e.g. a failed Cholesky)
    "max_steps",  # the step budget ran out
    "solver_failed",  # any other diffrax failure
)
_CODE = {name: i for i, name in enumerate(STOP_REASONS)}


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


class Trajectory(eqx.Module):
    """The record of one integration (or a batch: every array gains leading seed axes).

    Saved at `ts` (entries after the stop have valid = False and value +inf): the cost, the
    outputs X, |θ|, and when diagnostics were on σ_min(D), σ_max(D) and the numerical rank
    (NaN when off); `extras` holds what the `extras` functions of `simulate` returned at
    each save. `stop_reason` names why the run ended (see STOP_REASONS).
    """

    ts: Float[Array, "*b S"]
    valid: Bool[Array, "*b S"]
    cost: Float[Array, "*b S"]
    outputs: Float[Array, "*b S QN"]
    theta_norm: Float[Array, "*b S"]
    sigma_min: Float[Array, "*b S"]
    sigma_max: Float[Array, "*b S"]
    rank: Float[Array, "*b S"]
    theta: Float[Array, "*b S K"] | None
    extras: dict[str, Array]
    cost0: Float[Array, "*b"]
    outputs0: Float[Array, "*b QN"]
    targets: Float[Array, " QN"]
    t_final: Float[Array, "*b"]
    cost_final: Float[Array, "*b"]
    theta_final: Float[Array, "*b K"]
    stop_code: Int[Array, "*b"]
    num_steps: Int[Array, "*b"]
    num_accepted_steps: Int[Array, "*b"]
    num_rejected_steps: Int[Array, "*b"]
    num_field_evals: Int[Array, "*b"]
    kappa: float = eqx.field(static=True)
    wall_time: float = eqx.field(static=True, default=math.nan)
    compile_time: float = eqx.field(static=True, default=math.nan)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.cost0.shape

    @property
    def stop_reason(self):
        """The stop reason's name (a nested list of names for a batch)."""
        codes = np.asarray(self.stop_code)
        if codes.ndim == 0:
            return STOP_REASONS[int(codes)]
        return np.vectorize(lambda c: STOP_REASONS[c], otypes=[object])(codes).tolist()

    def seed(self, i: int) -> "Trajectory":
        """The i-th member of a batched trajectory."""
        if not self.batch_shape:
            raise IndexError("this trajectory is not batched")
        targets = self.targets
        out = jax.tree_util.tree_map(lambda a: a[i], self)
        return eqx.tree_at(lambda tr: tr.targets, out, targets)


class _Options(eqx.Module):
    """Numbers are arrays (traced: changing them does not recompile); switches are static."""

    t1: Array
    ts: Array
    rtol: Array
    atol: Array
    dt0: Array | None
    cost_target: Array | None
    cost_target_relative: Array | None
    sigma_min_tol: Array | None
    max_condition: Array | None
    theta_norm_max: Array | None
    solver: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    check_finite: bool = eqx.field(static=True)
    diagnostics: bool = eqx.field(static=True)
    save_theta: bool = eqx.field(static=True)
    progress: bool = eqx.field(static=True)
    extras: tuple = eqx.field(static=True, default=())


def _guards(problem, flow, theta, opts: _Options) -> dict[str, Array]:
    """Each degeneration check at θ: True where it trips."""
    out = {}
    if opts.theta_norm_max is not None:
        out["theta_diverged"] = jnp.linalg.norm(theta) > opts.theta_norm_max
    if opts.check_finite:
        out["non_finite_field"] = ~jnp.all(jnp.isfinite(flow.velocity(problem, theta)))
    if opts.sigma_min_tol is not None or opts.max_condition is not None:
        sigma = singular_values(problem, theta)
        bad = ~jnp.all(jnp.isfinite(sigma))
        if opts.sigma_min_tol is not None:
            bad = bad | (sigma[0] < opts.sigma_min_tol)
        if opts.max_condition is not None:
            bad = bad | (sigma[0] * opts.max_condition < sigma[-1])
        out["rank_loss"] = bad
    return out


def _solve(problem, flow: AbstractFlow, theta0, opts: _Options) -> dict:
    targets = problem.targets
    cost0 = problem.cost(theta0)

    def stats(t, y, args):
        x = problem.outputs(y)
        out = {"cost": problem.loss(x, targets), "outputs": x, "theta_norm": jnp.linalg.norm(y)}
        if opts.diagnostics:
            sigma = singular_values(problem, y)
            out.update(sigma_min=sigma[0], sigma_max=sigma[-1],
                       rank=numerical_rank(sigma).astype(y.dtype))
        if opts.save_theta:
            out["theta"] = y
        out["extras"] = {name: fn(problem, flow, y) for name, fn in opts.extras}
        return out

    cond_fns = {}
    target = None
    if opts.cost_target is not None:
        target = opts.cost_target
    if opts.cost_target_relative is not None:
        rel = opts.cost_target_relative * cost0
        target = rel if target is None else jnp.maximum(target, rel)
    if target is not None:
        cond_fns["cost"] = lambda t, y, args, **kw: jnp.log(problem.cost(y)) - jnp.log(target)
    if _any_guard(opts):
        cond_fns["guard"] = lambda t, y, args, **kw: jnp.any(
            jnp.stack(list(_guards(problem, flow, y, opts).values()))
        )
    event = None
    if cond_fns:
        event = diffrax.Event(
            cond_fns, root_finder=optx.Newton(rtol=1e-12, atol=1e-12) if target is not None else None
        )

    solver = make_solver(opts.solver)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flow),
        solver,
        t0=0.0,
        t1=opts.t1,
        dt0=opts.dt0,
        y0=theta0,
        args=problem,
        saveat=diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=jnp.asarray(opts.ts), fn=stats), diffrax.SubSaveAt(t1=True)]
        ),
        stepsize_controller=diffrax.PIDController(rtol=opts.rtol, atol=opts.atol),
        event=event,
        max_steps=opts.max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if opts.progress else diffrax.NoProgressMeter(),
    )
    saved, ts_saved = sol.ys[0], sol.ts[0]
    t_final, theta_final = sol.ts[1][-1], sol.ys[1][-1]

    code = jnp.where(sol.result == diffrax.RESULTS.successful, _CODE["t1_reached"],
                     _CODE["solver_failed"])
    code = jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, _CODE["max_steps"], code)
    if event is not None:
        if "guard" in cond_fns:
            tripped = _guards(problem, flow, theta_final, opts)
            guard_code = _CODE["rank_loss"]
            for name in ("non_finite_field", "theta_diverged", "rank_loss"):
                if name in tripped:
                    guard_code = jnp.where(tripped[name], _CODE[name], guard_code)
            code = jnp.where(sol.event_mask["guard"], guard_code, code)
        if "cost" in cond_fns:
            code = jnp.where(sol.event_mask["cost"], _CODE["cost_target"], code)

    nan = jnp.full_like(ts_saved, jnp.nan)
    steps = sol.stats["num_steps"]
    per_step = _field_evals_per_step(solver)
    evals = -1 + 0 * steps if per_step is None else per_step[0] * steps + per_step[1]
    return {
        "ts": ts_saved,
        "valid": jnp.isfinite(ts_saved),
        "cost": saved["cost"],
        "outputs": saved["outputs"],
        "theta_norm": saved["theta_norm"],
        "sigma_min": saved.get("sigma_min", nan),
        "sigma_max": saved.get("sigma_max", nan),
        "rank": saved.get("rank", nan),
        "theta": saved.get("theta"),
        "extras": saved["extras"],
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


def _any_guard(opts: _Options) -> bool:
    return (
        opts.theta_norm_max is not None
        or opts.check_finite
        or opts.sigma_min_tol is not None
        or opts.max_condition is not None
    )


def _positive(name, value):
    if value is None:
        return None
    if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _options(problem, flow, t1, ts, num_saves, solver, rtol, atol, dt0, max_steps, cost_target,
             cost_target_relative, sigma_min_tol, max_condition, theta_norm_max, check_finite,
             diagnostics, save_theta, progress, extras=None) -> _Options:
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"flow must be a flowlab flow (AbstractFlow), got {type(flow).__name__}")
    flow.check(problem)
    t1 = _positive("t1", t1)
    if ts is None:
        if int(num_saves) < 2:
            raise ValueError(f"num_saves must be >= 2, got {num_saves}")
        ts = np.linspace(0.0, t1, int(num_saves))
    ts = np.asarray(ts, dtype=float)
    if ts.ndim != 1 or ts.size == 0 or np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > t1:
        raise ValueError(f"ts must be increasing times in [0, t1 = {t1}], got {ts}")
    if cost_target_relative is not None and _positive("cost_target_relative", cost_target_relative) >= 1:
        raise ValueError(f"cost_target_relative must be < 1, got {cost_target_relative}")
    if max_condition == "auto":
        max_condition = flow.default_max_condition(problem)
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    make_solver(solver)
    dtype = problem.theta0.dtype

    def num(name, value):
        value = _positive(name, value)
        return None if value is None else jnp.asarray(value, dtype)

    return _Options(
        t1=num("t1", t1), ts=jnp.asarray(ts, dtype), rtol=num("rtol", rtol),
        atol=num("atol", atol), dt0=num("dt0", dt0),
        cost_target=num("cost_target", cost_target),
        cost_target_relative=num("cost_target_relative", cost_target_relative),
        sigma_min_tol=num("sigma_min_tol", sigma_min_tol),
        max_condition=num("max_condition", max_condition),
        theta_norm_max=num("theta_norm_max", theta_norm_max),
        solver=solver, max_steps=int(max_steps), check_finite=bool(check_finite),
        diagnostics=bool(diagnostics), save_theta=bool(save_theta), progress=bool(progress),
        extras=tuple(sorted((extras or {}).items())),
    )


def solve(problem, flow: AbstractFlow, theta0: Float[Array, " K"], t1: float, **kwargs) -> Trajectory:
    """The pure, jit- and vmap-able core of `simulate` for one θ0 (no timing)."""
    opts = _options(problem, flow, t1, **{**_DEFAULTS, **kwargs})
    return Trajectory(**_solve(problem, flow, theta0, opts), targets=problem.targets,
                      kappa=problem.kappa)


_DEFAULTS = dict(
    ts=None, num_saves=101, solver="tsit5", rtol=1e-8, atol=1e-8, dt0=None, max_steps=100_000,
    cost_target=None, cost_target_relative=None, sigma_min_tol=None, max_condition="auto",
    theta_norm_max=1e6, check_finite=True, diagnostics=True, save_theta=False, progress=False,
    extras=None,
)


@eqx.filter_jit
def _solve_batch(problem, flow, theta0, opts):
    return jax.vmap(lambda th: _solve(problem, flow, th, opts))(theta0)


_COMPILED: dict = {}


def compile_cached(jitted, *args):
    """Compile `jitted` once per structure, shapes and static settings of `args`;
    returns (compiled, seconds spent compiling now)."""
    # the sharding is part of the key: a sharded batch needs its own executable
    abstract = jax.tree_util.tree_map(
        lambda a: (jax.ShapeDtypeStruct(a.shape, a.dtype), getattr(a, "sharding", None))
        if eqx.is_array(a) else a, args
    )
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    key = (jitted, treedef, tuple(leaves))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    _COMPILED[key] = jitted.lower(*args).compile()
    return _COMPILED[key], time.perf_counter() - start


def simulate(
    problem,
    flow: AbstractFlow,
    theta0: Float[Array, "*b K"] | None = None,
    t1: float = 10.0,
    *,
    ts: Sequence[float] | None = None,
    num_saves: int = 101,
    solver: str = "tsit5",
    rtol: float = 1e-8,
    atol: float = 1e-8,
    dt0: float | None = None,
    max_steps: int = 100_000,
    cost_target: float | None = None,
    cost_target_relative: float | None = None,
    sigma_min_tol: float | None = None,
    max_condition: float | str | None = "auto",
    theta_norm_max: float | None = 1e6,
    check_finite: bool = True,
    diagnostics: bool = True,
    save_theta: bool = False,
    extras: dict | None = None,
    progress: bool = False,
    shard: bool | str = False,
) -> Trajectory:
    r"""Integrate θ' = flow(θ) from θ0 over s in [0, t1] with diffrax (jit-compiled).

    θ0 is one parameter vector (K,) or a batch (B, K) of them (one vmapped solve);
    None means the problem's θ0. Saves at `ts` (default `num_saves` equally spaced times)
    the cost, the outputs and diagnostics (σ_min, σ_max, rank of D from the Gram, |θ|);
    θ itself only with save_theta. `extras` maps names to functions (problem, flow, θ) ->
    array, saved likewise into Trajectory.extras (e.g. horizontality diagnostics).

    Stops early, with the reason recorded, when: C ≤ cost_target, or C ≤
    cost_target_relative·C(θ0) (root-found to the solver's accuracy); σ_min(D) <
    sigma_min_tol; σ_max/σ_min > max_condition ('auto': the flow's choice, 1e7 when D⁺ goes
    through the Gram, 1e10 through QR/SVD of D, off for flows that do not invert D); |θ| > theta_norm_max; the field is not finite; max_steps is exhausted.
    The guards are checked once per accepted step (one extra field evaluation and, for
    the rank guards, one eigendecomposition of the Gram).

    shard=True splits the seed axis over all devices (flowlab.devices: padded to a multiple
    of the device count, padding stripped); 'auto' does so when there are several devices
    and several seeds. Results equal the unsharded run's.
    """
    theta0 = initial_theta(problem, theta0)
    opts = _options(
        problem, flow, t1, ts, num_saves, solver, rtol, atol, dt0, max_steps, cost_target,
        cost_target_relative, sigma_min_tol, max_condition, theta_norm_max, check_finite,
        diagnostics, save_theta, progress, extras,
    )
    return run_batched(_solve_batch, problem, flow, theta0, opts, shard)


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


def run_batched(jitted, problem, flow, theta0, opts, shard) -> Trajectory:
    """Run `jitted(problem, flow, batch, opts)` (vmapped over the seed axis) on θ0 of shape
    (K,) or (B, K), sharded over devices when asked; time it and wrap it as a Trajectory."""
    batched = theta0.ndim == 2
    batch = theta0 if batched else theta0[None]
    args = (problem, flow, batch, opts)
    sharded = resolve_shard(shard, batch.shape[0])
    if sharded:
        mesh = device_mesh()
        args = (*replicate((problem, flow), mesh), shard_batch(batch, mesh), replicate(opts, mesh))
    compiled, compile_time = compile_cached(jitted, *args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    wall_time = time.perf_counter() - start
    if sharded:
        out = unshard(out, batch.shape[0])
    if not batched:
        out = jax.tree_util.tree_map(lambda a: a[0], out)
    return Trajectory(**out, targets=problem.targets, kappa=problem.kappa,
                      wall_time=wall_time, compile_time=compile_time)
