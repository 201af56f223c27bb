r"""Pseudo-inverse solvers: every one computes v = D⁺ g, the minimal-norm least-squares solution
of D v = g:
- 'cholesky': v = Dᵀ Θ⁻¹ g with Θ = D Dᵀ (needs rank D = QN, so K ≥ QN);
- 'qr': QR of D (least squares when K < QN, minimal norm when K ≥ QN; needs full rank);
- 'svd': v = V Σ⁺ Uᵀ g with singular values below rcond·σ_max dropped (any rank);
- 'normal_cholesky': v = (DᵀD)⁻¹ Dᵀ g (full column rank, K ≤ QN; cheaper than QR of D);
- 'cg': matrix-free conjugate gradients on Θ w = g (K ≥ QN) or DᵀD v = Dᵀ g (K < QN), with
  products by D and Dᵀ from jvp / vjp, unpreconditioned. The fallback when K < QN and D does
  not fit in memory.
- 'nystrom': matrix-free conjugate residuals on Θ w = g with a Nyström preconditioner
  (`_nystrom`), K ≥ QN: the route when Θ does not fit in memory.

`resolve_solver('auto')` takes Cholesky of the auto Gram when K ≥ QN and Θ fits in memory,
Nyström-preconditioned conjugate residuals when it does not, and QR of D when K < QN (see
`auto_solver` for why not the normal equations).
`solve_damped` (Cholesky, GramOrQR, Nyström) gives the Levenberg–Marquardt step Dᵀ(Θ + λI)⁻¹g.
Each solver's `max_condition` is the σ_max/σ_min(D) it resolves (`_spectrum`): the routes through
Θ or DᵀD square cond(D), the factorisations of D do not.
"""

import abc
import os
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg
import lineax as lx
from equinox import AbstractClassVar
from jaxtyping import Array, Bool, Float

from ._gram import AbstractGram, AutoGram
from ._nystrom import (
    JacobianProducts,
    KrylovResult,
    conjugate_residual,
    jacobian_products,
    nystrom_preconditioner,
)
from ._spectrum import (
    all_over_seeds,
    condition_limit,
    ends_from_cholesky,
    ends_from_svd,
    spectrum_ends,
)


class AbstractPinvSolver(eqx.Module):
    """Computes D⁺ g at θ.

    A solver states its `route` to D⁺: 'gram' (through Θ or DᵀD: squares cond(D)), 'factor'
    (a factorisation of D itself) or 'adaptive' (the Gram while it resolves D, a factorisation
    of D where it does not); the route sets the default guard (`max_condition`) and how σ(D)
    is measured. A subclass defines `check` and `solve` (and may override
    `solve_with_rank`).
    """

    route: AbstractClassVar[str]

    def max_condition(self, dtype) -> float:
        """σ_max/σ_min(D) beyond which the solve is no longer trustworthy (the default guard)."""
        return condition_limit(self.route, dtype)

    @abc.abstractmethod
    def check(self, problem) -> None:
        """Raise a ValueError when the solver cannot apply to the problem's shapes."""

    @abc.abstractmethod
    def solve(self, problem, theta, rhs: Float[Array, " QN"]
              ) -> tuple[Float[Array, " K"], lx.RESULTS]:
        """v = D⁺ g at θ for g = `rhs`.

        **Returns:** `(v, result)`: the solution and lineax's verdict on the linear solve
        (`singular` where a factorisation failed on a finite right-hand side; the
        integrators turn it into a stop reason, `flowlab.integrate.from_linear_solve`)."""

    def solve_with_rank(self, problem, theta, rhs: Float[Array, " QN"]
                        ) -> tuple[Float[Array, " K"], lx.RESULTS, Bool[Array, ""]]:
        """`solve`, and whether the solve resolved D at full rank (every singular value kept
        as it is). Solvers that need full rank report True: where D loses rank their
        factorisation fails instead (`singular`) or the rank guard stops the run.

        **Returns:** `(v, result, full_rank)`."""
        return (*self.solve(problem, theta, rhs), jnp.asarray(True))

    def solve_with_spectrum(self, problem, theta, rhs: Float[Array, " QN"]) -> tuple:
        """`solve_with_rank` and (σ_min, σ_max, rank) of D at θ for the saved diagnostics,
        taken from the factorisation the solve made where it made one (`GramOrQRSolver`,
        `SVDSolver`); the others measure them apart (`spectrum_ends` on their route).

        **Returns:** `(v, result, full_rank, (sigma_min, sigma_max, rank))`."""
        return (*self.solve_with_rank(problem, theta, rhs),
                spectrum_ends(problem, theta, self.route))


