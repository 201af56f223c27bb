"""Fully connected networks as equinox modules."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "erf": jax.scipy.special.erf,
    "sin": jnp.sin,
    "identity": lambda z: z,
    "leaky_relu": jax.nn.leaky_relu,
    "abs": jnp.abs,
}
#: activations with kinks: θ ↦ X(θ) is only piecewise smooth (MATH §9).
NON_SMOOTH = frozenset({"relu", "leaky_relu", "abs"})
PARAMETRIZATIONS = ("standard", "ntk")


def get_activation(name: str) -> Callable[[Array], Array]:
    """The activation called `name`; a ValueError lists the known ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(eqx.Module):
    r"""Multilayer perceptron f_θ: R^M -> R^Q.

    Layer l computes z_l = s_l W_l h_{l-1} + t_l b_l and h_l = σ(z_l) (no σ on the last
    layer). Under the ``"standard"`` parametrisation s_l = t_l = 1 and
    W ~ N(0, σ_w²/fan_in), b ~ N(0, σ_b²); under ``"ntk"`` W, b ~ N(0, 1) with
    s_l = σ_w/√fan_in and t_l = σ_b. Both give the same function at initialisation;
    they differ in the gradient geometry. K = Σ_l M_l (M_{l-1} + 1) with biases.

    **Arguments:**

    - `in_size`: M, the input dimension.
    - `out_size`: Q, the output dimension.
    - `hidden`: the hidden widths, one per hidden layer (empty: a linear model).
    - `activation`: σ, a name of `flowlab.nets.ACTIVATIONS`.
    - `use_bias`: whether the layers have biases.
    - `parametrization`: ``"standard"`` or ``"ntk"``.
    - `weight_std`: σ_w > 0.
    - `bias_std`: σ_b ≥ 0.
    - `key`: the PRNG key of the initial weights and biases.
    - `dtype`: the parameters' dtype (default: the default float dtype).

    **Raises:**

    - `ValueError`: on an unknown activation or parametrisation, a layer size below 1,
      `weight_std` ≤ 0 or `bias_std` < 0.
    """

    weights: list[Float[Array, "out in"]]
    biases: list[Float[Array, " out"]] | None
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    parametrization: str = eqx.field(static=True)
    weight_std: float = eqx.field(static=True)
    bias_std: float = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden: Sequence[int],
        activation: str = "tanh",
        *,
        use_bias: bool = True,
        parametrization: str = "standard",
        weight_std: float = 1.0,
        bias_std: float = 0.1,
        key: PRNGKeyArray,
        dtype=None,
    ):
        get_activation(activation)
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"unknown parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}"
            )
        sizes = (int(in_size), *(int(w) for w in hidden), int(out_size))
        if any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
        if weight_std <= 0 or bias_std < 0:
            raise ValueError(f"need weight_std > 0 and bias_std >= 0, got {weight_std}, {bias_std}")
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        self.in_size, self.out_size, self.hidden = sizes[0], sizes[-1], sizes[1:-1]
        self.activation = activation
        self.parametrization = parametrization
        self.weight_std, self.bias_std = float(weight_std), float(bias_std)
        wkeys = jr.split(key, 2 * (len(sizes) - 1))
        ntk = parametrization == "ntk"
        self.weights = [
            jr.normal(k, (fan_out, fan_in), dtype) * (1.0 if ntk else weight_std / fan_in**0.5)
            for k, fan_in, fan_out in zip(wkeys[::2], sizes[:-1], sizes[1:])
        ]
        self.biases = (
            [
                jr.normal(k, (fan_out,), dtype) * (1.0 if ntk else bias_std)
                for k, fan_out in zip(wkeys[1::2], sizes[1:])
            ]
            if use_bias
            else None
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.in_size, *self.hidden, self.out_size)

    @property
    def num_params(self) -> int:
        s = self.sizes
        return sum(b * (a + (self.biases is not None)) for a, b in zip(s[:-1], s[1:]))

    def layer_scales(self) -> list[tuple[float, float]]:
        """(s_l, t_l): the factors multiplying W_l and b_l in the forward pass."""
        if self.parametrization == "standard":
            return [(1.0, 1.0)] * len(self.weights)
        s = self.sizes
        return [(self.weight_std / fan_in**0.5, self.bias_std) for fan_in in s[:-1]]

    def preactivations(self, x: Float[Array, " in"]) -> list[Float[Array, " width"]]:
        """z_1, ..., z_L for one input (z_L is the output)."""
        act = get_activation(self.activation)
        h, zs = x, []
        for i, ((s, t), w) in enumerate(zip(self.layer_scales(), self.weights)):
            z = s * (w @ h)
            if self.biases is not None:
                z = z + t * self.biases[i]
            zs.append(z)
            h = act(z)
        return zs

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return self.preactivations(x)[-1]

    def hidden_preactivations(self, inputs: Float[Array, "N in"]) -> Float[Array, "N units"]:
        """The hidden layers' pre-activations z_ij on every input, units of all layers side by
        side (the kinks of a ReLU-type activation lie at z_ij = 0)."""
        return jax.vmap(lambda x: jnp.concatenate(self.preactivations(x)[:-1]))(inputs)

    def dead_units(self, inputs: Float[Array, "N in"]):
        """The number of hidden units with σ'(z_ij) = 0 on every input: their incoming weights
        do not move X, so D has zero columns there (a dead ReLU)."""
        z = self.hidden_preactivations(inputs)
        slope = jax.jvp(get_activation(self.activation), (z,), (jnp.ones_like(z),))[1]
        return jnp.sum(jnp.all(slope == 0, axis=0))


