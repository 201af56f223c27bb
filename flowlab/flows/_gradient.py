import jax

from ._base import AbstractFlow


class GradientFlow(AbstractFlow):
    r"""Standard training: θ' = −∇_θ C = −Dᵀ ∇_X C, by reverse mode (no Jacobian formed).

    In output space X' = −Θ ∇_X C (kernel gradient flow): mode i of the residual decays at
    κλ_i(Θ) = κσ_i², so C follows the NTK curve (κ/2)|e^{−κΘs}(X(0) − Y)|² in the lazy limit,
    at a tail rate 2κλ_min(Θ) that is tiny when λ_min is."""

    def velocity(self, problem, theta):
        return -jax.grad(problem.cost)(theta)

    def mode_rates(self, problem, sigma):
        return problem.kappa * sigma**2