class AbstractDampedPinvSolver(AbstractPinvSolver):
    """A pseudo-inverse solver that also takes the damped (Levenberg–Marquardt) solve.

    A subclass defines `solve_damped` besides `check` and `solve`; `euler_steps` with
    `levenberg_marquardt` needs one.
    """

    @abc.abstractmethod
    def solve_damped(self, problem, theta, rhs: Float[Array, " QN"], damping
                     ) -> tuple[Float[Array, " K"], lx.RESULTS]:
        """v = Dᵀ(Θ + λI)⁻¹ g = (DᵀD + λI)⁻¹Dᵀ g, λ = `damping` ≥ 0 (K ≥ QN): the
        Levenberg–Marquardt step, D⁺g as λ → 0 (MATH §10).

        **Returns:** `(v, result)` as `solve`."""


def _finite_result(v, rhs) -> lx.RESULTS:
    """`singular` where v is not finite although g is: the solve broke down."""
    failed = ~jnp.all(jnp.isfinite(v)) & jnp.all(jnp.isfinite(rhs))
    return lx.RESULTS.where(failed, lx.RESULTS.singular, lx.RESULTS.successful)


def _through_gram(gram, problem, theta, rhs, damping=None):
    """Dᵀ(Θ + λI)⁻¹ g by Cholesky of Θ + λI, λ = `damping` (None: Dᵀ Θ⁻¹ g), and lineax's
    result. λ > 0 bounds the condition number by λ_max/λ + 1."""
    theta_gram, transpose = gram(problem, theta)
    if damping is not None:
        theta_gram = theta_gram + damping * jnp.eye(theta_gram.shape[0], dtype=theta_gram.dtype)
    op = lx.MatrixLinearOperator(theta_gram, lx.positive_semidefinite_tag)
    sol = lx.linear_solve(op, rhs, lx.Cholesky(), throw=False)
    return transpose(sol.value), sol.result


def _needs_full_row_rank(name, problem):
    if not problem.overparametrised:
        raise ValueError(
            f"the {name!r} solver needs full row rank, so K >= QN; here K = "
            f"{problem.num_params} < QN = {problem.num_outputs} (underparametrised). "
            "Use solver='qr' or 'svd'."
        )


class CholeskySolver(AbstractDampedPinvSolver):
    """v = Dᵀ (D Dᵀ)⁻¹ g by a Cholesky factorisation of the Gram matrix (full row rank).

    **Arguments:**

    - `gram`: how Θ and w ↦ Dᵀw are obtained (an `AbstractGram`); the default `AutoGram`
      uses the layerwise Gram for an MLP and `BlockedGram` otherwise; `ShardedGram()` splits
      the rows over devices.

    **Raises:**

    - `ValueError`: from `check` (when a flow is resolved for the problem) where K < QN:
      Cholesky of Θ needs full row rank.

    A failed factorisation at run time is no exception: the solve reports lineax's
    `singular`, and the run stops with that reason.
    """

    route: ClassVar[str] = "gram"  # cond(Θ) = cond(D)²
    gram: AbstractGram = AutoGram()

    def check(self, problem):
        _needs_full_row_rank("cholesky", problem)

    def solve(self, problem, theta, rhs):
        return _through_gram(self.gram, problem, theta, rhs)

    def solve_damped(self, problem, theta, rhs, damping):
        return _through_gram(self.gram, problem, theta, rhs, damping)