class ConvNet(eqx.Module):
    r"""A small convolutional network on flat image vectors: x in R^{C·H·W} (channel-major) is
    reshaped to (C, H, W), passed through `len(channels)` 3×3 convolutions ('SAME' padding,
    activation after each), flattened and mapped to `out_size` by a linear layer. For 8×8
    digits: ConvNet(8, 8, 10, channels=(8, 16)). Any equinox model works in a
    LeastSquaresProblem; this one is a non-MLP test bed (the BlockedGram forms its Gram).

    **Arguments:**

    - `height`, `width`: H and W of the images.
    - `out_size`: Q.
    - `channels`: the output channels of each convolution.
    - `activation`: a name of `flowlab.nets.ACTIVATIONS`.
    - `in_channels`: C.
    - `key`: the PRNG key of the initial parameters.
    - `dtype`: the parameters' dtype (default: the default float dtype).

    **Raises:**

    - `ValueError`: on an unknown activation.
    """

    convs: list[eqx.nn.Conv2d]
    head: eqx.nn.Linear
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, height: int, width: int, out_size: int, channels: Sequence[int] = (8, 16),
                 activation: str = "tanh", *, in_channels: int = 1, key: PRNGKeyArray, dtype=None):
        get_activation(activation)
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        keys = jr.split(key, len(channels) + 1)
        sizes = (in_channels, *channels)
        self.convs = [eqx.nn.Conv2d(a, b, 3, padding="SAME", key=k, dtype=dtype)
                      for a, b, k in zip(sizes[:-1], sizes[1:], keys)]
        self.head = eqx.nn.Linear(sizes[-1] * height * width, out_size, key=keys[-1], dtype=dtype)
        self.image_shape = (int(in_channels), int(height), int(width))
        self.activation = activation

    def __call__(self, x: Float[Array, " CHW"]) -> Float[Array, " out"]:
        act = get_activation(self.activation)
        h = x.reshape(self.image_shape)
        for conv in self.convs:
            h = act(conv(h))
        return self.head(h.reshape(-1))


class ResidualMLP(eqx.Module):
    r"""x -> W_in x, then `depth` blocks h <- h + W₂ σ(W₁ LN(h)) (pre-norm residual blocks with a
    learned layer norm), then W_out LN(h): an MLP with residual connections and layer norm.

    **Arguments:**

    - `in_size`: M.
    - `out_size`: Q.
    - `width`: the width of h.
    - `depth`: the number of residual blocks.
    - `activation`: σ, a name of `flowlab.nets.ACTIVATIONS`.
    - `key`: the PRNG key of the initial parameters.
    - `dtype`: the parameters' dtype (default: the default float dtype).

    **Raises:**

    - `ValueError`: on an unknown activation.
    """

    embed: eqx.nn.Linear
    blocks: list[tuple[eqx.nn.LayerNorm, eqx.nn.Linear, eqx.nn.Linear]]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, in_size: int, out_size: int, width: int = 32, depth: int = 2,
                 activation: str = "tanh", *, key: PRNGKeyArray, dtype=None):
        get_activation(activation)
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        keys = jr.split(key, 2 * depth + 2)
        self.embed = eqx.nn.Linear(in_size, width, key=keys[0], dtype=dtype)
        self.blocks = [
            (eqx.nn.LayerNorm(width, dtype=dtype),
             eqx.nn.Linear(width, width, key=keys[2 * i + 1], dtype=dtype),
             eqx.nn.Linear(width, width, key=keys[2 * i + 2], dtype=dtype))
            for i in range(depth)
        ]
        self.norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.head = eqx.nn.Linear(width, out_size, key=keys[-1], dtype=dtype)
        self.activation = activation

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        act = get_activation(self.activation)
        h = self.embed(x)
        for ln, lin1, lin2 in self.blocks:
            h = h + lin2(act(lin1(ln(h))))
        return self.head(self.norm(h))
