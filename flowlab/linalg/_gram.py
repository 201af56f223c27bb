r"""Gram strategies (AbstractGram: θ ↦ (Θ, w ↦ Dᵀ w)), behind CholeskySolver, DampedFlow and
`singular_values`:
- DenseGram: materialise D (jacrev: QN backward passes, O(QN·K) memory; jacfwd when K < QN);
- LayerwiseGram: for flowlab.MLP, Θ = Σ_l (Δ_l Δ_lᵀ) ⊙ (s_l² H_{l−1} H_{l−1}ᵀ + t_l²) from the
  stacked backprop signals Δ_l = ∂X/∂z_l and the activations H_{l−1}, without forming D
  ("Fast finite width NTK", Novak et al. 2022); Dᵀ w is one matmul per layer. Memory
  O(K + (QN)² + QN·Σ M_l);
- AutoGram: LayerwiseGram for an MLP, DenseGram otherwise (the default everywhere).
"""

import abc

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
    """Whether the problem's model is a flowlab.MLP (so the layerwise Gram applies)."""
    from ..nets import MLP

    return isinstance(getattr(problem, "model_static", None), MLP)


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


def _gram_from_backprop(model, hs, deltas):
    n, q = hs[0].shape[0], model.out_size
    gram = jnp.zeros((n * q, n * q), hs[0].dtype)
    for i, ((s, t), h, delta) in enumerate(zip(model.layer_scales(), hs, deltas)):
        a = s**2 * (h @ h.T)
        if model.biases is not None:
            a = a + t**2
        if q > 1:
            a = jnp.repeat(jnp.repeat(a, q, axis=0), q, axis=1)
        flat = delta.reshape(n * q, -1)
        gram = gram + (flat @ flat.T) * a
    return gram


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
                f"{type(getattr(problem, 'model_static', None)).__name__}; use DenseGram"
            )
        model = problem.model(theta)
        hs, deltas = _mlp_backprop(model, problem.inputs)
        gram = _gram_from_backprop(model, hs, deltas)
        scales = model.layer_scales()

        def transpose(w):
            w = w.reshape(hs[0].shape[0], model.out_size)
            gs = [jnp.einsum("iq,iqm->im", w, d) for d in deltas]
            dw = [s * (g.T @ h) for (s, _), g, h in zip(scales, gs, hs)]
            if model.biases is None:
                grads = eqx.tree_at(lambda m: m.weights, model, dw)
            else:
                db = [t * jnp.sum(g, axis=0) for (_, t), g in zip(scales, gs)]
                grads = eqx.tree_at(lambda m: (m.weights, m.biases), model, (dw, db))
            return problem.flatten(grads)

        return gram, transpose


def auto_gram(problem) -> AbstractGram:
    """LayerwiseGram for a flowlab.MLP, DenseGram (jacrev; jacfwd when K < QN) otherwise."""
    return LayerwiseGram() if is_mlp_problem(problem) else DenseGram()


class AutoGram(AbstractGram):
    """Picks `auto_gram(problem)` at each call (shapes are static, so this costs nothing)."""

    def __call__(self, problem, theta):
        return auto_gram(problem)(problem, theta)
