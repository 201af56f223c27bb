r"""Large N: adapted steps on row subsets (sketch-and-project, randomised block Kaczmarz).

The full adapted step θ ← θ − h D⁺ ∇_X C needs Θ = D Dᵀ ((QN)² memory, (QN)³/3 flops to
factorise): at N = 65 536 that is 34 GB and 9.4e13 flops. A sketch-and-project step takes the
same step on the rows of one block B of b examples only (Gower & Richtárik 2015, "Randomized
iterative methods for linear systems"; for networks: the nonlinear Kaczmarz / sketched
Gauss–Newton step):

    θ_{k+1} = θ_k − h κ D_Bᵀ (Θ_BB + μI)⁻¹ r_B,   r_B = X_B(θ_k) − Y_B,  Θ_BB = D_B D_Bᵀ,

with μ = `damping` (0: D_Bᵀ Θ_BB⁻¹ = D_B⁺). With h = 1/κ (the default) the step is the
minimum-norm θ-step that zeroes the linearised residual of the block: θ_{k+1} is the
orthogonal projection of θ_k onto {θ : r_B(θ_k) + D_B(θ − θ_k) = 0}. The rows are cut once
into m = ⌈N/b⌉ blocks by a random permutation (the last block wraps around to the first rows,
so every block has b distinct examples); each step draws one block uniformly and
independently. Θ_BB and w ↦ D_Bᵀ w come from the problem's Gram strategy on the block
(`LayerwiseGram` for a flowlab.MLP: no row of D is formed), so one step costs
O(b²·Σ widths + b·K + b³) flops and O(K + b² + b·Σ widths) memory, independent of N; the full
cost C(θ) (one forward pass of all N examples) is evaluated every `check_every` steps.

What it preserves of the flow, in the linear model X(θ) = X_k + D(θ − θ_k) with K ≥ QN (rank
QN): the error e = θ − θ⋆ (θ⋆ the projection of θ_k onto the solution set) stays in
range Dᵀ and e_{k+1} = (I − Z_B) e_k with Z_B = D_Bᵀ Θ_BB⁻¹ D_B the orthogonal projector onto
range D_Bᵀ, so

    E[|e_{k+1}|² | e_k] = e_kᵀ (I − E Z) e_k ≤ (1 − λ_min⁺(E Z)) |e_k|²,   E Z = (1/m) Σ_j Z_j,

where λ_min⁺(E Z) = λ_min(Θ_bd⁻¹ Θ)/m for disjoint blocks (Θ_bd: Θ's diagonal blocks; the
block-Jacobi-preconditioned Θ). This is a rate in expectation; a single orbit is random, and
|e|² = rᵀ Θ⁻¹ r is the θ-distance to the solution set, not the cost. It is not the flow's
uniform rate C(s) = e^{−2κs} C(0) for every orbit: that needs all rows at every step.
`predicted_contraction` computes 1 − λ_min⁺(E Z) from Θ (small N only).
"""

import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..linalg import AbstractGram, AutoGram
from ..problem import LeastSquaresProblem, SquaredLoss
from ._batch import compile_cached
from ._results import STOP_CODE, STOP_REASONS

_RUNNING, _TARGET, _NON_FINITE = (STOP_CODE[n] for n in ("t1_reached", "cost_target",
                                                         "non_finite_field"))


def check_block_problem(problem, block_size) -> None:
    """Raise a ValueError unless `problem` is a squared-loss LeastSquaresProblem and
    1 ≤ block_size ≤ N is an integer."""
    if not isinstance(problem, LeastSquaresProblem) or not isinstance(problem.loss, SquaredLoss):
        raise ValueError(  # noqa: TRY004 (a setting error, as for every other check here)
            "sketch-and-project steps need a LeastSquaresProblem with the squared loss (rows "
            f"are examples); got a {type(problem).__name__} with "
            f"{type(getattr(problem, 'loss', None)).__name__}"
        )
    n = problem.num_points
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= n:
        raise ValueError(f"block_size must be an integer in [1, N] with N = {n}, got {block_size!r}")


