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


class AbstractGram(eqx.Module):
    """A way to obtain Θ = D Dᵀ and the map w ↦ Dᵀ w at θ."""

    @abc.abstractmethod
    def __call__(self, problem, theta) -> tuple[Float[Array, "QN QN"], object]:
        """Return (Θ, w ↦ Dᵀ w)."""


class DenseGram(AbstractGram):
    """Materialise D (jacrev, or jacfwd when K < QN) and form D Dᵀ."""

    mode: str = eqx.field(static=True, default="auto")

    def __call__(self, problem, theta):
        d = problem.jacobian(theta, self.mode)
        return d @ d.T, lambda w: d.T @ w


def is_mlp_problem(problem) -> bool:
    """Whether the problem fits a flowlab.MLP to data, X = (f_θ(x_j))_j (so the layerwise
    Gram applies; not for a residual problem, whose rows are not the network's outputs)."""
    from ..nets import MLP
    from ..problem import LeastSquaresProblem

    return isinstance(problem, LeastSquaresProblem) and isinstance(problem.model_static, MLP)


def _mlp_backprop(model, inputs):
    """Activations H_{l−1} (N, M_{l−1}) and signals Δ_l (N, Q, M_l), Δ_l[i, q] = ∂f_q(x_i)/∂z_l."""
    from ..nets import get_activation

    act = get_activation(model.activation)
    scales = model.layer_scales()
    n, q = inputs.shape[0], model.out_size
    h, hs, zs = inputs, [], []
    for i, ((s, t), w) in enumerate(zip(scales, model.weights)):
        hs.append(h)
        z = s * (h @ w.T)
        if model.biases is not None:
            z = z + t * model.biases[i]
        zs.append(z)
        h = act(z)
    delta = jnp.broadcast_to(jnp.eye(q, dtype=inputs.dtype), (n, q, q))
    deltas = [delta]
    for i in range(len(model.weights) - 1, 0, -1):
        z = zs[i - 1]
        dsigma = jax.jvp(act, (z,), (jnp.ones_like(z),))[1]  # elementwise σ'(z)
        delta = scales[i][0] * (delta @ model.weights[i]) * dsigma[:, None, :]
        deltas.append(delta)
    return hs, deltas[::-1]


def _gram_block(model, hs, deltas, hs_cols, deltas_cols):
    """Θ[rows of the examples of (hs, deltas), rows of the examples of (hs_cols, deltas_cols)]."""
    n, m, q = hs[0].shape[0], hs_cols[0].shape[0], model.out_size
    gram = jnp.zeros((n * q, m * q), hs[0].dtype)
    for (s, t), h, delta, hc, dc in zip(model.layer_scales(), hs, deltas, hs_cols, deltas_cols):
        a = s**2 * (h @ hc.T)
        if model.biases is not None:
            a = a + t**2
        if q > 1:
            a = jnp.repeat(jnp.repeat(a, q, axis=0), q, axis=1)
        gram = gram + (delta.reshape(n * q, -1) @ dc.reshape(m * q, -1).T) * a
    return gram


def _gram_from_backprop(model, hs, deltas):
    return _gram_block(model, hs, deltas, hs, deltas)


def _backprop_transpose(problem, model, hs, deltas, w):
    """Dᵀ w from the signals of the examples in (hs, deltas), w of shape (n·Q,) for them."""
    scales = model.layer_scales()
    w = w.reshape(hs[0].shape[0], model.out_size)
    gs = [jnp.einsum("iq,iqm->im", w, d) for d in deltas]
    dw = [s * (g.T @ h) for (s, _), g, h in zip(scales, gs, hs)]
    if model.biases is None:
        grads = eqx.tree_at(lambda m: m.weights, model, dw)
    else:
        db = [t * jnp.sum(g, axis=0) for (_, t), g in zip(scales, gs)]
        grads = eqx.tree_at(lambda m: (m.weights, m.biases), model, (dw, db))
    return problem.flatten(grads)


def mlp_gram(model, inputs: Float[Array, "N M"]) -> Float[Array, "QN QN"]:
    r"""The NTK Gram Θ = D Dᵀ of a flowlab.MLP on `inputs`, layer by layer, without D.

    With z_l = s_l W_l h_{l−1} + t_l b_l: ∂f_q/∂W_l = s_l δ_l^q h_{l−1}ᵀ and ∂f_q/∂b_l = t_l δ_l^q,
    δ_l^q = ∂f_q/∂z_l, so Θ[(i,q),(j,r)] = Σ_l ⟨δ_l^{iq}, δ_l^{jr}⟩ (s_l² ⟨h_{l−1}^i, h_{l−1}^j⟩
    + t_l²) (no t_l² term without biases). δ_L = e_q; δ_{l−1} = s_l W_lᵀ δ_l ⊙ σ'(z_{l−1}), σ' by
    a jvp of the activation. Cost Σ_l QN·M_l·(M_{l−1} + QN) + N²·M_{l−1}; memory
    O((QN)² + QN·Σ M_l)."""
    hs, deltas = _mlp_backprop(model, inputs)
    return _gram_from_backprop(model, hs, deltas)


class LayerwiseGram(AbstractGram):
    """Θ for a flowlab.MLP layer by layer (`mlp_gram`); D is never formed. Dᵀ w reuses the same
    signals: ∂/∂W_l = s_l Gᵀ H_{l−1}, ∂/∂b_l = t_l Σ_i G_i with G_i = Σ_q w_{iq} δ_l^{iq} (one
    matmul per layer, no second forward/backward pass). Memory O(K + (QN)² + QN·Σ widths)
    instead of O(QN·K)."""

    def __call__(self, problem, theta):
        if not is_mlp_problem(problem):
            raise ValueError(
                "LayerwiseGram needs a problem whose model is a flowlab.MLP, got "
                f"{type(getattr(problem, 'model_static', None)).__name__} in a "
                f"{type(problem).__name__}; use BlockedGram or DenseGram"
            )
        model = problem.model(theta)
        hs, deltas = _mlp_backprop(model, problem.inputs)
        gram = _gram_from_backprop(model, hs, deltas)
        return gram, lambda w: _backprop_transpose(problem, model, hs, deltas, w)


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
    `block_size` (items per block) defaults to the most that keep a block of D within
    `BLOCK_BYTES`."""

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
    """LayerwiseGram for a flowlab.MLP fitted to data, BlockedGram otherwise (DenseGram stays
    available: it materialises D)."""
    return LayerwiseGram() if is_mlp_problem(problem) else BlockedGram()


class AutoGram(AbstractGram):
    """Picks `auto_gram(problem)` at each call (shapes are static, so this costs nothing)."""

    def __call__(self, problem, theta):
        return auto_gram(problem)(problem, theta)
