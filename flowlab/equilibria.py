r"""Equilibria and rank loss (MATH §4).

An equilibrium of the standard and of the adapted flow is a θ with Dᵀ∇_X C = 0 (κDᵀ(X − Y)
for the squared loss). At full row rank this forces X = Y, so an equilibrium with C > 0 needs
rank D < QN. Where rank D ≡ r nearby, the equilibrium lies on a critical submanifold of
dimension K − r, so the Hessian of θ ↦ C has at least K − r zero eigenvalues (derived).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .linalg import default_rcond


class Equilibrium(eqx.Module):
    """What `analyse_equilibrium` measured at θ (plain numpy/float fields).

    `expected_null_dim` = K − rank (a property), `rank_deficient` = rank < QN, and
    `as_dict()` gives the scalars with σ_max and σ_min.

    **Attributes:**

    - `cost`: C(θ).
    - `singular_values`: σ of D, decreasing.
    - `rank`: #{σ > rank_cutoff}.
    - `rank_cutoff`: rank_rtol·σ_max.
    - `rank_rtol`: the relative rank cutoff used.
    - `stationarity`: |Dᵀ∇_X C|.
    - `stationarity_relative`: stationarity / (σ_max |∇_X C|) (0 at an equilibrium, 1 at
      most).
    - `residual_gradient_norm`: |∇_X C|.
    - `hessian_eigenvalues`: the eigenvalues λ of the cost's Hessian, ascending.
    - `hessian_null_count`: #{|λ| ≤ hessian_cutoff}.
    - `hessian_cutoff`: hessian_rtol·max|λ|.
    - `hessian_rtol`: the relative Hessian cutoff used.
    - `num_params`, `num_outputs`: K and QN.
    """

    cost: float
    singular_values: np.ndarray
    rank: int
    rank_cutoff: float
    rank_rtol: float
    stationarity: float
    stationarity_relative: float
    residual_gradient_norm: float
    hessian_eigenvalues: np.ndarray
    hessian_null_count: int
    hessian_cutoff: float
    hessian_rtol: float
    num_params: int
    num_outputs: int

    @property
    def expected_null_dim(self) -> int:
        """K − r, the dimension of the critical submanifold through θ."""
        return self.num_params - self.rank

    @property
    def rank_deficient(self) -> bool:
        """rank D < QN: the necessary condition for an equilibrium with C > 0."""
        return self.rank < self.num_outputs

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in (
            "cost", "rank", "rank_cutoff", "rank_rtol", "stationarity", "stationarity_relative",
            "residual_gradient_norm", "hessian_null_count", "hessian_cutoff", "hessian_rtol",
            "num_params", "num_outputs")}
        out.update(expected_null_dim=self.expected_null_dim, rank_deficient=self.rank_deficient,
                   sigma_max=float(self.singular_values[0]),
                   sigma_min=float(self.singular_values[-1]))
        return out


@eqx.filter_jit
def _measure(problem, theta):
    x = problem.outputs(theta)
    g = problem.output_gradient(x)
    d = problem.jacobian(theta)
    return {
        "cost": problem.loss(x, problem.targets),
        "sigma": jnp.linalg.svd(d, compute_uv=False),
        "stationarity": jnp.linalg.norm(d.T @ g),
        "g_norm": jnp.linalg.norm(g),
        "hessian": jax.hessian(problem.cost)(theta),
    }


def analyse_equilibrium(
    problem,
    theta: Float[Array, " K"],
    *,
    rank_rtol: float | None = None,
    hessian_rtol: float = 1e-6,
) -> Equilibrium:
    r"""Rank, stationarity and Hessian null space of θ ↦ C at θ (a converged or stopped point).

    The singular values come from the SVD of D itself (min(QN, K) of them, decreasing);
    rank_rtol defaults to max(QN, K)·eps (numpy's matrix_rank). The Hessian is jax.hessian of
    the cost, symmetrised, K × K. Choose hessian_rtol above the Hessian's error at θ
    (≈ distance to the true equilibrium × third derivatives) and check the printed gap.

    **Arguments:**

    - `problem`: the problem.
    - `theta`: θ, shape (K,).
    - `rank_rtol`: the rank cutoff relative to σ_max, in (0, 1); None: max(QN, K)·eps.
    - `hessian_rtol`: the null-eigenvalue cutoff relative to max|λ|, in (0, 1).

    **Returns:**

    An `Equilibrium`.

    **Raises:**

    - `ValueError`: when θ is not of shape (K,), a cutoff is not in (0, 1), or the Hessian is
      not finite at θ.
    """
    theta = jnp.asarray(theta)
    if theta.shape != (problem.num_params,):
        raise ValueError(f"theta must have shape (K,) = ({problem.num_params},), got {theta.shape}")
    if rank_rtol is None:
        rank_rtol = default_rcond(problem)
    for name, v in (("rank_rtol", rank_rtol), ("hessian_rtol", hessian_rtol)):
        if not 0 < v < 1:
            raise ValueError(f"{name} must be in (0, 1), got {v!r}")
    m = jax.tree_util.tree_map(np.asarray, _measure(problem, theta))
    if not np.all(np.isfinite(m["hessian"])):
        raise ValueError("the cost's Hessian is not finite at theta")
    sigma = m["sigma"]
    cutoff = rank_rtol * float(sigma[0])
    lam = np.linalg.eigvalsh(0.5 * (m["hessian"] + m["hessian"].T))
    h_cut = hessian_rtol * float(np.max(np.abs(lam)))
    g_scale = float(sigma[0]) * float(m["g_norm"])
    return Equilibrium(
        cost=float(m["cost"]),
        singular_values=sigma,
        rank=int(np.sum(sigma > cutoff)),
        rank_cutoff=cutoff,
        rank_rtol=float(rank_rtol),
        stationarity=float(m["stationarity"]),
        stationarity_relative=float(m["stationarity"]) / g_scale if g_scale > 0 else 0.0,
        residual_gradient_norm=float(m["g_norm"]),
        hessian_eigenvalues=lam,
        hessian_null_count=int(np.sum(np.abs(lam) <= h_cut)),
        hessian_cutoff=h_cut,
        hessian_rtol=float(hessian_rtol),
        num_params=problem.num_params,
        num_outputs=problem.num_outputs,
    )


class ScalarProductModel(eqx.Module):
    r"""The toy model f(x) = u·v·x for scalar inputs x = a_j: X_j = u v a_j, K = 2, rank D = 1
    wherever (u, v) ≠ 0. Its equilibria with (u, v) ≠ 0 are the hyperbola u v = <a, Y>/|a|²;
    the standard and adapted flows both conserve u² − v² (θ' ∝ (v, u)), so each start ends where
    that hyperbola meets u² − v² = u0² − v0² (`product_model_endpoint`).

    **Arguments:**

    - `u`, `v`: the two parameters at initialisation.
    """

    u: Float[Array, ""]
    v: Float[Array, ""]

    def __init__(self, u: float, v: float):
        self.u, self.v = jnp.asarray(u, float), jnp.asarray(v, float)

    def __call__(self, x: Float[Array, " 1"]) -> Float[Array, " 1"]:
        return self.u * self.v * x


def product_model_endpoint(u0, v0, a, y) -> np.ndarray:
    """The predicted end point (u, v) of the toy model's flows from (u0, v0): on u v = w* =
    <a, Y>/|a|² with u² − v² = c = u0² − v0². The larger coordinate never passes 0, so it keeps
    its sign (c > 0: u, c < 0: v); along that branch w = u v is monotone in the other one.

    **Arguments:**

    - `u0`, `v0`: the start.
    - `a`: the inputs a_j.
    - `y`: the targets Y.

    **Returns:**

    The end point (u, v), shape (2,).

    **Raises:**

    - `ValueError`: when u0² = v0² (the orbit runs into (0, 0) or starts on a diagonal).
    """
    a, y = np.ravel(a), np.ravel(y)
    w = float(a @ y / (a @ a))
    c = float(u0) ** 2 - float(v0) ** 2
    if c == 0:
        raise ValueError("u0² = v0²: the orbit runs into (0, 0) or starts on a diagonal")
    big = np.sqrt(0.5 * (abs(c) + np.sqrt(c * c + 4 * w * w)))  # b² − w²/b² = |c|
    if c > 0:
        u = np.sign(u0) * big
        return np.array([u, w / u])
    v = np.sign(v0) * big
    return np.array([w / v, v])