class GramOrQRSolver(AbstractDampedPinvSolver):
    """v = D⁺g by Cholesky of Θ while Θ resolves D, by a factorisation of D where it does not
    (K ≥ QN): QR of D by default, or `fallback` (the 'auto' route takes the spectrally
    filtered SVD, which also covers rank loss).

    Decided at each evaluation: λ_min(Θ) is estimated by 8 steps of inverse iteration with the
    Cholesky factor (Rayleigh quotient, 16 triangular solves: O(QN²) beside the O(QN³)
    factorisation), λ_max by max Θ_ii; when cond(D)² = λ_max/λ_min exceeds the square of the
    Gram route's limit in this dtype (1e7 in float64, 432 in float32) or the factor is not
    finite, the solve goes through the factorisation of D (cond(D) instead of cond(D)²). One
    branch runs per call; in a vmapped batch of seeds the choice is made for the whole batch
    (the fallback as soon as one seed needs it), so that it stays a branch instead of a select
    that runs both.

    **Arguments:**

    - `iterations`: steps of inverse iteration for λ_min(Θ).
    - `gram`: how Θ and w ↦ Dᵀw are obtained (default `AutoGram`).
    - `fallback`: the solver used where Θ does not resolve D; None: `QRSolver()`.

    **Raises:**

    - `ValueError`: from `check` where K < QN (the Gram route needs full row rank).
    """

    iterations: int = eqx.field(static=True, default=8)

    route: ClassVar[str] = "adaptive"  # guards at the QR limit; σ(D) by SVD only when needed
    gram: AbstractGram = AutoGram()
    fallback: "AbstractPinvSolver | None" = None  # None: QR of D

    def check(self, problem):
        _needs_full_row_rank("gram_or_qr", problem)

    def max_condition(self, dtype):
        return None if self.fallback is not None else super().max_condition(dtype)

    def solve(self, problem, theta, rhs):
        return self.solve_with_rank(problem, theta, rhs)[:2]

    def solve_with_rank(self, problem, theta, rhs):
        return self._solve(problem, theta, rhs, spectrum=False)[:3]

    def solve_with_spectrum(self, problem, theta, rhs):
        # the diagnostics from the factor the solve made (Lanczos on Θ and Θ⁻¹), or from the
        # fallback's SVD of D; an SVD of D apart only where Θ resolves the solve but not σ_min
        return self._solve(problem, theta, rhs, spectrum=True)

    def _solve(self, problem, theta, rhs, spectrum: bool):
        theta_gram, transpose = self.gram(problem, theta)
        factor = jnp.linalg.cholesky(theta_gram)

        def inverse_step(_, v):
            v = jax.scipy.linalg.cho_solve((factor, True), v)
            return v / jnp.linalg.norm(v)

        v0 = jnp.ones_like(rhs) / jnp.sqrt(rhs.shape[0])
        v = jax.lax.fori_loop(0, self.iterations, inverse_step, v0)
        lam_min = v @ theta_gram @ v
        lam_max = jnp.max(jnp.diag(theta_gram))
        resolved = all_over_seeds(jnp.all(jnp.isfinite(factor)) & jnp.all(jnp.isfinite(v)) & (
            lam_max < condition_limit("gram", theta.dtype) ** 2 * lam_min))
        fallback = QRSolver() if self.fallback is None else self.fallback

        def through_gram(_):
            v = transpose(jax.scipy.linalg.cho_solve((factor, True), rhs))
            out = (v, _finite_result(v, rhs), jnp.asarray(True))
            if not spectrum:
                return out
            low, high, rank, ok = ends_from_cholesky(theta_gram, factor)
            ends = jax.lax.cond(ok, lambda _: (low, high, rank),
                                lambda _: spectrum_ends(problem, theta, "factor"), None)
            return (*out, ends)

        def through_factor(_):
            if spectrum:
                return fallback.solve_with_spectrum(problem, theta, rhs)
            return fallback.solve_with_rank(problem, theta, rhs)

        return jax.lax.cond(resolved, through_gram, through_factor, None)

    def solve_damped(self, problem, theta, rhs, damping):
        return _through_gram(self.gram, problem, theta, rhs, damping)


class QRSolver(AbstractPinvSolver):
    """D⁺ g by a QR factorisation of D (full rank: column rank if K < QN, row rank if not).

    Any shape: least squares when K < QN, minimal norm when K ≥ QN. D is materialised
    (`AbstractProblem.jacobian`).
    """

    route: ClassVar[str] = "factor"

    def check(self, problem):
        pass  # any shape: least squares when K < QN, minimal norm when K ≥ QN

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta)
        sol = lx.linear_solve(lx.MatrixLinearOperator(d), rhs, lx.QR(), throw=False)
        return sol.value, sol.result


