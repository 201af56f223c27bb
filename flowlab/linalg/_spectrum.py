r"""The spectrum of D, numerical rank and the conditioning limits of each route to D⁺: the one
place where rank and condition cutoffs are decided.

- Routes through Θ = DDᵀ (or DᵀD, or CG on either) square cond(D): in float64 they lose ~1e-2
  relative accuracy at cond(D) = 1e7, in float32 at 432 (`condition_limit('gram', dtype)`).
- Factorisations of D itself (QR, SVD) resolve cond(D) up to ~1e10 with 1e-6 accuracy in
  float64 (`condition_limit('factor', dtype)`).
- A singular value counts as zero below rcond·σ_max: max(QN, K)·eps from an SVD of D
  (`default_rcond`, numpy's matrix_rank), √(eps·r) from a Gram (`numerical_rank`).
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._gram import AbstractGram, auto_gram

#: float64: σ_max/σ_min(D) beyond which a solve through Θ = DDᵀ (or DᵀD) is no longer
#: trustworthy (its relative error cond(D)²·eps reaches 2e-2).
GRAM_MAX_CONDITION = 1e7
#: float64: σ_max/σ_min(D) beyond which a solve through a factorisation of D (QR, SVD) is not.
FACTOR_MAX_CONDITION = 1e10
_EPS64 = float(jnp.finfo(jnp.float64).eps)


def condition_limit(route: str, dtype) -> float:
    """The σ_max/σ_min(D) a route to D⁺ resolves in `dtype`: 'gram' (through Θ or DᵀD, error
    ≈ cond²·eps) scales as eps^(−1/2): 1e7 in float64, 432 in float32; 'factor' (QR, SVD of
    D, error ≈ cond·eps) is 1e10 in float64 and 2e-2/eps (1.9e5) in lower precision, where
    a 1e10 margin is not available."""
    eps = float(jnp.finfo(dtype).eps)
    if route == "gram":
        return GRAM_MAX_CONDITION * math.sqrt(_EPS64 / eps)
    if route in ("factor", "adaptive"):
        return FACTOR_MAX_CONDITION if eps <= _EPS64 else 2e-2 / eps
    raise ValueError(f"unknown route {route!r}; expected 'gram', 'factor' or 'adaptive'")


#: the name of the vmapped seed axis (`flowlab.integrate.over_seeds`).
SEED_AXIS = "seeds"


def all_over_seeds(pred):
    """`pred` for every seed of a vmapped batch (a collective over the seed axis, so that a
    lax.cond on it stays a branch instead of becoming a select that runs both sides); `pred`
    itself outside a batch."""
    try:
        return jax.lax.pmin(pred.astype(jnp.int32), SEED_AXIS) > 0
    except NameError:  # not inside vmap over SEED_AXIS
        return pred


def default_rcond(problem) -> float:
    """max(QN, K)·eps: numpy's matrix_rank cutoff for σ from an SVD of D, relative to σ_max."""
    eps = float(jnp.finfo(problem.theta0.dtype).eps)
    return max(problem.num_outputs, problem.num_params) * eps


def jacobian_svd(problem, theta: Float[Array, " K"]):
    """Thin SVD D = U diag(σ) Vᵀ, σ in decreasing order (computed from D itself, so σ is
    resolved down to eps·σ_max, unlike the Gram route).

    **Arguments:**

    - `problem`: the problem (D is materialised by `problem.jacobian`).
    - `theta`: θ, shape (K,).

    **Returns:**

    `(U, σ, Vᵀ)` of shapes (QN, r), (r,) and (r, K), r = min(QN, K).
    """
    return jnp.linalg.svd(problem.jacobian(theta), full_matrices=False)


