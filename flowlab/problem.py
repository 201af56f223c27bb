"""The training problem in output space: θ in R^K -> X(θ) in R^{QN} -> C(X)."""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Scalar

from .data import Dataset


def is_overparametrised(num_params: int, num_outputs: int) -> bool:
    """K ≥ QN: D can have full row rank, and then the adapted flow gives X' = −∇_X C. The one
    place this test is made (`LeastSquaresProblem.overparametrised` asks it)."""
    return num_params >= num_outputs


class AbstractLoss(eqx.Module):
    """A cost C(X) on stacked outputs X in R^{QN}, with targets Y."""

    @abc.abstractmethod
    def __call__(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"]) -> Scalar: ...

    def gradient(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"]):
        """∇_X C."""
        return jax.grad(self)(outputs, targets)

    def minimum(self, targets: Float[Array, " QN"]) -> Scalar:
        """inf C, the level the cost decays to at full rank (NaN where unknown)."""
        return jnp.asarray(jnp.nan, targets.dtype)

    def minimiser(self, outputs0: Float[Array, " QN"], targets: Float[Array, " QN"]):
        """Where the adapted output flow from X(0) ends at full row rank (NaN where unknown)."""
        return jnp.full_like(outputs0, jnp.nan)

    def conserved(self, outputs: Float[Array, "*S QN"]) -> Float[Array, "*S c"]:
        """Quantities of X that the adapted output flow X' = −∇_X C conserves (none here)."""
        return outputs[..., :0]

    def bind(self, targets: Float[Array, " QN"], num_points: int, out_size: int) -> "AbstractLoss":
        """This loss checked against, and where needed specialised to, the problem's targets
        (a ValueError for targets it cannot take). The default accepts any targets."""
        return self


class SquaredLoss(AbstractLoss):
    """C = (κ/2)|X − Y|², ∇_X C = κ(X − Y). The paper takes κ = 1/N."""

    kappa: float = eqx.field(static=True)

    def __check_init__(self):
        if not (isinstance(self.kappa, (int, float)) and math.isfinite(self.kappa) and self.kappa > 0):
            raise ValueError(f"kappa must be a positive finite number, got {self.kappa!r}")

    def __call__(self, outputs, targets):
        r = outputs - targets
        return 0.5 * self.kappa * jnp.vdot(r, r)

    def gradient(self, outputs, targets):
        return self.kappa * (outputs - targets)

    def minimum(self, targets):
        return jnp.zeros((), targets.dtype)

    def minimiser(self, outputs0, targets):
        return targets


class LeastSquaresProblem(eqx.Module):
    r"""Fit a model to a Dataset in output space.

    θ in R^K is the flat vector of the model's arrays; X(θ) = (f_θ(x_1), ..., f_θ(x_N)) in
    R^{QN}, j-major; C(θ) = (κ/2)|X(θ) − Y|² (κ = 1/N by default); D = ∂X/∂θ is QN × K and
    Θ = D Dᵀ is the empirical NTK Gram matrix. `loss` replaces the squared loss by any
    AbstractLoss (the flows only use ∇_X C).
    """

    model_static: eqx.Module
    theta0: Float[Array, " K"]
    inputs: Float[Array, "N M"]
    targets: Float[Array, " QN"]
    loss: AbstractLoss
    num_points: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    _treedef: object = eqx.field(static=True)
    _shapes: tuple = eqx.field(static=True)

    def __init__(self, model, dataset: Dataset, kappa: float | None = None, loss: AbstractLoss | None = None):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a flowlab.Dataset, got {type(dataset).__name__}")
        if loss is not None and kappa is not None:
            raise ValueError("pass either kappa (for the squared loss) or loss, not both")
        params, self.model_static = eqx.partition(model, eqx.is_inexact_array)
        leaves, self._treedef = jax.tree_util.tree_flatten(params)
        self._shapes = tuple(tuple(a.shape) for a in leaves)
        self.theta0 = jnp.concatenate([jnp.ravel(a) for a in leaves])
        self.inputs = dataset.inputs
        self.targets = dataset.stacked_targets
        self.num_points, self.out_size = dataset.num_points, dataset.out_size
        self.loss = SquaredLoss(1.0 / dataset.num_points if kappa is None else kappa) if loss is None else loss
        self.loss = self.loss.bind(self.targets, self.num_points, self.out_size)
        try:
            out = jax.eval_shape(jax.vmap(self.model()), self.inputs)
        except Exception as e:
            raise ValueError(
                f"the model cannot be applied to inputs of shape {self.inputs.shape}: {e}"
            ) from e
        if out.shape != (self.num_points, self.out_size):
            raise ValueError(
                f"the model maps the {self.num_points} inputs to shape {out.shape}, but the "
                f"targets need ({self.num_points}, {self.out_size})"
            )

    # sizes
    @property
    def num_params(self) -> int:
        """K."""
        return self.theta0.shape[0]

    @property
    def num_outputs(self) -> int:
        """QN."""
        return self.targets.shape[0]

    @property
    def overparametrised(self) -> bool:
        """K ≥ QN (`is_overparametrised`)."""
        return is_overparametrised(self.num_params, self.num_outputs)

    @property
    def kappa(self) -> float:
        """The loss's κ; 1/N for a loss that defines none (the paper's normalisation)."""
        return getattr(self.loss, "kappa", 1.0 / self.num_points)

    # θ <-> model
    def flatten(self, model) -> Float[Array, " K"]:
        """θ of a model with the same structure as the problem's."""
        leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_inexact_array))
        if treedef != self._treedef or tuple(tuple(a.shape) for a in leaves) != self._shapes:
            raise ValueError("the model's structure differs from the problem's model")
        return jnp.concatenate([jnp.ravel(a) for a in leaves])

    def model(self, theta: Float[Array, " K"] | None = None):
        """The model with parameters θ (θ0 by default)."""
        theta = self.theta0 if theta is None else theta
        sizes = [math.prod(s) for s in self._shapes]
        pieces = jnp.split(theta, np.cumsum(sizes)[:-1])
        leaves = [p.reshape(s) for p, s in zip(pieces, self._shapes)]
        return eqx.combine(jax.tree_util.tree_unflatten(self._treedef, leaves), self.model_static)

    # output space
    def outputs(self, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        """X(θ), j-major."""
        return jax.vmap(self.model(theta))(self.inputs).reshape(-1)

    def residual(self, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        return self.outputs(theta) - self.targets

    def cost(self, theta: Float[Array, " K"]) -> Scalar:
        return self.loss(self.outputs(theta), self.targets)

    def output_gradient(self, outputs: Float[Array, " QN"]) -> Float[Array, " QN"]:
        """∇_X C at the outputs X."""
        return self.loss.gradient(outputs, self.targets)

    # first order
    def jacobian(self, theta: Float[Array, " K"], mode: str = "auto") -> Float[Array, "QN K"]:
        """D = ∂X/∂θ materialised: jacfwd costs K forward passes, jacrev QN backward passes;
        'auto' takes the cheaper one."""
        if mode == "auto":
            mode = "rev" if self.overparametrised else "fwd"
        if mode not in ("fwd", "rev"):
            raise ValueError(f"unknown Jacobian mode {mode!r}; expected 'auto', 'fwd' or 'rev'")
        return (jax.jacfwd if mode == "fwd" else jax.jacrev)(self.outputs)(theta)

    def jacobian_operator(self, theta: Float[Array, " K"]) -> lx.JacobianLinearOperator:
        """D as a matrix-free lineax operator (products by jvp / vjp)."""
        return lx.JacobianLinearOperator(lambda th, _: self.outputs(th), theta)

    def gram(self, theta: Float[Array, " K"]) -> Float[Array, "QN QN"]:
        """Θ = D Dᵀ, the empirical NTK Gram matrix."""
        d = self.jacobian(theta)
        return d @ d.T