class SVDSolver(AbstractDampedPinvSolver):
    r"""D⁺ g by the thin SVD D = U diag(σ) Vᵀ, any shape and rank: v = V f(σ) Uᵀg.

    `filter` = 'truncate': f(σ) = 1/σ for σ > μ = rcond·σ_max, 0 below (the truncated
    pseudo-inverse); 'smooth': f(σ) = (1/σ)·t/(1 + t), t = (σ/μ)⁴, equal to 1/σ up to a
    relative (μ/σ)⁴ on the modes above μ (1.8e-6 at σ = 1e-9·σ_max with the 'auto' cutoff in
    float64, where Tikhonov's σ/(σ² + μ²) is off by 1e-3) and ≈ σ³/μ⁴ → 0 below it, so the
    field is continuous in θ where the truncation jumps as a singular value crosses the cutoff
    (what an adaptive ODE solver needs; MATH §8).

    **Arguments:**

    - `rcond`: μ/σ_max, in (0, 1); None: eps·max(QN, K), numpy's rank cutoff (and the default
      rank guard applies; an explicit cutoff defines the solve at any rank, so no guard).
    - `filter`: 'truncate' or 'smooth' (`SVD_FILTERS`).

    **Raises:**

    - `ValueError`: when `filter` is not one of `SVD_FILTERS` or `rcond` is not in (0, 1).
    """

    route: ClassVar[str] = "factor"
    rcond: float | None = eqx.field(static=True, default=None)
    filter: str = eqx.field(static=True, default="truncate")

    def __check_init__(self):
        if self.filter not in SVD_FILTERS:
            raise ValueError(f"SVDSolver filter {self.filter!r}; expected one of {SVD_FILTERS}")
        if self.rcond is not None and not 0 < self.rcond < 1:
            raise ValueError(f"SVDSolver rcond = {self.rcond!r}; expected 0 < rcond < 1")

    def check(self, problem):
        pass  # any shape and rank

    def max_condition(self, dtype):
        # a chosen cutoff defines the solve at any rank: no rank guard by default
        return None if self.rcond is not None else super().max_condition(dtype)

    def solve(self, problem, theta, rhs):
        return self.solve_with_rank(problem, theta, rhs)[:2]

    def solve_with_rank(self, problem, theta, rhs):
        return self.solve_with_spectrum(problem, theta, rhs)[:3]

    def solve_with_spectrum(self, problem, theta, rhs):
        u, sigma, vt = jnp.linalg.svd(problem.jacobian(theta), full_matrices=False)
        rcond = self.rcond
        if rcond is None:
            rcond = max(problem.num_outputs, problem.num_params) * float(
                jnp.finfo(theta.dtype).eps)
        kept = sigma > rcond * sigma[0]
        inverse = jnp.where(sigma > 0, 1.0 / jnp.where(sigma > 0, sigma, 1.0), 0.0)
        if self.filter == "smooth":
            t = (sigma / (rcond * sigma[0])) ** 4
            gain = inverse * (t / (1.0 + t))
        else:
            gain = jnp.where(kept, inverse, 0.0)
        v = vt.T @ (gain * (u.T @ rhs))
        full_rank = jnp.all(kept) & (sigma.shape[0] == problem.num_outputs)
        return v, _finite_result(v, rhs), full_rank, ends_from_svd(problem, sigma)

    def solve_damped(self, problem, theta, rhs, damping):
        """The Levenberg–Marquardt step at any shape and rank. K ≥ QN: (DᵀD + λI)⁻¹Dᵀg =
        V diag(σ/(σ² + λ)) Uᵀg. K < QN: (DᵀD + λM)⁻¹Dᵀg with Moré's scaling M = diag(DᵀD)
        (floored at 1e-12 of its largest entry), by Cholesky of the K × K matrix: the step is
        then invariant to a rescaling of θ's coordinates, as MINPACK's (MATH §10, where the
        measured effect of the scaling is stated).

        **Returns:**

        `(v, result)`: the step and lineax's verdict on the linear solve."""
        d = problem.jacobian(theta)
        if problem.overparametrised:
            u, sigma, vt = jnp.linalg.svd(d, full_matrices=False)
            v = vt.T @ (sigma / (sigma**2 + damping) * (u.T @ rhs))
            return v, _finite_result(v, rhs)
        normal = d.T @ d
        scale = jnp.diag(normal)
        scale = jnp.maximum(scale, 1e-12 * jnp.max(scale))
        op = lx.MatrixLinearOperator(normal + damping * jnp.diag(scale),
                                     lx.positive_semidefinite_tag)
        sol = lx.linear_solve(op, d.T @ rhs, lx.Cholesky(), throw=False)
        return sol.value, sol.result


