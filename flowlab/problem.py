"""The problem a flow solves: θ in R^K -> X(θ) in R^{QN} -> C(X).

- `LeastSquaresProblem`: any equinox model fitted to a Dataset, X(θ) = (f_θ(x_j))_j, Y the
  targets;
- `ResidualProblem`: any residual map θ -> r(θ) in R^P (e.g. a physics-informed network's
  PDE residual), X = r, Y = 0, C = (κ/2)|r|² (MATH §8).

Both share `AbstractProblem`: θ <-> model flattening, the cost, the Jacobian D (by rows, in
the groups a Gram strategy can form block by block) and the `overparametrised` test.
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Int, Scalar

from .data import Dataset
from .nets import MLP, NON_SMOOTH


def is_overparametrised(num_params: int, num_outputs: int) -> bool:
    """K ≥ QN: D can have full row rank, and then the adapted flow gives X' = −∇_X C. The one
    place this test is made (`AbstractProblem.overparametrised` asks it)."""
    return num_params >= num_outputs


def symmetric_pinv_solve(matrix: Float[Array, "n n"], rhs: Float[Array, " n"]) -> Float[Array, " n"]:
    """A⁺b for a symmetric positive semi-definite A, by eigh: eigenvalues below
    n·eps·max|λ| count as zero (the directions A does not see).

    **Arguments:**

    - `matrix`: A, shape (n, n).
    - `rhs`: b, shape (n,).

    **Returns:**

    A⁺b, shape (n,).
    """
    lam, vecs = jnp.linalg.eigh(matrix)
    keep = lam > lam.size * jnp.finfo(lam.dtype).eps * jnp.max(jnp.abs(lam))
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return vecs @ (inverse * (vecs.T @ rhs))


class AbstractLoss(eqx.Module):
    r"""A cost C(X) on stacked outputs X in R^{QN}, with targets Y.

    A loss states its prefactor κ (`kappa`: the rate theory's κ, 1/κ the Gauss–Newton step),
    its value and ∇_X C, and what is known of the adapted output flow X' = −∇_X C on it: the
    infimum, where the flow from X(0) ends, and what it conserves (NaN or an empty array where
    nothing is known).

    **Attributes:**

    - `kappa`: the prefactor κ > 0 (a subclass declares it as a field or a property).
    """

    kappa: eqx.AbstractVar[float]

    @abc.abstractmethod
    def __call__(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"]) -> Scalar:
        """C(X)."""

    @abc.abstractmethod
    def gradient(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"]):
        """∇_X C."""

    @abc.abstractmethod
    def minimum(self, targets: Float[Array, " QN"]) -> Scalar:
        """inf C, the level the cost decays to at full rank (NaN where unknown)."""

    @abc.abstractmethod
    def minimiser(self, outputs0: Float[Array, " QN"], targets: Float[Array, " QN"]):
        """Where the adapted output flow from X(0) ends at full row rank (NaN where unknown)."""

    @abc.abstractmethod
    def conserved(self, outputs: Float[Array, "*S QN"]) -> Float[Array, "*S c"]:
        """Quantities of X that the adapted output flow X' = −∇_X C conserves (shape
        (..., 0) where none)."""

    @abc.abstractmethod
    def bind(self, targets: Float[Array, " QN"], num_points: int, out_size: int) -> "AbstractLoss":
        """This loss checked against, and where needed specialised to, the problem's targets
        (a ValueError for targets it cannot take)."""

    # --- the loss's own output metric (HessianMetricFlow, MATH §12) ----------------------------
    def hessian_block_size(self) -> int | None:
        """The outputs per example when C is a sum of per-example losses, so that H = ∇²_X C
        is block-diagonal with blocks of this size; None: one dense block of QN (any loss)."""
        return None

    def hessian_vector(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"],
                       vector: Float[Array, " QN"]) -> Float[Array, " QN"]:
        """H v = ∇²_X C(X) v, by one forward-mode derivative of `gradient`.

        **Arguments:**

        - `outputs`, `targets`: X and Y, shape (QN,).
        - `vector`: v, shape (QN,).

        **Returns:**

        H v, shape (QN,).
        """
        return jax.jvp(lambda x: self.gradient(x, targets), (outputs,), (vector,))[1]

    def hessian_blocks(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"]
                       ) -> Float[Array, "N q q"]:
        """The diagonal blocks of H = ∇²_X C, q = `hessian_block_size()`: q Hessian–vector
        products, the i-th along e_i in every block at once (exact where H is block-diagonal,
        as it is for a sum of per-example losses).

        **Arguments:**

        - `outputs`, `targets`: X and Y, shape (QN,).

        **Returns:**

        The blocks H_j, shape (QN/q, q, q).
        """
        q = self.hessian_block_size() or outputs.size
        n = outputs.size // q
        probes = jnp.tile(jnp.eye(q, dtype=outputs.dtype), (1, n))  # row i: e_i in each block
        columns = jax.vmap(lambda v: self.hessian_vector(outputs, targets, v))(probes)
        return columns.reshape(q, n, q).transpose(1, 2, 0)  # [block, row, column]

    def metric_gradient(self, outputs: Float[Array, " QN"], targets: Float[Array, " QN"]
                        ) -> Float[Array, " QN"]:
        r"""H⁺∇_X C: the gradient of C in the metric of its own Hessian (a Newton direction in
        output space), the pseudo-inverse taken block by block on the range of each H_j
        (eigenvalues below q·eps·max|λ(H_j)| count as zero: the directions C does not see,
        e.g. the fibre of a softmax). Losses with a closed form override this.

        **Arguments:**

        - `outputs`, `targets`: X and Y, shape (QN,).

        **Returns:**

        H⁺∇_X C, shape (QN,).
        """
        blocks = self.hessian_blocks(outputs, targets)
        n, q, _ = blocks.shape
        g = self.gradient(outputs, targets).reshape(n, q)
        return jax.vmap(symmetric_pinv_solve)(blocks, g).reshape(-1)

    def metric_path(self, outputs0: Float[Array, " QN"], targets: Float[Array, " QN"], s
                    ) -> Float[Array, " QN"] | None:
        """X(s) on the output-space Newton flow X' = −H⁺∇_X C from X(0) = `outputs0`, where it
        has a closed form; None (decided without tracing) where it has none. Along it
        ∇_X C(X(s)) = e^{−s}∇_X C(X(0)).

        **Arguments:**

        - `outputs0`, `targets`: X(0) and Y, shape (QN,).
        - `s`: the time, a scalar (s = ∞ gives the end point).

        **Returns:**

        X(s), shape (QN,), or None.
        """
        return None


class SquaredLoss(AbstractLoss):
    """C = (κ/2)|X − Y|², ∇_X C = κ(X − Y). The paper takes κ = 1/N.

    **Arguments:**

    - `kappa`: the prefactor κ, a positive finite number (`LeastSquaresProblem` passes 1/N
      unless told otherwise).

    **Raises:**

    - `ValueError`: when `kappa` is not a positive finite number.
    """

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

    def conserved(self, outputs):
        return outputs[..., :0]

    def bind(self, targets, num_points, out_size):
        return self

    def hessian_block_size(self):
        return 1

    def metric_gradient(self, outputs, targets):
        # H = κI: H⁺∇_X C = X − Y
        return outputs - targets

    def metric_path(self, outputs0, targets, s):
        return targets + jnp.exp(-s) * (outputs0 - targets)


def _parameters(model):
    """(model_static, θ0, treedef, shapes): the model's inexact arrays flattened into θ0."""
    if not isinstance(model, eqx.Module):
        raise TypeError(f"model must be an equinox Module, got {type(model).__name__}")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not leaves:
        raise ValueError(f"the model {type(model).__name__} has no floating-point arrays (no "
                         "parameters to train)")
    shapes = tuple(tuple(a.shape) for a in leaves)
    theta0 = jnp.concatenate([jnp.ravel(a) for a in leaves])
    return static, theta0, treedef, shapes


