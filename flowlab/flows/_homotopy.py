r"""A homotopy of flows between the standard (α = 0) and the adapted (α = 1) field (MATH §5).

With the thin SVD D = U diag(σ) Vᵀ, V_α = −V f_α(Σ) Uᵀ ∇_X C, f_α acting on each σ > 0
(σ below the cutoff counts as 0 and is dropped, as in the pseudo-inverse). The default filter
f_α(σ) = (1 − α)σ + α/σ gives V_0 = −Dᵀ∇_X C and V_1 = −D⁺∇_X C, i.e. V_α = −[(1 − α)Dᵀ + αD⁺]∇_X C.

Same equilibria for every α: any filter with f > 0 on σ > 0 has V = 0 ⇔ Uᵀ∇_X C = 0 on the
kept singular directions ⇔ Dᵀ∇_X C = 0. Rate (derived): X' = −U σf(σ) Uᵀ ∇_X C with
σf_α(σ) = (1 − α)σ² + α ≥ α, so at full row rank C(s) ≤ e^{−2ακs} C(0) for the squared loss,
and the slowest mode decays at 2κ(α + (1 − α)σ_min²).
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..linalg import condition_limit, default_rcond, jacobian_svd
from ._base import AbstractFlow


def _as_array(a):
    # a numpy scalar array: an array leaf (traced under jit) without starting the JAX backend
    return a if isinstance(a, (jax.Array, jax.core.Tracer)) else np.asarray(a, dtype=float)


class AbstractSpectralFilter(eqx.Module):
    """σ ↦ f(σ) > 0 on σ > 0: how the field weights each singular direction of D.

    A subclass defines `__call__(sigma)`, vectorised over the kept singular values.
    """

    @abc.abstractmethod
    def __call__(self, sigma: Float[Array, " r"]) -> Float[Array, " r"]: ...


class InterpolatingFilter(AbstractSpectralFilter):
    """f_α(σ) = (1 − α)σ + α/σ: Dᵀ at α = 0, D⁺ at α = 1.

    **Arguments:**

    - `alpha`: α in [0, 1] (a number or a scalar array).
    """

    alpha: float | Array

    def __call__(self, sigma):
        return (1.0 - self.alpha) * sigma + self.alpha / sigma


class HomotopyFlow(AbstractFlow):
    r"""θ' = −V f(Σ) Uᵀ ∇_X C with f = `filter` (default InterpolatingFilter(alpha)).

    Costs one SVD of the QN × K Jacobian per evaluation. α is an array leaf: one compiled
    solve serves every α.

    **Arguments:**

    - `alpha`: α in [0, 1], the homotopy parameter of the default filter.
    - `filter`: any `AbstractSpectralFilter` or callable σ ↦ f(σ) (vectorised, positive on
      σ > 0); None: `InterpolatingFilter(alpha)`.
    - `rcond`: singular values ≤ rcond·σ_max are dropped, rcond in [0, 1); None:
      max(QN, K)·eps.

    **Raises:**

    - `ValueError`: when `alpha` is not a number in [0, 1], `filter` is not callable, or
      `rcond` is not in [0, 1).
    """

    alpha: Float[Array, ""] = eqx.field(converter=lambda a: _as_array(a), default=0.5)
    filter: AbstractSpectralFilter | Callable | None = eqx.field(static=True, default=None)
    rcond: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.alpha.shape != ():
            raise ValueError(f"alpha must be a number, got shape {self.alpha.shape}")
        if not isinstance(self.alpha, jax.core.Tracer) and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {float(self.alpha)!r}")
        if self.filter is not None and not callable(self.filter):
            raise ValueError(f"filter must be callable σ -> f(σ), got {self.filter!r}")
        if self.rcond is not None and not 0.0 <= self.rcond < 1.0:
            raise ValueError(f"rcond must be in [0, 1), got {self.rcond!r}")

    @property
    def inverts_jacobian(self) -> bool:
        """Whether the field divides by σ (all but the default filter at α = 0)."""
        return self.filter is not None or float(self.alpha) > 0

    def default_max_condition(self, problem):
        # the SVD of D resolves cond(D) itself, not its square
        if not self.inverts_jacobian:
            return None
        return condition_limit("factor", problem.theta0.dtype)

    def spectrum_route(self, problem):
        return "factor"

    @property
    def spectral_filter(self) -> Callable:
        return InterpolatingFilter(self.alpha) if self.filter is None else self.filter

    def velocity(self, problem, theta):
        g = problem.output_gradient(problem.outputs(theta))
        u, s, vt = jacobian_svd(problem, theta)
        rcond = default_rcond(problem) if self.rcond is None else self.rcond
        keep = s > rcond * s[0]
        f = self.spectral_filter(jnp.where(keep, s, 1.0))
        return -vt.T @ jnp.where(keep, f * (u.T @ g), 0.0)

    def mode_rates(self, problem, sigma):
        safe = jnp.where(sigma > 0, sigma, 1.0)
        return problem.kappa * jnp.where(sigma > 0, safe * self.spectral_filter(safe), 0.0)

    def rate_bound(self, problem):
        bound = super().rate_bound(problem)
        if bound == 0.0 and self.filter is None:
            return 2.0 * self.alpha * problem.kappa  # α may be traced: one compile for all α
        return bound
