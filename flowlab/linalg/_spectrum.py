r"""The spectrum of D, numerical rank and the conditioning limits of each route to D⁺: the one
place where rank and condition cutoffs are decided.

- Routes through Θ = DDᵀ (or DᵀD, or CG on either) square cond(D): in float64 they lose ~1e-2
  relative accuracy at cond(D) = 1e7 (GRAM_MAX_CONDITION).
- Factorisations of D itself (QR, SVD) resolve cond(D) up to ~1e10 with 1e-6 accuracy
  (FACTOR_MAX_CONDITION).
- A singular value counts as zero below rcond·σ_max: max(QN, K)·eps from an SVD of D
  (`default_rcond`, numpy's matrix_rank), √(eps·r) from a Gram (`numerical_rank`).
"""

import math

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._gram import AbstractGram, auto_gram

#: σ_max/σ_min(D) beyond which a solve through Θ = DDᵀ (or DᵀD) is no longer trustworthy.
GRAM_MAX_CONDITION = 1e7
#: σ_max/σ_min(D) beyond which a solve through a factorisation of D (QR, SVD) is not.
FACTOR_MAX_CONDITION = 1e10


def default_rcond(problem) -> float:
    """max(QN, K)·eps: numpy's matrix_rank cutoff for σ from an SVD of D, relative to σ_max."""
    eps = float(jnp.finfo(problem.theta0.dtype).eps)
    return max(problem.num_outputs, problem.num_params) * eps


def jacobian_svd(problem, theta: Float[Array, " K"]):
    """Thin SVD D = U diag(σ) Vᵀ, σ in decreasing order (computed from D itself, so σ is
    resolved down to eps·σ_max, unlike the Gram route)."""
    return jnp.linalg.svd(problem.jacobian(theta), full_matrices=False)


def singular_values(problem, theta, gram: AbstractGram | None = None) -> Float[Array, " r"]:
    """The min(QN, K) singular values of D in increasing order, from the eigenvalues of the
    smaller of D Dᵀ and Dᵀ D (resolves σ down to about √eps·σ_max). D Dᵀ comes from `gram`,
    default `auto_gram(problem)` (layerwise for an MLP)."""
    if problem.overparametrised:
        theta_gram, _ = (gram or auto_gram(problem))(problem, theta)
    else:
        d = problem.jacobian(theta)
        theta_gram = d.T @ d
    eig = jnp.linalg.eigvalsh(theta_gram)
    return jnp.sqrt(jnp.clip(eig, 0.0))


def numerical_rank(sigma: Float[Array, " r"], rtol: float | None = None):
    """#{σ > rtol·σ_max}; default rtol = √(eps·r), the resolution of σ computed from a Gram
    (conservative for σ from an SVD)."""
    if rtol is None:
        rtol = math.sqrt(float(jnp.finfo(sigma.dtype).eps) * sigma.shape[-1])
    return jnp.sum(sigma > rtol * jnp.max(sigma, axis=-1, keepdims=True), axis=-1)