class AbstractProblem(eqx.Module):
    r"""What every flow, `simulate`, `euler_steps` and the theory need from a problem.

    θ in R^K is the flat vector of an equinox model's floating-point arrays (`model(θ)`,
    `flatten(model)`); the problem maps it to outputs X(θ) in R^{QN} (`num_outputs` = QN) with
    targets Y and a loss C(X); D = ∂X/∂θ is QN × K and Θ = D Dᵀ. The rows of D come in
    groups (`row_groups`) that a Gram strategy can form a block at a time
    (`group_rows`): one row per example and output for a fit to data, one per collocation
    point for a pointwise residual.

    **Attributes:**

    - `model_static`: the model's non-array part (`eqx.partition`).
    - `theta0`: θ at initialisation, shape (K,).
    - `targets`: Y, shape (QN,).
    - `loss`: the cost C(X), an `AbstractLoss`.

    A subclass defines `outputs`, `row_groups`, `group_rows` and the properties
    `structured_rows`, `rows_by_example`, `layerwise` and `general_residual`.
    """

    model_static: eqx.AbstractVar[eqx.Module]
    theta0: eqx.AbstractVar[Float[Array, " K"]]
    targets: eqx.AbstractVar[Float[Array, " QN"]]
    loss: eqx.AbstractVar[AbstractLoss]
    _treedef: eqx.AbstractVar[object]
    _shapes: eqx.AbstractVar[tuple]

    # --- what a problem defines --------------------------------------------------------------
    @abc.abstractmethod
    def outputs(self, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        """X(θ)."""

    @abc.abstractmethod
    def row_groups(self) -> tuple[tuple[int, int], ...]:
        """The rows of D as consecutive groups (items, rows per item)."""

    @abc.abstractmethod
    def group_rows(self, theta, group: int, items: Int[Array, " b"]) -> Float[Array, "b q K"]:
        """The rows of D that items `items` of group `group` own, shape (b, rows per item, K)."""

    @property
    @abc.abstractmethod
    def structured_rows(self) -> bool:
        """Whether `group_rows` costs one small reverse pass per item (so the full D by rows
        beats jacfwd even when K < QN); False when a row costs a backward pass of all of X."""

    @property
    @abc.abstractmethod
    def rows_by_example(self) -> bool:
        """Whether X(θ) = (f_θ(x_j))_j for the `inputs` x_j (N, M): the rows of D are the N
        examples' (Q each), so they can be split over devices (`ShardedGram`)."""

    @property
    @abc.abstractmethod
    def layerwise(self) -> bool:
        """Whether X(θ) = (f_θ(x_j))_j for a flowlab.MLP f_θ: Θ can then be formed layer by
        layer from one forward/backward pass, without D (`flowlab.linalg.LayerwiseGram`)."""

    @property
    @abc.abstractmethod
    def general_residual(self) -> bool:
        """Whether r(θ) is a general residual (a PDE's, a classical model's) rather than a
        network's outputs on data: its Euler steps take a line search by default
        (`IntegratorOptions.grid_search = 'auto'`), since a full Gauss–Newton step far from a
        solution can raise C by orders of magnitude (MATH §8)."""

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """K."""
        return self.theta0.shape[0]

    @property
    def num_outputs(self) -> int:
        """QN (P for a residual problem)."""
        return self.targets.shape[0]

    @property
    def overparametrised(self) -> bool:
        """K ≥ QN (`is_overparametrised`)."""
        return is_overparametrised(self.num_params, self.num_outputs)

    @property
    def kappa(self) -> float:
        """The loss's κ (C = (κ/2)|X − Y|² for the squared loss)."""
        return self.loss.kappa

    @property
    def piecewise_smooth(self) -> bool:
        """Whether θ ↦ X(θ) has kinks: the model's `activation` is one of
        `flowlab.nets.NON_SMOOTH` (ReLU-type, MATH §9)."""
        return getattr(self.model_static, "activation", None) in NON_SMOOTH

    # --- θ <-> model ---------------------------------------------------------------------------
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

    # --- output space --------------------------------------------------------------------------
    def residual(self, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        """X(θ) − Y."""
        return self.outputs(theta) - self.targets

    def cost(self, theta: Float[Array, " K"]) -> Scalar:
        return self.loss(self.outputs(theta), self.targets)

    def output_gradient(self, outputs: Float[Array, " QN"]) -> Float[Array, " QN"]:
        """∇_X C at the outputs X."""
        return self.loss.gradient(outputs, self.targets)

    # --- first order ---------------------------------------------------------------------------
    def jacobian(self, theta: Float[Array, " K"], mode: str = "auto") -> Float[Array, "QN K"]:
        """D = ∂X/∂θ materialised. 'rev': row by row (`group_rows`: one reverse pass per example
        or collocation point where the rows are structured, jacrev otherwise); 'fwd': jacfwd
        (K forward passes of all of X); 'auto': 'rev' when the rows are structured or K ≥ QN,
        'fwd' otherwise."""
        if mode == "auto":
            mode = "rev" if self.structured_rows or self.overparametrised else "fwd"
        if mode not in ("fwd", "rev"):
            raise ValueError(f"unknown Jacobian mode {mode!r}; expected 'auto', 'fwd' or 'rev'")
        if mode == "fwd":
            return jax.jacfwd(self.outputs)(theta)
        blocks = [self.group_rows(theta, g, jnp.arange(n)).reshape(n * q, -1)
                  for g, (n, q) in enumerate(self.row_groups())]
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)

    def jacobian_operator(self, theta: Float[Array, " K"]) -> lx.JacobianLinearOperator:
        """D as a matrix-free lineax operator (products by jvp / vjp)."""
        return lx.JacobianLinearOperator(lambda th, _: self.outputs(th), theta)


class LeastSquaresProblem(AbstractProblem):
    r"""Fit a model to a Dataset in output space.

    θ in R^K is the flat vector of the model's floating-point arrays;
    X(θ) = (f_θ(x_1), ..., f_θ(x_N)) in R^{QN}, j-major; C(θ) = (κ/2)|X(θ) − Y|² (κ = 1/N by
    default); D = ∂X/∂θ is QN × K and Θ = D Dᵀ is the empirical NTK Gram matrix. Row j of
    the groups is example j: its Q rows of D cost one reverse pass of f_θ(x_j).

    **Arguments:**

    - `model`: any equinox Module f_θ mapping one input x_j in R^M to Q outputs (a
      flowlab.MLP, a CNN that reshapes its input, a residual network, your own module); its
      floating-point arrays are θ0.
    - `dataset`: the `Dataset` to fit (N inputs, targets of width Q).
    - `kappa`: κ of the squared loss (default 1/N).
    - `loss`: any `AbstractLoss` in place of the squared loss (e.g. `SoftmaxCrossEntropy`;
      the flows only use ∇_X C); it is bound to the targets here.

    **Raises:**

    - `TypeError`: when `dataset` is not a `flowlab.Dataset` or `model` not an equinox Module.
    - `ValueError`: when both `kappa` and `loss` are given, the model has no floating-point
      arrays, it cannot be applied to the inputs or does not map them to (N, Q), or the loss
      refuses the targets (e.g. labels outside the open simplex for the cross-entropy).
    """

    model_static: eqx.Module
    theta0: Float[Array, " K"]
    targets: Float[Array, " QN"]
    loss: AbstractLoss
    inputs: Float[Array, "N M"]
    num_points: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    _treedef: object = eqx.field(static=True)
    _shapes: tuple = eqx.field(static=True)

    def __init__(self, model, dataset: Dataset, kappa: float | None = None, loss: AbstractLoss | None = None):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a flowlab.Dataset, got {type(dataset).__name__}")
        if loss is not None and kappa is not None:
            raise ValueError("pass either kappa (for the squared loss) or loss, not both")
        self.model_static, self.theta0, self._treedef, self._shapes = _parameters(model)
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

    def outputs(self, theta: Float[Array, " K"]) -> Float[Array, " QN"]:
        """X(θ), j-major."""
        return jax.vmap(self.model(theta))(self.inputs).reshape(-1)

    def row_groups(self):
        return ((self.num_points, self.out_size),)

    def group_rows(self, theta, group, items):
        def f(th, x):
            return self.model(th)(x).reshape(-1)

        return jax.vmap(jax.jacrev(f), in_axes=(None, 0))(theta, self.inputs[items])

    @property
    def structured_rows(self) -> bool:
        return True

    @property
    def rows_by_example(self) -> bool:
        return True

    @property
    def layerwise(self) -> bool:
        return isinstance(self.model_static, MLP)

    @property
    def general_residual(self) -> bool:
        return False


# --- residual problems ---------------------------------------------------------------------------


class ResidualTerm(eqx.Module):
    """One block of a pointwise residual: ρ(model, x) at each of `points`, times `weight`.

    **Arguments:**

    - `fn`: `fn(model, x)` returns a scalar or a 1-D array (q entries per point).
    - `points`: the points x, shape (n, d) with n ≥ 1 (a 1-D array is n points in one
      dimension; integers are converted to the default float dtype).
    - `weight`: a positive number multiplying every entry (e.g. 1/√n).
    - `name`: the term's name in `ResidualProblem.residual_terms`.

    **Raises:**

    - `TypeError`: when `fn` is not callable.
    - `ValueError`: when `points` is not (n, d) with n ≥ 1, or `weight` is not a positive
      number.
    """

    fn: Callable = eqx.field(static=True)
    points: Float[Array, "n d"]
    weight: float = eqx.field(static=True, default=1.0)
    name: str = eqx.field(static=True, default="")

    def __init__(self, fn: Callable, points, weight: float = 1.0, name: str = ""):
        if not callable(fn):
            raise TypeError(f"a residual term needs a function fn(model, x), got "
                            f"{type(fn).__name__}")
        points = jnp.asarray(points)
        if points.ndim == 1:
            points = points[:, None]
        if points.ndim != 2 or points.shape[0] == 0:
            raise ValueError(f"residual term {name!r}: points must be (n, d) with n >= 1, got "
                             f"shape {points.shape}")
        if not jnp.issubdtype(points.dtype, jnp.floating):
            points = points.astype(jnp.zeros(()).dtype)
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"residual term {name!r}: weight must be a positive number, got "
                             f"{weight!r}")
        self.fn, self.points, self.weight, self.name = fn, points, float(weight), str(name)

    def at(self, model, x):
        """weight · ρ(model, x), flattened."""
        return self.weight * jnp.ravel(self.fn(model, x))

    def __call__(self, model) -> Float[Array, " nq"]:
        return jax.vmap(lambda x: self.at(model, x))(self.points).reshape(-1)


