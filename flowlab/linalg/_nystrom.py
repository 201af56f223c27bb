r"""Matrix-free D⁺g at large QN: conjugate residuals on Θ w = g with a Nyström preconditioner.

Θ = D Dᵀ is never formed; it is applied as D(Dᵀw). The preconditioner is a rank-l Nyström
approximation Θ̂ = Y (ΩᵀY)⁻¹ Yᵀ, Y = ΘΩ, eigendecomposed as U Λ̂ Uᵀ; with shift μ

    P⁻¹ = (λ̂_l + μ) U (Λ̂ + μ)⁻¹ Uᵀ + (I − U Uᵀ)

[Frangella, Tropp & Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl.
2023]. P⁻¹Θ has eigenvalues ≈ 1 on the l leading directions and λ_i/λ̂_l on the rest, so a
Krylov solve needs the iterations for cond ≈ λ̂_l/λ_min instead of λ_max/λ_min.

Ω is l columns of the identity (l examples sampled without replacement) for a flowlab.MLP,
whose columns Θ[:, S] come layer by layer at the cost of a Gram block (O(QN·l·Σ M_l) flops),
and a Gaussian matrix otherwise (l products by Θ).

The adapted step X_{k+1} − X_k = −hκ(r − e) then has e = r − Θw, |e| ≤ rtol·|r|: the uniform
output-space rate holds up to the Krylov tolerance.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
from jaxtyping import Array, Float, Int, Scalar

from ._layerwise import backprop_transpose, gram_block, mlp_backprop


class JacobianProducts(NamedTuple):
    """u ↦ D u, w ↦ Dᵀ w at one θ, and Θ[:, columns] when it has a cheap route (else None)."""

    jvp: object
    vjp: object
    columns: object


def jacobian_products(problem, theta: Float[Array, " K"]) -> JacobianProducts:
    """D and Dᵀ as functions at θ, with the forward pass done once.

    For a flowlab.MLP fitted to data: from the layer activations H_{l−1} and backprop signals
    Δ_l, (D u)_{iq} = Σ_l ⟨Δ_l^{iq}, s_l U_l h_{l−1}^i + t_l b̃_l⟩ and Dᵀ w one matmul per layer
    (two matmuls of N·M_{l−1}·M_l per layer for Θw); otherwise a jax.linearize of X(θ)."""
    if problem.layerwise:
        model = problem.model(theta)
        hs, deltas = mlp_backprop(model, problem.inputs)
        scales = model.layer_scales()

        def jvp(u):
            tangent = problem.model(u)
            out = 0.0
            for i, ((s, t), h, delta) in enumerate(zip(scales, hs, deltas)):
                z = s * (h @ tangent.weights[i].T)
                if tangent.biases is not None:
                    z = z + t * tangent.biases[i][None, :]
                out = out + jnp.einsum("iqm,im->iq", delta, z)
            return out.reshape(-1)

        def vjp(w):
            return backprop_transpose(problem, model, hs, deltas, w)

        def columns(examples):
            hs_c = [h[examples] for h in hs]
            deltas_c = [d[examples] for d in deltas]
            return gram_block(model, hs, deltas, hs_c, deltas_c)

        return JacobianProducts(jvp, vjp, columns)
    _, lin = jax.linearize(problem.outputs, theta)
    lin_t = jax.linear_transpose(lin, theta)
    return JacobianProducts(lin, lambda w: lin_t(w)[0], None)


class NystromPreconditioner(eqx.Module):
    r"""P⁻¹ = (λ̂_l + μ) U (Λ̂ + μ)⁻¹ Uᵀ + (I − U Uᵀ) from Θ̂ = U Λ̂ Uᵀ, λ̂_l the smallest kept
    eigenvalue; a dropped direction has λ̂ = 0 and a zero column of U.

    Held as U = B V Σ⁻¹ with B = Y_ν L⁻ᵀ (n × l) and BᵀB = V Σ² Vᵀ, so that U itself (one more
    n·l² product) is never formed: P⁻¹v = v + B V diag(c/σ²) Vᵀ Bᵀ v, c = (λ̂_l + μ)/(λ̂ + μ) − 1.
    Built by `flowlab.linalg.nystrom_preconditioner`; called as `P(v)`, it returns P⁻¹v.

    **Attributes:**

    - `factor`: B, shape (n, l).
    - `rotation`: V, shape (l, l).
    - `squares`: Σ², shape (l,), decreasing.
    - `eigenvalues`: λ̂ = Σ² − ν, 0 for a dropped direction, shape (l,).
    - `shift`: μ.
    """

    factor: Float[Array, "n l"]
    rotation: Float[Array, "l l"]
    squares: Float[Array, " l"]
    eigenvalues: Float[Array, " l"]
    shift: Scalar

    def _weights(self):
        kept = self.eigenvalues > 0
        smallest = jnp.min(jnp.where(kept, self.eigenvalues, jnp.inf))
        ratio = (smallest + self.shift) / (self.eigenvalues + self.shift)
        return jnp.where(kept, (ratio - 1.0) / jnp.where(kept, self.squares, 1.0), 0.0)

    def __call__(self, v: Float[Array, " n"]) -> Float[Array, " n"]:
        coef = self.rotation.T @ (self.factor.T @ v)
        return v + self.factor @ (self.rotation @ (self._weights() * coef))

    @property
    def basis(self) -> Float[Array, "n l"]:
        """U, the eigenvectors of Θ̂ (zero columns for dropped directions)."""
        kept = self.eigenvalues > 0
        scale = jnp.where(kept, 1.0 / jnp.sqrt(jnp.where(kept, self.squares, 1.0)), 0.0)
        return (self.factor @ self.rotation) * scale[None, :]

    @property
    def rank(self) -> Int[Array, ""]:
        return jnp.sum(self.eigenvalues > 0)


def nystrom_preconditioner(
    sketch: Float[Array, "n l"],
    test: Float[Array, "n l"] | Int[Array, " l"],
    shift: float | None = None,
) -> NystromPreconditioner:
    r"""The preconditioner from the sketch Y = ΘΩ and the test matrix Ω: orthonormal columns
    (n, l), or the indices of l columns of the identity (then Y = Θ[:, indices]).

    Stabilised as in Frangella–Tropp–Udell: Y_ν = Y + νΩ with ν = n·eps·tr(ΩᵀY)/l, L the
    Cholesky factor of ΩᵀY_ν, B = Y_ν L⁻ᵀ = U Σ Vᵀ (through the eigendecomposition of BᵀB,
    l × l), λ̂ = Σ² − ν; directions with Σ² ≤ max(ν, l·eps·Σ_1²) are dropped. μ defaults to the
    smallest kept λ̂."""
    n, size = sketch.shape
    dtype = sketch.dtype
    eps = jnp.finfo(dtype).eps
    if test.ndim == 1:
        nu = n * eps * jnp.trace(sketch[test]) / size
        sketch = sketch.at[test, jnp.arange(size)].add(nu)
        core = sketch[test]
    else:
        nu = n * eps * jnp.trace(test.T @ sketch) / size
        sketch = sketch + nu * test
        core = test.T @ sketch
    factor = jnp.linalg.cholesky(0.5 * (core + core.T))
    b = jax.scipy.linalg.solve_triangular(factor, sketch.T, lower=True).T
    squares, vecs = jnp.linalg.eigh(b.T @ b)
    squares, vecs = squares[::-1], vecs[:, ::-1]
    kept = squares > jnp.maximum(nu, size * eps * squares[0])
    eigenvalues = jnp.where(kept, squares - nu, 0.0)
    smallest = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
    mu = smallest if shift is None else jnp.asarray(shift, dtype)
    return NystromPreconditioner(b, vecs, squares, eigenvalues, mu)


class KrylovResult(NamedTuple):
    solution: Array
    num_steps: Int[Array, ""]
    relative_residual: Float[Array, ""]


def conjugate_residual(
    matvec, rhs: Float[Array, " n"], preconditioner=None, rtol: float = 1e-8, max_steps: int = 1000
) -> KrylovResult:
    r"""Preconditioned conjugate residuals for A w = b (A symmetric positive semidefinite, P⁻¹
    positive definite), from w = 0, until |b − Aw| ≤ rtol·|b| (2-norms) or max_steps.

    Each step minimises |b − Aw| in the P⁻¹-norm over the Krylov space of P⁻¹A, so the residual
    never grows. CG minimises the A-norm of the error instead, and its residual, the part of
    the output-space step that is missed, swings by orders of magnitude on Θ's conditioning
    and is not monotone (measured on the large-N Grams: docs, Benchmarks → Large N). Written
    out because lineax has no CR/MINRES and its CG also requires the last update to be small
    elementwise.

    **Arguments:**

    - `matvec`: w ↦ A w.
    - `rhs`: b, shape (n,).
    - `preconditioner`: v ↦ P⁻¹ v (e.g. a `NystromPreconditioner`); None: the identity.
    - `rtol`: the relative residual to stop at.
    - `max_steps`: the step budget.

    **Returns:**

    A `KrylovResult(solution, num_steps, relative_residual)`: the last iterate w, the steps
    taken and |b − Aw|/|b|. A solve that meets `max_steps`, or the floor of rounding, first
    returns its last iterate (no exception).
    """
    precond = (lambda v: v) if preconditioner is None else preconditioner
    target = rtol * jnp.linalg.norm(rhs)
    z = precond(rhs)
    az = matvec(z)
    # (w, true residual b − Aw, preconditioned residual z, A z, direction p, A p, zᵀAz, step)
    init = (jnp.zeros_like(rhs), rhs, z, az, z, az, jnp.vdot(z, az), jnp.array(0))

    def cond(state):
        _, res, *_, zaz, step = state
        return (jnp.linalg.norm(res) > target) & (step < max_steps) & (zaz > 0)

    def body(state):
        w, res, z, az, p, ap, zaz, step = state
        pap = precond(ap)
        denominator = jnp.vdot(ap, pap)
        # past the floor of rounding (residual ≈ eps·cond Θ) the recurrences lose positivity:
        # stop there, keeping the last iterate
        alive = (denominator > 0) & jnp.isfinite(zaz / denominator)
        alpha = jnp.where(alive, zaz / jnp.where(alive, denominator, 1.0), 0.0)
        w = w + alpha * p
        res = res - alpha * ap
        z = z - alpha * pap
        az = matvec(z)
        zaz_next = jnp.where(alive, jnp.vdot(z, az), 0.0)
        beta = jnp.where(alive, zaz_next / zaz, 0.0)
        return w, res, z, az, z + beta * p, az + beta * ap, zaz_next, step + 1

    w, res, *_, steps = jax.lax.while_loop(cond, body, init)
    return KrylovResult(w, steps, jnp.linalg.norm(res) / jnp.linalg.norm(rhs))