def block_partition(key: PRNGKeyArray, num_points: int, block_size: int) -> Int[Array, "m b"]:
    """m = ⌈N/b⌉ blocks of b distinct examples: a random permutation of 0..N−1 cut into
    consecutive pieces, the last one wrapping around to the permutation's start.

    **Arguments:**

    - `key`: the PRNG key of the permutation.
    - `num_points`: N.
    - `block_size`: b, in [1, N].

    **Returns:**

    The example indices, shape (m, b).

    **Raises:**

    - `ValueError`: when `block_size` is not in [1, N].
    """
    if not 1 <= block_size <= num_points:
        raise ValueError(f"block_size must be in [1, N] with N = {num_points}, got {block_size}")
    m = math.ceil(num_points / block_size)
    perm = jr.permutation(key, num_points)
    return perm[jnp.arange(m * block_size).reshape(m, block_size) % num_points]


def restrict(problem: LeastSquaresProblem, items: Int[Array, " b"]) -> LeastSquaresProblem:
    """The same fit on the examples `items` only (its X, Y and D are rows of the problem's)."""
    q = problem.out_size
    sub = eqx.tree_at(lambda p: (p.inputs, p.targets), problem,
                      (problem.inputs[items], problem.targets.reshape(-1, q)[items].reshape(-1)))
    object.__setattr__(sub, "num_points", items.shape[0])  # a fresh copy: static size follows
    return sub


def block_step(problem, gram: AbstractGram, theta: Float[Array, " K"], items: Int[Array, " b"],
               step_size, damping) -> Float[Array, " K"]:
    """θ − h κ D_Bᵀ (Θ_BB + μI)⁻¹ r_B on the examples B = `items` (Cholesky of Θ_BB)."""
    sub = restrict(problem, items)
    theta_bb, transpose = gram(sub, theta)
    r = sub.outputs(theta) - sub.targets
    theta_bb = theta_bb + damping * jnp.eye(r.shape[0], dtype=r.dtype)
    w = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(theta_bb, lower=True), r)
    return theta - step_size * problem.kappa * transpose(w)


class SketchTrajectory(eqx.Module):
    """The record of a sketch-and-project run: C at every check (every `check_every` steps;
    entries after the stop are +inf), the extras there, the final θ and why it ended.
    Returned by `sketch_project`; `contraction()` fits the per-step factor of C.

    **Attributes:**

    - `steps`: the step count at each check, shape (S,).
    - `cost`: C at each check (+inf after the stop).
    - `extras`: name -> the values of each `extras` function at the checks.
    - `cost0`, `cost_final`: C at θ0 and where the run ended.
    - `theta_final`: θ where the run ended (the last finite check).
    - `num_steps`: the steps taken.
    - `stop_code`: the stop reason's code (`stop_reason` names it).
    - `block_size`: b.
    - `num_blocks`: m = ⌈N/b⌉.
    - `wall_time`, `compile_time`: seconds the run and its compilation took.
    """

    steps: Int[Array, " S"]
    cost: Float[Array, " S"]
    extras: dict
    cost0: Float[Array, ""]
    cost_final: Float[Array, ""]
    theta_final: Float[Array, " K"]
    num_steps: Int[Array, ""]
    stop_code: Int[Array, ""]
    block_size: int = eqx.field(static=True)
    num_blocks: int = eqx.field(static=True)
    wall_time: float = eqx.field(static=True, default=math.nan)
    compile_time: float = eqx.field(static=True, default=math.nan)

    @property
    def stop_reason(self) -> str:
        """Why the run ended (`flowlab.STOP_REASONS`): 't1_reached' when the step budget ran
        out, 'cost_target', or 'non_finite_field' when C became non-finite."""
        return STOP_REASONS[int(self.stop_code)]

    @property
    def valid(self):
        return jnp.isfinite(self.cost)

    def contraction(self, lo: float = 1e-14, hi: float = 1e-1) -> float:
        """The per-step factor q of C (C_k ≈ c·q^k) from a least-squares fit of log C against
        the step over the checks with lo < C/C(0) < hi (NaN with fewer than two)."""
        ratio = self.cost / self.cost0
        keep = jnp.isfinite(ratio) & (ratio > lo) & (ratio < hi)
        if int(jnp.sum(keep)) < 2:
            return math.nan
        k = self.steps[keep].astype(ratio.dtype)
        slope = jnp.polyfit(k, jnp.log(ratio[keep]), 1)[0]
        return float(jnp.exp(slope))


