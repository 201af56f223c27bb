r"""Gram strategies (AbstractGram: θ ↦ (Θ, w ↦ Dᵀ w)), behind CholeskySolver, DampedFlow and
`singular_values`:
- DenseGram: materialise D (jacrev: QN backward passes, O(QN·K) memory; jacfwd when K < QN);
- LayerwiseGram: for flowlab.MLP, Θ = Σ_l (Δ_l Δ_lᵀ) ⊙ (s_l² H_{l−1} H_{l−1}ᵀ + t_l²) from the
  stacked backprop signals Δ_l = ∂X/∂z_l and the activations H_{l−1}, without forming D
  ("Fast finite width NTK", Novak et al. 2022); Dᵀ w is one matmul per layer. Memory
  O(K + (QN)² + QN·Σ M_l);
- BlockedGram: any problem (any equinox model, any residual): rows of D a block of b examples
  (or collocation points) at a time by vmapped reverse passes, Θ[block, :] = D_b Dᵀ by vmapped
  jvps, accumulated block by block; Dᵀ w is one vjp. Memory O(b·K + (QN)²), never all of D;
- AutoGram: LayerwiseGram for an MLP fitted to data, BlockedGram otherwise (the default
  everywhere);
- ShardedGram (`_sharded`): the rows of D (the examples) split over devices, Θ row-sharded.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._layerwise import backprop_transpose, gram_block, mlp_backprop


class AbstractGram(eqx.Module):
    """A way to obtain Θ = D Dᵀ and the map w ↦ Dᵀ w at θ.

    A strategy is called as `gram(problem, theta)` and returns `(Θ, w ↦ Dᵀ w)`.
    """

    @abc.abstractmethod
    def __call__(self, problem, theta) -> tuple[Float[Array, "QN QN"], object]:
        """Return (Θ, w ↦ Dᵀ w)."""


class DenseGram(AbstractGram):
    """Materialise D (jacrev, or jacfwd when K < QN) and form D Dᵀ.

    **Arguments:**

    - `mode`: how D is formed (`AbstractProblem.jacobian`): 'auto' (row by row where the rows
      are structured or K ≥ QN, jacfwd otherwise), 'rev' or 'fwd'.

    **Raises:**

    - `ValueError`: when called with a `mode` other than 'auto', 'fwd' or 'rev'.
    """

    mode: str = eqx.field(static=True, default="auto")

    def __call__(self, problem, theta):
        d = problem.jacobian(theta, self.mode)
        return d @ d.T, lambda w: d.T @ w


class LayerwiseGram(AbstractGram):
    """Θ for a flowlab.MLP layer by layer (`mlp_gram`); D is never formed. Dᵀ w reuses the same
    signals: ∂/∂W_l = s_l Gᵀ H_{l−1}, ∂/∂b_l = t_l Σ_i G_i with G_i = Σ_q w_{iq} δ_l^{iq} (one
    matmul per layer, no second forward/backward pass). Memory O(K + (QN)² + QN·Σ widths)
    instead of O(QN·K).

    **Raises:**

    - `ValueError`: when called on a problem whose model is not a flowlab.MLP fitted to data.
    """

    def __call__(self, problem, theta):
        if not problem.layerwise:
            raise ValueError(
                "LayerwiseGram needs a problem whose model is a flowlab.MLP, got "
                f"{type(getattr(problem, 'model_static', None)).__name__} in a "
                f"{type(problem).__name__}; use BlockedGram or DenseGram"
            )
        model = problem.model(theta)
        hs, deltas = mlp_backprop(model, problem.inputs)
        gram = gram_block(model, hs, deltas, hs, deltas)
        return gram, lambda w: backprop_transpose(problem, model, hs, deltas, w)


#: bytes of D that BlockedGram holds at once when its block size is not given.
BLOCK_BYTES = 2**27


class BlockedGram(AbstractGram):
    r"""Θ = D Dᵀ for any problem without holding all of D.

    The rows of D come in groups (`problem.row_groups()`: one per example of a data fit, one
    per collocation point of a pointwise residual, one per entry of any other residual). For
    each block of b items: rows D_b by vmapped reverse passes (`problem.group_rows`), then
    Θ[block, :] = D_b Dᵀ by b vmapped jvps of X(θ) (one linearisation at θ, reused), blocks in
    a `lax.map`. Dᵀ w is one vjp (the transpose of the same linearisation). When the whole of
    D fits in one block it is formed and multiplied directly (Θ = D Dᵀ, Dᵀ w = D.T @ w).

    Cost: QN reverse passes of one item (rows) plus QN jvps of X (≈ QN·N item passes, the
    flops of the product D Dᵀ itself). Memory O(b·q·K + (QN)² + b·q·QN).

    **Arguments:**

    - `block_size`: b, items per block; None: the most that keep a block of D within
      `BLOCK_BYTES` (2^27 bytes).

    **Raises:**

    - `ValueError`: when `block_size` is not None or an integer ≥ 1.
    """

    block_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.block_size is not None and (not isinstance(self.block_size, int)
                                            or self.block_size < 1):
            raise ValueError(f"block_size must be an integer >= 1 or None, got {self.block_size!r}")

    def blocks(self, problem) -> list[tuple[int, int, int]]:
        """(items, rows per item, block size) for each row group of the problem."""
        item = jnp.dtype(problem.theta0.dtype).itemsize
        out = []
        for n, q in problem.row_groups():
            b = self.block_size
            if b is None:
                b = max(1, BLOCK_BYTES // (q * problem.num_params * item))
            out.append((n, q, min(b, n)))
        return out

    def __call__(self, problem, theta):
        groups = self.blocks(problem)
        k = problem.num_params
        if len(groups) == 1 and groups[0][2] == groups[0][0]:
            d = problem.jacobian(theta, "rev")
            return d @ d.T, lambda w: d.T @ w
        _, lin = jax.linearize(problem.outputs, theta)
        lin_t = jax.linear_transpose(lin, theta)
        rows = []
        for g, (n, q, b) in enumerate(groups):
            num_blocks = math.ceil(n / b)

            def block(i, g=g, n=n, q=q, b=b):
                items = jnp.minimum(i * b + jnp.arange(b), n - 1)  # the last block repeats item n−1
                d_b = problem.group_rows(theta, g, items).reshape(b * q, k)
                return jax.vmap(lin)(d_b)  # (b·q, QN) = D_b Dᵀ

            out = jax.lax.map(block, jnp.arange(num_blocks))
            rows.append(out.reshape(num_blocks * b * q, -1)[: n * q])
        gram = rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=0)
        gram = 0.5 * (gram + gram.T)
        return gram, lambda w: lin_t(w)[0]


def auto_gram(problem) -> AbstractGram:
    """The default Gram strategy for a problem: LayerwiseGram for a flowlab.MLP fitted to data,
    BlockedGram otherwise (DenseGram stays available: it materialises D).

    **Arguments:**

    - `problem`: the problem (an `AbstractProblem`).

    **Returns:**

    A `LayerwiseGram` or a `BlockedGram`.
    """
    return LayerwiseGram() if problem.layerwise else BlockedGram()


def gram_matrix(problem, theta: Float[Array, " K"]) -> Float[Array, "QN QN"]:
    """Θ = D Dᵀ at θ, the empirical NTK Gram matrix, by `auto_gram(problem)`."""
    return auto_gram(problem)(problem, theta)[0]


class AutoGram(AbstractGram):
    """Picks `auto_gram(problem)` at each call (shapes are static, so this costs nothing).

    The default `gram` of `CholeskySolver`, `GramOrQRSolver`, `DampedFlow` and `ShardedGram`.
    """

    def __call__(self, problem, theta):
        return auto_gram(problem)(problem, theta)
