import equinox as eqx
import jax.numpy as jnp
import lineax as lx

from ..linalg import AbstractGram, AutoGram
from ._base import AbstractFlow


class DampedFlow(AbstractFlow):
    r"""Levenberg–Marquardt flow θ' = −Dᵀ(Θ + λI)⁻¹∇_X C = −(DᵀD + λI)⁻¹Dᵀ∇_X C.

    λ = `damping` + `damping_lambda_min`·λ_min(G), G the smaller of DDᵀ and DᵀD. Defined at any
    rank; tends to the AdaptedFlow as λ → 0 with error O(λ). With damping = 0 and
    damping_lambda_min = μ every eigenmode of the output flow decays at rate ≥ κ/(1 + μ),
    whatever λ_min(Θ) is.

    **Arguments:**

    - `damping`: the constant part of λ, ≥ 0.
    - `damping_lambda_min`: μ ≥ 0, the part of λ proportional to λ_min(G) (then G is
      eigendecomposed at each evaluation instead of factorised).
    - `gram`: how Θ and w ↦ Dᵀw are obtained for K ≥ QN (default `AutoGram`); for K < QN, D
      is materialised.

    **Raises:**

    - `ValueError`: when `damping` or `damping_lambda_min` is negative, or both are 0 (that is
      the AdaptedFlow).
    """

    damping: float = eqx.field(static=True, default=1e-3, converter=float)
    damping_lambda_min: float = eqx.field(static=True, default=0.0, converter=float)
    gram: AbstractGram = AutoGram()  # layerwise for an MLP, dense otherwise

    def __check_init__(self):
        if self.damping < 0 or self.damping_lambda_min < 0:
            raise ValueError(
                f"damping and damping_lambda_min must be >= 0, got {self.damping}, "
                f"{self.damping_lambda_min}"
            )
        if self.damping == 0 and self.damping_lambda_min == 0:
            raise ValueError("DampedFlow needs damping > 0 or damping_lambda_min > 0; "
                             "with neither it is the AdaptedFlow")

    def velocity(self, problem, theta):
        return self.velocity_and_result(problem, theta)[0]

    def velocity_and_result(self, problem, theta) -> tuple:
        g = problem.output_gradient(problem.outputs(theta))
        wide = problem.overparametrised
        if wide:
            small_gram, transpose = self.gram(problem, theta)
        else:
            d = problem.jacobian(theta)
            small_gram, transpose = d.T @ d, None
            g = d.T @ g
        if self.damping_lambda_min == 0:
            op = lx.MatrixLinearOperator(
                small_gram + self.damping * jnp.eye(small_gram.shape[0], dtype=g.dtype),
                lx.positive_semidefinite_tag,
            )
            sol = lx.linear_solve(op, g, lx.Cholesky(), throw=False)
            w, result = sol.value, sol.result
        else:
            lam, u = jnp.linalg.eigh(small_gram)
            shift = self._shift(lam[0])
            w, result = u @ ((u.T @ g) / (jnp.maximum(lam, 0.0) + shift)), lx.RESULTS.successful
        return -(transpose(w) if wide else w), result

    def _shift(self, lambda_min):
        return self.damping + self.damping_lambda_min * jnp.maximum(lambda_min, 0.0)

    def mode_rates(self, problem, sigma):
        lam = sigma**2
        return problem.kappa * lam / (lam + self._shift(jnp.min(lam)))

    def rate_bound(self, problem):
        bound = super().rate_bound(problem)
        if bound == 0.0 and self.damping == 0:  # λ = μλ_min: every mode at ≥ κ/(1 + μ)
            return 2.0 * problem.kappa / (1.0 + self.damping_lambda_min)
        return bound