class NormalCholeskySolver(AbstractPinvSolver):
    """v = (DᵀD)⁻¹ Dᵀ g by Cholesky of the K × K normal matrix (full column rank, K ≤ QN).

    D by jacfwd (K forward passes). About half the flops of QR of D, but it squares the
    condition number: σ is resolved down to about √eps·σ_max (QR: eps·σ_max).

    **Raises:**

    - `ValueError`: from `check` where K > QN (the normal matrix needs full column rank).
    """

    route: ClassVar[str] = "gram"  # DᵀD squares cond(D)

    def check(self, problem):
        if problem.num_params > problem.num_outputs:
            raise ValueError(
                f"the 'normal_cholesky' solver needs full column rank, so K <= QN; here K = "
                f"{problem.num_params} > QN = {problem.num_outputs}. Use 'cholesky'."
            )

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta, "fwd")
        op = lx.MatrixLinearOperator(d.T @ d, lx.positive_semidefinite_tag)
        sol = lx.linear_solve(op, d.T @ rhs, lx.Cholesky(), throw=False)
        return sol.value, sol.result


class CGSolver(AbstractPinvSolver):
    """Matrix-free D⁺ g by conjugate gradients, products by D (jvp) and Dᵀ (vjp) only.

    K ≥ QN: solve Θ w = g with Θ u = D(Dᵀ u), then v = Dᵀ w; K < QN: solve DᵀD v = Dᵀ g
    (CGLS). Memory O(K + QN): the fallback when D does not fit and K < QN (for K ≥ QN,
    NystromSolver preconditions the same products). Iterations grow like
    √cond(Θ) = σ_max/σ_min, so it suits well-conditioned problems; an unconverged solve
    returns the last iterate (throw=False) and max_steps bounds the work.

    **Arguments:**

    - `rtol`, `atol`: lineax CG's relative and absolute tolerances.
    - `max_steps`: the iteration budget of one solve. With a number, a solve that runs out
      returns its last iterate and lineax's `max_steps_reached`, which the integrators do not
      treat as a stop. None: lineax's default of 10 × the size of the system, and lineax
      reports running out as `singular`, which stops the run.
    """

    route: ClassVar[str] = "gram"  # iterates on Θ or DᵀD
    rtol: float = eqx.field(static=True, default=1e-12)
    atol: float = eqx.field(static=True, default=1e-14)
    max_steps: int | None = eqx.field(static=True, default=None)

    def check(self, problem):
        pass  # both regimes: Θ w = g when K ≥ QN, the normal equations when K < QN

    def solve(self, problem, theta, rhs):
        _, d = jax.linearize(problem.outputs, theta)
        dt_tuple = jax.linear_transpose(d, theta)

        def dt(w):
            return dt_tuple(w)[0]

        cg = lx.CG(rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)
        wide = problem.overparametrised
        size = problem.num_outputs if wide else problem.num_params
        struct = jax.ShapeDtypeStruct((size,), theta.dtype)
        matvec = (lambda w: d(dt(w))) if wide else (lambda v: dt(d(v)))
        op = lx.FunctionLinearOperator(matvec, struct, lx.positive_semidefinite_tag)
        sol = lx.linear_solve(op, rhs if wide else dt(rhs), cg, throw=False)
        return (dt(sol.value) if wide else sol.value), sol.result