def singular_values(problem, theta, gram: AbstractGram | None = None,
                    route: str = "gram") -> Float[Array, " r"]:
    """The min(QN, K) singular values of D in increasing order.

    **Arguments:**

    - `problem`: the problem.
    - `theta`: θ, shape (K,).
    - `gram`: how D Dᵀ is formed on the 'gram' route; None: `auto_gram(problem)`, layerwise
      for an MLP.
    - `route`: 'gram': from the eigenvalues of the smaller of D Dᵀ and Dᵀ D (resolves σ down
      to about √eps·σ_max). 'factor': from the SVD of D itself (resolves σ down to
      eps·σ_max), for flows whose solve factorises D. 'adaptive': the Gram's while
      σ_min > 10·√(eps·r)·σ_max, the SVD of D below (one branch runs; in a vmapped batch the
      SVD as soon as one seed needs it). Any other value is taken as 'gram'.

    **Returns:**

    σ, shape (min(QN, K),), ascending (eigenvalues below 0 from rounding are clipped to 0).
    """
    if route == "factor":
        return jnp.linalg.svd(problem.jacobian(theta), compute_uv=False)[::-1]
    if route == "adaptive":  # the Gram's eigenvalues while they resolve σ, else the SVD of D
        sigma = singular_values(problem, theta, gram)
        resolved = all_over_seeds(sigma[0] > 10 * math.sqrt(
            float(jnp.finfo(sigma.dtype).eps) * sigma.size) * sigma[-1])
        return jax.lax.cond(resolved, lambda: sigma,
                            lambda: singular_values(problem, theta, route="factor"))
    if problem.overparametrised:
        theta_gram, _ = (gram or auto_gram(problem))(problem, theta)
    else:
        d = problem.jacobian(theta)
        theta_gram = d.T @ d
    eig = jnp.linalg.eigvalsh(theta_gram)
    return jnp.sqrt(jnp.clip(eig, 0.0))


def extreme_singular_values(problem, theta, route: str = "gram", iterations: int = 8):
    """(σ_min, σ_max) of D for a guard. route='gram' at K ≥ QN: from one Cholesky factor of
    Θ = DDᵀ, λ_min by `iterations` steps of inverse iteration and λ_max by as many of power
    iteration (Rayleigh quotients: λ_min from above, λ_max from below, 2·iterations triangular
    solves and `iterations` products with Θ beside the factorisation, O(QN²) each, instead of
    an O(QN³) eigendecomposition); NaN where Θ is not numerically positive definite. Other
    routes: the ends of `singular_values`."""
    if route != "gram" or not problem.overparametrised:
        sigma = singular_values(problem, theta, route=route)
        return sigma[0], sigma[-1]
    theta_gram, _ = auto_gram(problem)(problem, theta)
    factor = jnp.linalg.cholesky(theta_gram)
    start = jnp.ones(theta_gram.shape[0], theta_gram.dtype) / math.sqrt(theta_gram.shape[0])

    def inverse_step(_, v):
        v = jax.scipy.linalg.cho_solve((factor, True), v)
        return v / jnp.linalg.norm(v)

    def power_step(_, v):
        v = theta_gram @ v
        return v / jnp.linalg.norm(v)

    low = jax.lax.fori_loop(0, iterations, inverse_step, start)
    high = jax.lax.fori_loop(0, iterations, power_step, start)
    lam_min, lam_max = low @ theta_gram @ low, high @ theta_gram @ high
    return jnp.sqrt(jnp.clip(lam_min, 0.0)), jnp.sqrt(jnp.clip(lam_max, 0.0))


#: Lanczos steps of `spectrum_ends` (at most QN): the extreme Ritz values of a Krylov space of
#: this size, with full reorthogonalisation
ENDS_LANCZOS_STEPS = 32


def _largest_ritz_value(op, start, steps):
    """The largest eigenvalue of the symmetric positive (semi)definite operator `op` from
    `steps` Lanczos steps with full reorthogonalisation (exact once steps reach the dimension;
    after a breakdown the extra Ritz values are 0 and do not matter for the largest)."""
    n = start.shape[0]
    basis = jnp.zeros((steps + 1, n), start.dtype).at[0].set(start / jnp.linalg.norm(start))

    def body(j, state):
        basis, alphas, betas = state
        w = op(basis[j])
        alpha = w @ basis[j]
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.where(beta > 0, beta, 1.0)
        basis = basis.at[j + 1].set(jnp.where(beta > 0, w / scale, 0.0))
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta)

    init = (basis, jnp.zeros(steps, start.dtype), jnp.zeros(steps, start.dtype))
    _, alphas, betas = jax.lax.fori_loop(0, steps, body, init)
    tridiagonal = (jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1))
    return jnp.linalg.eigvalsh(tridiagonal)[-1]


