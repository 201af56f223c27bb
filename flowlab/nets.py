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
}
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