class NystromSolver(AbstractDampedPinvSolver):
    r"""D⁺g = Dᵀw, Θ w = g solved by Nyström-preconditioned conjugate residuals without forming
    Θ (K ≥ QN; `_nystrom`).

    Memory O(K + QN·(l + Σ M_l)) for an MLP (O(K + QN·l) plus a linearisation otherwise),
    against (QN)² for a dense Θ: the route for QN in the tens of thousands. Per Krylov step one
    product by D and one by Dᵀ; the preconditioner costs l columns of Θ once per solve.
    `rtol` is the relative residual |g − Θw|/|g| the solve stops at; a solve that reaches
    `max_steps` first returns its last iterate, whose residual `solve_with_stats` reports.
    `solve_damped` solves (Θ + λI)w = g the same way: the Levenberg–Marquardt steps that large
    QN needs (where full Gauss–Newton steps do not converge: docs, Benchmarks → Large N).

    **Arguments:**

    - `rank`: l, the preconditioner's rank (at most QN is used; for an MLP, l/Q sampled
      examples).
    - `rtol`: the relative residual |g − Θw|/|g| in (0, 1) the solve stops at.
    - `max_steps`: the Krylov step budget of one solve.
    - `seed`: the seed of the sampled columns (MLP) or of the Gaussian test matrix.

    **Raises:**

    - `ValueError`: when `rank` or `max_steps` is not an integer ≥ 1 or `rtol` not in (0, 1);
      from `check` where K < QN (Θ w = g needs full row rank).
    """

    route: ClassVar[str] = "gram"
    rank: int = eqx.field(static=True, default=1024)
    rtol: float = eqx.field(static=True, default=1e-8)
    max_steps: int = eqx.field(static=True, default=1000)
    seed: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        if not 0 < self.rtol < 1:
            raise ValueError(f"rtol must lie in (0, 1), got {self.rtol!r}")

    def check(self, problem):
        _needs_full_row_rank("nystrom", problem)

    def preconditioner(
        self, problem, theta, products: JacobianProducts | None = None, shift=None
    ):
        """The Nyström preconditioner of Θ at θ (rank min(l, QN)), with shift μ = `shift`
        (default: the smallest kept eigenvalue; see `nystrom_preconditioner`)."""
        products = jacobian_products(problem, theta) if products is None else products
        key = jr.key(self.seed)
        qn = problem.num_outputs
        if products.columns is not None:
            n_examples = problem.inputs.shape[0]
            q = qn // n_examples
            count = min(max(1, self.rank // q), n_examples)
            examples = jnp.sort(jr.choice(key, n_examples, (count,), replace=False))
            sketch = products.columns(examples)
            rows = (examples[:, None] * q + jnp.arange(q)[None, :]).reshape(-1)
            return nystrom_preconditioner(sketch, rows, shift)
        rank = min(self.rank, qn)
        test, _ = jnp.linalg.qr(jr.normal(key, (qn, rank), problem.theta0.dtype))
        sketch = jax.vmap(lambda v: products.jvp(products.vjp(v)), in_axes=1, out_axes=1)(test)
        return nystrom_preconditioner(sketch, test, shift)

    def solve_with_stats(
        self, problem, theta, rhs, damping=None
    ) -> tuple[Float[Array, " K"], KrylovResult]:
        """v and the Krylov solve's statistics; with `damping` λ the system is (Θ + λI)w = g
        and the preconditioner's shift μ is λ (Frangella–Tropp–Udell's setting for Θ + μI)."""
        products = jacobian_products(problem, theta)
        if damping is not None:
            damping = jnp.asarray(damping, rhs.dtype)
        pre = self.preconditioner(problem, theta, products, shift=damping)

        def matvec(w):
            out = products.jvp(products.vjp(w))
            return out if damping is None else out + damping * w

        out = conjugate_residual(matvec, rhs, pre, self.rtol, self.max_steps)
        return products.vjp(out.solution), out

    def solve(self, problem, theta, rhs):
        v = self.solve_with_stats(problem, theta, rhs)[0]
        return v, _finite_result(v, rhs)

    def solve_damped(self, problem, theta, rhs, damping):
        v = self.solve_with_stats(problem, theta, rhs, damping)[0]
        return v, _finite_result(v, rhs)


SOLVERS = {
    "cholesky": CholeskySolver,
    "gram_or_qr": GramOrQRSolver,
    "qr": QRSolver,
    "svd": SVDSolver,
    "normal_cholesky": NormalCholeskySolver,
    "cg": CGSolver,
    "nystrom": NystromSolver,
}

#: the SVD solver's spectral filters (`SVDSolver.filter`).
SVD_FILTERS = ("truncate", "smooth")

#: largest QN·K for which 'auto' keeps QR of D ready beside the Gram (GramOrQRSolver).
QR_FALLBACK_SIZE = 2**22

#: fraction of the device's memory that 'auto' lets a Gram or a Jacobian take.
MEMORY_FRACTION = 0.25


def memory_budget() -> int:
    """Bytes 'auto' may spend on one dense matrix: MEMORY_FRACTION of the default device's
    memory (its bytes_limit on a GPU/TPU, physical RAM on a CPU)."""
    total = None
    try:
        stats = jax.devices()[0].memory_stats()
        total = stats.get("bytes_limit") if stats else None
    except (AttributeError, RuntimeError, NotImplementedError):  # CPUs may not report it
        total = None
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 8 * 2**30
    return int(MEMORY_FRACTION * total)


def auto_rcond(dtype) -> float:
    """The 'auto' route's spectral cutoff relative to σ_max: eps^(2/3) (3.7e-11 in float64,
    4.9e-5 in float32): between the cutoffs that stop PINN fits early and those that take
    twice the steps (the measurements: docs, Benchmarks → Defaults against the best manual
    settings), far above the eps·σ_max at which round-off in an SVD of D begins.

    **Arguments:**

    - `dtype`: the floating dtype of θ.

    **Returns:**

    The cutoff as a float."""
    return float(jnp.finfo(dtype).eps) ** (2.0 / 3.0)


def auto_solver(problem, memory_budget_bytes: int | None = None, *,
                smooth: bool = False) -> AbstractPinvSolver:
    """The 'auto' choice from the problem's shapes and memory, robust to rank loss.

    K ≥ QN: Cholesky of Θ (AutoGram: layerwise for an MLP, else in row blocks) while Θ
    resolves D, and where it does not (numerically rank-deficient D, as PINN Jacobians of
    smooth networks are) the SVD of D with the cutoff `auto_rcond` (`GramOrQRSolver` with an
    SVD fallback), when D is small enough to factorise beside the Gram; Cholesky alone when it
    is not; matrix-free Nyström-preconditioned conjugate residuals when Θ does not fit.
    K < QN: the SVD of D with the same cutoff (QR's result at full column rank, defined where
    the rank drops), or CG when D does not fit.

    **Arguments:**

    - `problem`: the problem whose shapes (K, QN) and dtype decide.
    - `memory_budget_bytes`: the bytes one dense matrix may take; None:
      `flowlab.linalg.memory_budget()` (a quarter of the device's memory).
    - `smooth`: the SVD's filter is the smooth one (`SVDSolver`, filter='smooth') instead of
      the truncation, so that the field is continuous (`simulate` asks for it; the Euler steps
      truncate).

    **Returns:**

    A `GramOrQRSolver` with an SVD fallback, a `CholeskySolver` or a `NystromSolver`
    (K ≥ QN); an `SVDSolver` or a `CGSolver` (K < QN).
    """
    k, qn = problem.num_params, problem.num_outputs
    budget = memory_budget() if memory_budget_bytes is None else memory_budget_bytes
    item = jnp.dtype(problem.theta0.dtype).itemsize
    factor = SVDSolver(rcond=auto_rcond(problem.theta0.dtype),
                       filter="smooth" if smooth else "truncate")
    if problem.overparametrised:
        need = qn * qn  # the auto Gram holds Θ, and of D at most a block (BlockedGram)
        if need * item > budget:
            return NystromSolver()
        # the factorisation of D as the fallback where Θ cannot resolve D, when D is small
        # enough that it (O(QN²·K) flops, only where needed) costs little beside the Gram
        return GramOrQRSolver(fallback=factor) if qn * k <= QR_FALLBACK_SIZE else CholeskySolver()
    if (qn * k + k * k) * item > budget:
        return CGSolver()
    return factor


def resolve_solver(solver: "str | AbstractPinvSolver", problem, *,
                   smooth: bool = False) -> AbstractPinvSolver:
    """A solver instance from a name; 'auto' is `auto_solver(problem)`: Cholesky of the
    (layerwise, for an MLP) Gram when K ≥ QN, QR of D when K < QN, Nyström-preconditioned
    conjugate residuals (K ≥ QN) or CG (K < QN) when the matrices do not fit in memory."""
    if isinstance(solver, AbstractPinvSolver):
        out = solver
    elif solver == "auto":
        out = auto_solver(problem, smooth=smooth)
    elif solver in SOLVERS:
        out = SOLVERS[solver]()
    else:
        raise ValueError(f"unknown solver {solver!r}; expected 'auto' or one of {sorted(SOLVERS)}")
    out.check(problem)
    return out