def spectrum_ends(problem, theta, route: str = "gram"):
    """(σ_min, σ_max, rank) of D for the saved diagnostics, without an eigendecomposition where
    the Gram resolves D. Route 'gram' or 'adaptive' at K ≥ QN: Θ = DDᵀ (the auto Gram), one
    Cholesky factor; where it exists and λ_max/λ_min stays below 1/(r·eps) (the Gram's
    resolution), D has full row rank (rank = QN) and λ_max, λ_min are the largest Ritz values of
    ENDS_LANCZOS_STEPS Lanczos steps on Θ and on Θ⁻¹ (by the factor): O(QN²) per step against
    the eigendecomposition's ~9·QN³, exact where QN ≤ 32, and converging fast at the ends of the
    spectrum elsewhere (Kaniel–Paige). Elsewhere
    (an unresolved Θ, K < QN, route 'factor') the full `singular_values` of the route (the SVD
    of D for 'adaptive'), and the rank from them (`numerical_rank`; numpy's cutoff for an
    SVD)."""
    def full(_):
        sub = "factor" if route == "adaptive" else route
        sigma = singular_values(problem, theta, route=sub)
        rtol = (max(problem.num_outputs, problem.num_params) * float(jnp.finfo(theta.dtype).eps)
                if sub == "factor" else None)
        return sigma[0], sigma[-1], numerical_rank(sigma, rtol).astype(theta.dtype)

    if route == "factor" or not problem.overparametrised:
        return full(None)
    theta_gram, _ = auto_gram(problem)(problem, theta)
    low, high, rank, resolved = ends_from_cholesky(theta_gram, jnp.linalg.cholesky(theta_gram))
    return jax.lax.cond(resolved, lambda _: (low, high, rank), full, None)


def ends_from_cholesky(theta_gram, factor):
    """(σ_min, σ_max, rank, resolved) of D from Θ = DDᵀ and its Cholesky factor: λ_max and
    1/λ_min the largest Ritz values of ENDS_LANCZOS_STEPS Lanczos steps on Θ and on Θ⁻¹ (by
    the factor), rank = QN; `resolved` where the factor is finite and λ_max/λ_min stays below
    1/(QN·eps), the Gram's resolution (decided for a whole vmapped batch of seeds). A solver
    that has factorised Θ passes its factor (`GramOrQRSolver.solve_with_spectrum`)."""
    n = theta_gram.shape[0]
    start = jnp.ones(n, theta_gram.dtype) / math.sqrt(n)
    steps = min(n, ENDS_LANCZOS_STEPS)
    lam_max = _largest_ritz_value(lambda v: theta_gram @ v, start, steps)
    safe = jnp.where(jnp.isfinite(factor), factor, 0.0)
    inverse_max = _largest_ritz_value(lambda v: jax.scipy.linalg.cho_solve((safe, True), v),
                                      start, steps)
    lam_min = 1.0 / inverse_max
    eps = float(jnp.finfo(theta_gram.dtype).eps)
    resolved = all_over_seeds(jnp.all(jnp.isfinite(factor)) & (lam_min > 0)
                              & (lam_max * n * eps < lam_min))
    return (jnp.sqrt(jnp.clip(lam_min, 0.0)), jnp.sqrt(jnp.clip(lam_max, 0.0)),
            jnp.asarray(n, theta_gram.dtype), resolved)


def ends_from_svd(problem, sigma: Float[Array, " r"]):
    """(σ_min, σ_max, rank) from the singular values of D itself (any order), the rank by
    numpy's cutoff max(QN, K)·eps·σ_max: what a solver that took the SVD of D reports."""
    rtol = max(problem.num_outputs, problem.num_params) * float(jnp.finfo(sigma.dtype).eps)
    return (jnp.min(sigma), jnp.max(sigma),
            numerical_rank(sigma, rtol).astype(sigma.dtype))


def numerical_rank(sigma: Float[Array, " r"], rtol: float | None = None):
    """#{σ > rtol·σ_max}; default rtol = √(eps·r), the resolution of σ computed from a Gram
    (conservative for σ from an SVD)."""
    if rtol is None:
        rtol = math.sqrt(float(jnp.finfo(sigma.dtype).eps) * sigma.shape[-1])
    return jnp.sum(sigma > rtol * jnp.max(sigma, axis=-1, keepdims=True), axis=-1)