def _run(problem, gram, theta0, blocks, key, step_size, damping, target, num_checks,
         check_every, extras):
    m = blocks.shape[0]

    def step(k, theta):
        j = jr.randint(jr.fold_in(key, k), (), 0, m)
        return block_step(problem, gram, theta, blocks[j], step_size, damping)

    def record(theta):
        return {name: fn(problem, theta) for name, fn in extras}

    cost0 = problem.cost(theta0)
    costs = jnp.full((num_checks + 1,), jnp.inf, theta0.dtype).at[0].set(cost0)
    hist = jax.tree_util.tree_map(
        lambda a: jnp.full((num_checks + 1, *a.shape), jnp.nan, a.dtype).at[0].set(a),
        record(theta0))

    def cond(s):
        c, _, _, code, _, _ = s
        return (c < num_checks) & (code == _RUNNING)

    def body(s):
        c, theta, cost, code, costs, hist = s
        new = jax.lax.fori_loop(c * check_every, (c + 1) * check_every, step, theta)
        new_cost = problem.cost(new)
        finite = jnp.isfinite(new_cost)
        theta = jnp.where(finite, new, theta)
        code = jnp.where(finite, jnp.where(new_cost <= target, _TARGET, _RUNNING), _NON_FINITE)
        costs = costs.at[c + 1].set(jnp.where(finite, new_cost, jnp.inf))
        hist = jax.tree_util.tree_map(lambda h, r: h.at[c + 1].set(r), hist, record(theta))
        return c + 1, theta, jnp.where(finite, new_cost, cost), code, costs, hist

    code0 = jnp.where(cost0 <= target, _TARGET,
                      jnp.where(jnp.isfinite(cost0), _RUNNING, _NON_FINITE))
    c, theta, cost, code, costs, hist = jax.lax.while_loop(
        cond, body, (jnp.asarray(0), theta0, cost0, code0, costs, hist))
    return {"cost": costs, "extras": hist, "cost0": cost0, "cost_final": cost,
            "theta_final": theta, "num_steps": c * check_every, "stop_code": code}


_run_jit = eqx.filter_jit(_run)