class PointwiseResidual(eqx.Module):
    r"""r(model) = (w_1 ρ_1(model, x) for x in X_1, ..., w_m ρ_m(model, x) for x in X_m):
    residual terms evaluated point by point, e.g. a PDE's interior residual at collocation
    points and its boundary residual at boundary points. A `ResidualProblem` built from one
    knows each row of J is one point's reverse pass, so J and the Gram are formed P times
    cheaper than by jacrev of the whole residual.

    **Arguments:**

    - `terms`: one or more `ResidualTerm`, stacked in this order.

    **Raises:**

    - `TypeError`: when no term is given or one is not a `ResidualTerm`.
    """

    terms: tuple[ResidualTerm, ...]

    def __init__(self, *terms: ResidualTerm):
        if not terms or not all(isinstance(t, ResidualTerm) for t in terms):
            raise TypeError("PointwiseResidual takes one or more ResidualTerm")
        self.terms = tuple(terms)

    def __call__(self, model) -> Float[Array, " P"]:
        return jnp.concatenate([t(model) for t in self.terms])


class ResidualProblem(AbstractProblem):
    r"""Drive any residual r(θ) in R^P to zero: C = (κ/2)|r(θ)|², J = ∂r/∂θ (MATH §8).

    The problem plays the part of a LeastSquaresProblem with X(θ) = r(θ), Y = 0 and the
    squared loss (κ = 1/P by default), so every flow, `simulate`, `euler_steps`, the guards
    and `flowlab.theory` apply unchanged: at full row rank (K ≥ P) the adapted flow gives
    r(s) = e^{−κs} r(0), C(s) = e^{−2κs} C(0) and the stopping time T_ε = ln(C(0)/ε)/(2κ);
    its Euler step h = 1/κ is the minimum-norm Gauss–Newton step (energy natural gradient in
    Woodbury form).

    **Arguments:**

    - `model`: the equinox model whose floating-point arrays are θ (a flowlab.MLP, an
      `equinox.nn.MLP`, a classical model written as a Module).
    - `residual`: `residual(model) -> (P,)`, any JAX function of the model (a PDE's residual
      at collocation points, with derivatives of the network in its inputs, plus boundary
      terms), or a `PointwiseResidual` (rows of J by one reverse pass per point).
    - `kappa`: κ (default 1/P).
    - `check`: check the residual at θ0 when built: it must be finite there, and every entry
      must depend on θ (a Jacobian row that is zero at θ0 means the entry cannot be moved, so
      J cannot have full row rank); one evaluation of r and one jvp.

    **Raises:**

    - `TypeError`: when `residual` is not callable or `model` not an equinox Module.
    - `ValueError`: when the model has no floating-point arrays, the residual fails on the
      model or does not return one 1-D floating array of P ≥ 1 entries, and (with `check`)
      when it is not finite at θ0 or has entries that do not depend on θ.
    """

    model_static: eqx.Module
    theta0: Float[Array, " K"]
    targets: Float[Array, " P"]
    loss: AbstractLoss
    residual_fn: Callable
    _groups: tuple = eqx.field(static=True)
    _treedef: object = eqx.field(static=True)
    _shapes: tuple = eqx.field(static=True)

    def __init__(self, model, residual: Callable, kappa: float | None = None, *,
                 check: bool = True):
        if not callable(residual):
            raise TypeError(f"residual must be a function of the model, got "
                            f"{type(residual).__name__}")
        self.model_static, self.theta0, self._treedef, self._shapes = _parameters(model)
        self.residual_fn = residual
        name = getattr(residual, "__name__", type(residual).__name__)
        try:
            out = jax.eval_shape(lambda th: residual(self.model(th)), self.theta0)
        except Exception as e:
            raise ValueError(f"the residual function {name} fails on the model: "
                             f"{type(e).__name__}: {e}") from e
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise ValueError(f"the residual function {name} must return one array of shape (P,), "
                             f"got {jax.tree_util.tree_structure(out)}")
        if out.ndim != 1 or out.shape[0] == 0:
            raise ValueError(
                f"the residual function {name} must return a 1-D array of shape (P,) with "
                f"P >= 1, got shape {out.shape} (ravel or concatenate the residual's terms)")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"the residual function {name} must return floating-point values, "
                             f"got dtype {out.dtype}")
        num = out.shape[0]
        if isinstance(residual, PointwiseResidual):
            self._groups = tuple((t.points.shape[0], jax.eval_shape(
                lambda x, t=t: t.at(self.model(), x), t.points[0]).shape[0])
                for t in residual.terms)
        else:
            self._groups = ((num, 1),)
        self.targets = jnp.zeros(num, out.dtype)
        self.loss = SquaredLoss(1.0 / num if kappa is None else kappa)
        if check and not isinstance(self.theta0, jax.core.Tracer):
            self._check(name)

    def _check(self, name):
        r0, jv = _value_and_jvp(self, self.theta0)
        r0, jv = np.asarray(r0), np.asarray(jv)
        bad = np.nonzero(~np.isfinite(r0))[0]
        if bad.size:
            raise ValueError(f"the residual function {name} returns {bad.size} non-finite values "
                             f"(NaN or inf) at θ0, at entries {bad[:10].tolist()}")
        dead = np.nonzero(jv == 0)[0]
        if dead.size == jv.size:
            raise ValueError(
                f"the residual function {name} does not depend on θ: its Jacobian at θ0 is "
                "zero. It must compute r from the model it is given (residual(model)), not from "
                "a model captured from outside")
        if dead.size:
            raise ValueError(
                f"entries {dead[:10].tolist()} ({dead.size} of {jv.size}) of the residual "
                f"function {name} do not depend on θ at θ0 (zero rows of J): J cannot have full "
                "row rank; leave constant entries out of the residual")

    @property
    def residual_function(self):
        """The residual as given: model -> r."""
        return self.residual_fn

    def outputs(self, theta: Float[Array, " K"]) -> Float[Array, " P"]:
        """r(θ) (the problem's 'outputs', with targets 0)."""
        return self.residual_fn(self.model(theta))

    def residual_terms(self, theta: Float[Array, " K"]) -> dict[str, Array]:
        """r(θ) cut into the terms of a PointwiseResidual (by name, or 'term<i>'); {'r': r(θ)}
        for any other residual."""
        r = self.outputs(theta)
        if not isinstance(self.residual_fn, PointwiseResidual):
            return {"r": r}
        out, start = {}, 0
        for i, (t, (n, q)) in enumerate(zip(self.residual_fn.terms, self._groups)):
            out[t.name or f"term{i}"] = r[start:start + n * q]
            start += n * q
        return out

    def row_groups(self):
        return self._groups

    @property
    def structured_rows(self) -> bool:
        return isinstance(self.residual_fn, PointwiseResidual)

    @property
    def rows_by_example(self) -> bool:
        return False

    @property
    def layerwise(self) -> bool:
        return False

    @property
    def general_residual(self) -> bool:
        return True

    def group_rows(self, theta, group, items):
        if isinstance(self.residual_fn, PointwiseResidual):
            term = self.residual_fn.terms[group]
            return jax.vmap(jax.jacrev(lambda th, x: term.at(self.model(th), x)),
                            in_axes=(None, 0))(theta, term.points[items])
        _, vjp = jax.vjp(self.outputs, theta)
        basis = jax.nn.one_hot(items, self.num_outputs, dtype=self.targets.dtype)
        return jax.vmap(lambda e: vjp(e)[0])(basis)[:, None, :]


@eqx.filter_jit
def _value_and_jvp(problem, theta):
    """r(θ) and J v for a fixed random v (zero entries of J v: zero rows of J, almost surely);
    one compiled evaluation of r and its jvp."""
    tangent = jax.random.normal(jax.random.key(0), theta.shape, theta.dtype)
    return jax.jvp(problem.outputs, (theta,), (tangent,))
