r"""The layerwise route to Θ = D Dᵀ for a flowlab.MLP fitted to data, without forming D
("Fast finite width NTK", Novak et al. 2022): the activations H_{l−1} and backprop signals
Δ_l = ∂X/∂z_l of one forward/backward pass give Θ block by block (`gram_block`) and Dᵀ w one
matmul per layer (`backprop_transpose`). Shared by `LayerwiseGram`, the Nyström products and
`ShardedGram`; a problem offers this route by `problem.layerwise`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..nets import get_activation


def mlp_backprop(model, inputs: Float[Array, "N M"]):
    """Activations H_{l−1} (N, M_{l−1}) and signals Δ_l (N, Q, M_l), Δ_l[i, q] = ∂f_q(x_i)/∂z_l,
    of a flowlab.MLP `model` on `inputs`.

    **Arguments:** `model` a flowlab.MLP (with its parameters), `inputs` (N, M).

    **Returns:** `(hs, deltas)`, lists over the layers."""
    act = get_activation(model.activation)
    scales = model.layer_scales()
    n, q = inputs.shape[0], model.out_size
    h, hs, zs = inputs, [], []
    for i, ((s, t), w) in enumerate(zip(scales, model.weights)):
        hs.append(h)
        z = s * (h @ w.T)
        if model.biases is not None:
            z = z + t * model.biases[i][None, :]
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


def gram_block(model, hs, deltas, hs_cols, deltas_cols) -> Float[Array, "nQ mQ"]:
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


def backprop_transpose(problem, model, hs, deltas, w) -> Float[Array, " K"]:
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
    hs, deltas = mlp_backprop(model, inputs)
    return gram_block(model, hs, deltas, hs, deltas)