def sketch_project(
    problem: LeastSquaresProblem,
    theta0: Float[Array, " K"] | None = None,
    *,
    block_size: int,
    num_steps: int,
    key: PRNGKeyArray,
    step_size: float | None = None,
    damping: float = 0.0,
    check_every: int | None = None,
    cost_target: float | None = None,
    cost_target_relative: float | None = None,
    gram: AbstractGram | None = None,
    extras: dict[str, Callable] | None = None,
) -> SketchTrajectory:
    r"""Up to `num_steps` sketch-and-project steps θ ← θ − h κ D_Bᵀ(Θ_BB + μI)⁻¹ r_B on random
    blocks B of `block_size` examples (module docstring), jit-compiled as one lax loop.

    `step_size` h defaults to 1/κ (the block's Gauss–Newton projection; the linear theory
    contracts for 0 < hκ < 2); `damping` μ ≥ 0. The full cost is evaluated every
    `check_every` steps (default: one pass over the blocks, m = ⌈N/b⌉ steps), where the run
    stops at the larger of `cost_target` and `cost_target_relative`·C(θ0) or at a non-finite
    cost (θ stays at the last finite check). `extras` maps names to functions (problem, θ) ->
    array recorded at every check. `key` draws the partition and the blocks; the same key
    gives the same run. `gram` (default AutoGram: layerwise for an MLP) forms Θ_BB.

    **Arguments:**

    - `problem`: a `LeastSquaresProblem` with the squared loss (rows are examples).
    - `theta0`: θ0, shape (K,); None: the problem's.
    - `block_size`: b, examples per block, in [1, N].
    - `num_steps`: the step budget, ≥ 1.
    - `key`: the PRNG key of the partition and of the blocks drawn.
    - `step_size`: h > 0; None: 1/κ.
    - `damping`: μ ≥ 0.
    - `check_every`: steps between evaluations of the full cost; None: m.
    - `cost_target`, `cost_target_relative`: stop at C ≤ the larger of `cost_target` and
      `cost_target_relative`·C(θ0).
    - `gram`: how Θ_BB and w ↦ D_Bᵀw are formed; None: `AutoGram()`.
    - `extras`: name -> fn(problem, θ), recorded at every check.

    **Returns:**

    A `SketchTrajectory`.

    **Raises:**

    - `ValueError`: when the problem is not a squared-loss `LeastSquaresProblem`, or
      `block_size`, `num_steps`, `check_every`, `step_size`, `damping`, a cost target or the
      shape of `theta0` is out of range.
    """
    check_block_problem(problem, block_size)
    gram = AutoGram() if gram is None else gram
    n = problem.num_points
    m = math.ceil(n / block_size)
    check_every = m if check_every is None else check_every
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    h = 1.0 / problem.kappa if step_size is None else step_size
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"step_size must be positive and finite, got {step_size!r}")
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be >= 0 and finite, got {damping!r}")
    for name, value in (("cost_target", cost_target),
                        ("cost_target_relative", cost_target_relative)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value!r}")
    theta0 = problem.theta0 if theta0 is None else jnp.asarray(theta0)
    if theta0.shape != (problem.num_params,):
        raise ValueError(f"theta0 must have shape ({problem.num_params},), got {theta0.shape}")
    num_checks = math.ceil(num_steps / check_every)
    kpart, kdraw = jr.split(key)
    blocks = block_partition(kpart, n, block_size)
    cost0 = problem.cost(theta0)
    targets = [t for t in (cost_target, None if cost_target_relative is None
                           else cost_target_relative * cost0) if t is not None]
    target = jnp.max(jnp.asarray(targets, theta0.dtype)) if targets else -jnp.inf
    dt = theta0.dtype
    args = (problem, gram, theta0, blocks, kdraw, jnp.asarray(h, dt), jnp.asarray(damping, dt),
            jnp.asarray(target, dt), num_checks, check_every, tuple(sorted((extras or {}).items())))
    compiled, compile_time = compile_cached(_run_jit, *args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - start
    steps = jnp.arange(num_checks + 1) * check_every
    return SketchTrajectory(steps=steps, **out, block_size=block_size, num_blocks=m,
                            wall_time=wall, compile_time=compile_time)


class ContractionPrediction(eqx.Module):
    """Linear-theory predictions for `sketch_project` (see `predicted_contraction`).

    **Attributes:**

    - `bound`: 1 − λ_min⁺(E Z), the bound on the expected contraction of |e|² per step.
    - `eigenvalues`: those of E Z on range Dᵀ, ascending.
    - `residual`: E C_k / C_0 for k = 0..num_steps (None without `num_steps`).
    - `error`: E|e_k|²/|e_0|² for k = 0..num_steps (None without `num_steps`).
    """

    bound: Float[Array, ""]
    eigenvalues: Float[Array, " QN"]
    residual: Float[Array, " S"] | None
    error: Float[Array, " S"] | None


def predicted_contraction(problem, theta: Float[Array, " K"] | None = None, *, block_size: int,
                          key: PRNGKeyArray, num_steps: int | None = None,
                          gram: AbstractGram | None = None) -> ContractionPrediction:
    r"""What the linear model X(θ) ≈ X(θ_0) + D(θ − θ_0) predicts for `sketch_project` from θ
    (θ0 by default) with the same `block_size` and `key` and h = 1/κ, from the full Θ at θ
    (O((QN)³): small N only).

    `bound` = 1 − λ_min⁺(E Z): E|e_{k+1}|² ≤ bound·|e_k|² for the θ-error e (module
    docstring); `eigenvalues`: those of E Z on range Dᵀ, ascending. E Z = (1/m) Σ_j D_jᵀ Θ_jj⁻¹
    D_j = (1/m) Dᵀ A D with A = Σ_j S_j Θ_jj⁻¹ S_jᵀ (S_j: the rows of block j), so its nonzero
    eigenvalues are those of Lᵀ A L / m with Θ = L Lᵀ.
    With `num_steps`: the expected curves E|r_k|²/|r_0|² (`residual`, = E C_k / C_0) and
    E|e_k|²/|e_0|² (`error`, |e|² = rᵀ Θ⁻¹ r), k = 0..num_steps, exactly, from the second
    moment R_k = E[r_k r_kᵀ]: a step on block j maps r ↦ T_j r, T_j = I − Θ S_j Θ_jj⁻¹ S_jᵀ,
    so R_{k+1} = (1/m) Σ_j T_j R_k T_jᵀ (O(QN³) flops per step).

    **Arguments:**

    - `problem`: a `LeastSquaresProblem` with the squared loss.
    - `theta`: where to linearise; None: θ0.
    - `block_size`, `key`: as given to `sketch_project` (the same partition).
    - `num_steps`: the length of the expected curves; None: no curves.
    - `gram`: how the full Θ is formed; None: `AutoGram()`.

    **Returns:**

    A `ContractionPrediction`.

    **Raises:**

    - `ValueError`: when the problem is not a squared-loss `LeastSquaresProblem` or
      `block_size` is not an integer in [1, N].
    """
    check_block_problem(problem, block_size)
    gram = AutoGram() if gram is None else gram
    theta = problem.theta0 if theta is None else theta
    kpart, _ = jr.split(key)
    blocks = block_partition(kpart, problem.num_points, block_size)
    q = problem.out_size
    rows = (blocks[:, :, None] * q + jnp.arange(q)[None, None, :]).reshape(blocks.shape[0], -1)
    return _predicted(problem, gram, theta, rows, num_steps)


@eqx.filter_jit
def _predicted(problem, gram, theta, rows, num_steps):
    theta_full, _ = gram(problem, theta)
    m = rows.shape[0]
    inverses = jax.vmap(lambda idx: jnp.linalg.inv(theta_full[idx[:, None], idx[None, :]]))(rows)

    def add(a, x):
        idx, inv = x
        return a.at[idx[:, None], idx[None, :]].add(inv), None

    a, _ = jax.lax.scan(add, jnp.zeros_like(theta_full), (rows, inverses))
    chol = jnp.linalg.cholesky(theta_full)
    eig = jnp.linalg.eigvalsh(chol.T @ a @ chol) / m
    if num_steps is None:
        return ContractionPrediction(1.0 - eig[0], eig, None, None)

    r0 = problem.residual(theta)
    # T_j R T_jᵀ with T_j = I − G_j S_jᵀ, G_j = Θ[:, j] Θ_jj⁻¹
    gains = jax.vmap(lambda idx, inv: theta_full[:, idx] @ inv)(rows, inverses)

    def moment(r_mat, _):
        def one(g, idx):
            rs = r_mat[idx, :]  # S_jᵀ R
            t = r_mat - g @ rs
            return t - (t[:, idx]) @ g.T
        r_new = jnp.mean(jax.vmap(one)(gains, rows), axis=0)
        r_new = 0.5 * (r_new + r_new.T)
        return r_new, r_new

    _, moments = jax.lax.scan(moment, jnp.outer(r0, r0), None, length=num_steps)
    res = jnp.concatenate([jnp.ones(1, r0.dtype), jnp.trace(moments, axis1=1, axis2=2) / (r0 @ r0)])
    tinv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(r0.shape[0], dtype=r0.dtype))
    e0 = r0 @ tinv @ r0
    err = jnp.concatenate([jnp.ones(1, r0.dtype), jnp.einsum("ij,kji->k", tinv, moments) / e0])
    return ContractionPrediction(1.0 - eig[0], eig, res, err)
