"""The flow interface: a vector field θ' = F(θ) that also states what the theory predicts for it."""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Bool, Float

from ..linalg import auto_gram, singular_values, spectrum_ends
from ..problem import SquaredLoss


def linear_theory_applies(problem) -> bool:
    """The predictions below linearise X' = −(output velocity) for C = (κ/2)|X − Y|²."""
    return isinstance(problem.loss, SquaredLoss)


@eqx.filter_jit
def _start_spectrum(problem, theta0):
    """Eigenvalues λ_i (ascending) of Θ(θ0) = DDᵀ and the coordinates Uᵀ(X(θ0) − Y)."""
    gram, _ = auto_gram(problem)(problem, theta0)
    lam, u = jnp.linalg.eigh(gram)
    return jnp.clip(lam, 0.0), u.T @ problem.residual(theta0)


class AbstractFlow(eqx.Module):
    r"""A vector field on θ-space defined by a problem, and its theory.

    Every flow of the paper's family moves each output mode along a singular direction u_i of
    D = U Σ Vᵀ independently: θ' = −V f(Σ) Uᵀ∇_X C gives X' = −U σf(σ) Uᵀ∇_X C, so for the
    squared loss, linearised at θ0 (Θ frozen: exact in the lazy limit), the residual's i-th
    mode decays at rate m_i = κσ_i f(σ_i) (`mode_rates`) and
    C(s) = (κ/2) Σ_i (u_iᵀ r0)² e^{−2 m_i s} (`predicted_cost`). A subclass states m_i, or
    overrides the predictions; without either it predicts nothing (NaN).
    """

    @abc.abstractmethod
    def velocity(self, problem, theta: Float[Array, " K"]) -> Float[Array, " K"]:
        """θ' at θ."""

    def velocity_and_result(self, problem, theta: Float[Array, " K"]
                            ) -> tuple[Float[Array, " K"], lx.RESULTS]:
        """θ' at θ and lineax's verdict on the linear solve behind it (`successful` for flows
        that solve nothing); the integrators stop on a failed solve with the reason it maps
        to (`flowlab.integrate.from_linear_solve`, e.g. 'singular')."""
        return self.velocity(problem, theta), lx.RESULTS.successful

    def velocity_details(self, problem, theta: Float[Array, " K"]
                         ) -> tuple[Float[Array, " K"], lx.RESULTS, Bool[Array, ""]]:
        """`velocity_and_result` and whether the solve behind θ' resolved D at full rank (True
        for flows that invert nothing or need full rank). The ODE's rate-bound guard is armed
        only while every solve so far did: the bound's premise (MATH §3)."""
        return (*self.velocity_and_result(problem, theta), jnp.asarray(True))

    def velocity_spectrum(self, problem, theta: Float[Array, " K"]) -> tuple:
        """`velocity_and_result` and (σ_min, σ_max, rank) of D at θ, the saved diagnostics of
        `euler_steps`: from the factorisation behind θ' where the flow's solve made one
        (the pseudo-inverse flows), else measured apart (`spectrum_ends` on the flow's
        `spectrum_route`).

        **Returns:** `(v, result, (sigma_min, sigma_max, rank))`."""
        v, result = self.velocity_and_result(problem, theta)
        return v, result, spectrum_ends(problem, theta, self.spectrum_route(problem))

    def __call__(self, t, theta, problem):
        return self.velocity(problem, theta)

    def resolve(self, problem, *, stepping: bool = False) -> "AbstractFlow":
        """The flow with its 'auto' settings decided for `problem` (e.g. the pseudo-inverse
        solver): called once per run by `simulate` and `euler_steps` (`stepping=True`),
        outside jit, so that nothing is decided again at each evaluation. Checks the flow
        against the problem (a ValueError where it cannot apply)."""
        self.check(problem)
        return self

    def output_velocity(self, problem, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        """X' = D θ', by one Jacobian–vector product."""
        return jax.jvp(problem.outputs, (theta,), (self.velocity(problem, theta),))[1]

    def check(self, problem) -> None:
        """Raise a ValueError when the flow cannot apply to the problem."""

    def output_path(self, problem):
        """X*(s) as a function (X(0), s) -> X*(s) where the flow fixes the output trajectory a
        priori (the adapted flow at full row rank: X* = Y + e^{−κs}(X(0) − Y)); None otherwise.
        Where it exists the 'output_path' integrator follows it (MATH §9)."""
        return None

    def pullback(self, problem, theta: Float[Array, " K"], dx: Float[Array, " QN"]):
        """The minimum-norm dθ with D dθ = dX: D⁺dX (flows with an `output_path` only)."""
        raise NotImplementedError(f"{type(self).__name__} has no output path to follow")

    def damped_velocity(self, problem, theta: Float[Array, " K"], damping
                        ) -> tuple[Float[Array, " K"], lx.RESULTS]:
        """θ' damped by λ = `damping` ≥ 0, for Levenberg–Marquardt steps (`euler_steps` with
        levenberg_marquardt), and the linear solve's result; the flow itself at λ = 0."""
        raise NotImplementedError

    def check_damped(self, problem) -> None:
        """Raise a ValueError when the flow has no `damped_velocity` for the problem."""
        raise ValueError(f"{type(self).__name__} has no damped step for levenberg_marquardt; "
                         "it applies to the AdaptedFlow")

    def at_start(self, problem, theta0: Float[Array, " K"]) -> "AbstractFlow":
        """The flow for a run from θ0 (for flows defined by the start, e.g. interpolation)."""
        return self

    def default_max_condition(self, problem) -> float | None:
        """The σ_max/σ_min(D) guard `simulate` applies by default: the condition number the
        flow's solve resolves; None for flows that do not invert D."""
        return None

    def default_step_size(self, problem) -> float:
        """The step h of `euler_steps` when none is set: 1/κ, where the AdaptedFlow's Euler
        step is the Gauss–Newton step."""
        return 1.0 / problem.kappa

    def steps_need_search(self, problem) -> bool:
        """Whether `euler_steps` should search along each step by default (grid_search 'auto'):
        where a full step can overshoot far from the minimiser. Residual problems always do."""
        return problem.general_residual

    def stopping_time(self, problem, epsilon_relative: float) -> float:
        """The a priori time T_ε = ln(1/ε)/(2κ) at which the AdaptedFlow at full row rank has
        brought C − C_min down by ε = `epsilon_relative`: a configuration's t1 = 'auto' for
        every flow that does not state a time of its own (the comparison a study makes)."""
        return a_priori_time(epsilon_relative, 2.0 * problem.kappa)

    def spectrum_route(self, problem) -> str:
        """How the guards and diagnostics measure σ(D) for this flow: 'gram' (eigenvalues of Θ,
        cheap, resolves σ ≥ √eps·σ_max) or 'factor' (SVD of D, for flows that factorise D)."""
        return "gram"

    # --- theory -------------------------------------------------------------------------------
    def mode_rates(self, problem, sigma: Float[Array, " r"]) -> Float[Array, " r"]:
        """m_i = κσ_i f(σ_i): the decay rate of the residual along each singular value σ_i of D
        (ascending), NaN where the flow states none."""
        return jnp.full_like(sigma, jnp.nan)

    def rate_bound(self, problem) -> float:
        """A rate r with C(s) ≤ e^{−rs} C(0) on every orbit at full row rank (0: none holds;
        NaN: the theory says nothing here)."""
        return 0.0 if linear_theory_applies(problem) and problem.overparametrised else math.nan

    def predicted_rate(self, problem, theta: Float[Array, " K"]) -> float:
        """The decay rate of C the theory predicts at θ: 2·m_min, the slowest mode's rate (NaN
        when K < QN, where C(∞) > 0 in general, or for other losses)."""
        return self.rate_at(problem, singular_values(problem, theta))

    def rate_at(self, problem, sigma: Float[Array, " r"]) -> float:
        """`predicted_rate` from the singular values σ of D (ascending) at the point."""
        if not (linear_theory_applies(problem) and problem.overparametrised):
            return math.nan
        return float(2.0 * jnp.min(self.mode_rates(problem, jnp.asarray(sigma))))

    def predicted_cost(self, problem, theta0: Float[Array, " K"], ts, step_size: float | None = None):
        """The linearised cost curve from θ0 at times `ts`:
        C(s) = (κ/2) Σ_i (u_iᵀ r0)² e^{−2 m_i s} for the flow, with (1 − h m_i)^{2s/h} in place
        of e^{−2 m_i s} for Euler steps of size h = step_size; modes outside range D (λ_i = 0)
        keep their cost (K < QN). NaN for losses other than the squared loss."""
        ts = np.asarray(ts, float)
        if not linear_theory_applies(problem):
            return np.full(ts.shape, np.nan)
        lam, coeff = (np.asarray(a) for a in _start_spectrum(problem, theta0))
        sigma = np.sqrt(lam)
        rates = np.asarray(self.mode_rates(problem, jnp.asarray(sigma)))
        if not problem.overparametrised:  # K < QN: QN − K eigenvalues are zero, not small
            rates = np.where(lam > _rank_floor(lam), rates, 0.0)
        if step_size is None:
            decay = np.exp(-2.0 * rates[:, None] * ts[None, :])
        else:
            decay = np.abs(1.0 - step_size * rates[:, None]) ** (2.0 * ts[None, :] / step_size)
        return 0.5 * problem.kappa * np.sum(coeff[:, None] ** 2 * decay, axis=0)


def a_priori_time(epsilon_relative: float, rate: float) -> float:
    """ln(1/ε)/rate: when a quantity decaying as e^{−rate·s} has fallen by ε (0 for ε ≥ 1;
    ValueError unless ε > 0). Flows' `stopping_time` (theory imports flows, so not
    `theory.decay_time`)."""
    if not (math.isfinite(epsilon_relative) and epsilon_relative > 0):
        raise ValueError(f"epsilon_relative must be positive, got {epsilon_relative!r}")
    return 0.0 if epsilon_relative >= 1 else math.log(1.0 / epsilon_relative) / rate


def _rank_floor(lam):
    """Eigenvalues of a Gram below √(eps·r)²·λ_max count as zero (cf. `numerical_rank`)."""
    eps = np.finfo(lam.dtype).eps
    return eps * lam.size * np.max(lam, initial=0.0)
