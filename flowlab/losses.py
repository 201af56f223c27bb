r"""Costs C(X) on stacked outputs beside the squared loss, and the LOSSES registry.

SoftmaxCrossEntropy: labels y_j in the open simplex of R^Q,
C = −(1/N) Σ_j Σ_i y_ji log softmax(x_j)_i, ∇_{x_j} C = (softmax(x_j) − y_j)/N.
Since ∇_{x_j} C sums to zero, the adapted flow X' = −∇_X C (full row rank) conserves
c_j = Σ_i x_ji; on that fibre the minimiser is x*_ji = log y_ji − (1/Q)Σ_k log y_jk + c_j/Q
and the minimum is the mean label entropy −(1/N) Σ_j Σ_i y_ji log y_ji ([CM24], MATH §5).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from .problem import AbstractLoss, SquaredLoss

#: How far a label row's sum may be from 1 (float64; in lower precision 10·Q·eps).
SIMPLEX_SUM_TOL = 1e-9


class SoftmaxCrossEntropy(AbstractLoss):
    """Softmax cross-entropy against labels in the open simplex (every y_ji > 0, Σ_i y_ji = 1).

    Use as ``LeastSquaresProblem(model, dataset, loss=SoftmaxCrossEntropy())``: the problem
    binds it to the data (Q = the targets' width, N the number of points). κ = 1/N is the
    prefactor (∇_X C = κ(softmax − y)).

    **Arguments:**

    - `num_classes`: Q, or None to take it from the targets when bound.
    - `num_points`: N, or None to take it from the targets when bound.

    **Raises:**

    - `ValueError`: when bound (by `LeastSquaresProblem`) to targets with Q < 2 columns, a
      width other than `num_classes`, an entry ≤ 0 or a row sum ≠ 1 (within
      `SIMPLEX_SUM_TOL`); when evaluated before it is bound.
    """

    num_classes: int | None = eqx.field(static=True, default=None)
    num_points: int | None = eqx.field(static=True, default=None)

    def bind(self, targets, num_points, out_size):
        if self.num_classes is not None and self.num_classes != out_size:
            raise ValueError(f"SoftmaxCrossEntropy(num_classes={self.num_classes}) but the targets "
                             f"have {out_size} columns")
        if out_size < 2:
            raise ValueError(f"softmax cross-entropy needs Q >= 2 classes, got Q = {out_size}")
        if not isinstance(targets, jax.core.Tracer):
            y = np.asarray(targets).reshape(num_points, out_size)
            if np.any(y <= 0):
                rows = np.unique(np.nonzero(y <= 0)[0])
                raise ValueError(
                    f"softmax cross-entropy needs labels in the open simplex (every entry > 0); "
                    f"rows {rows[:10].tolist()} have entries <= 0 (e.g. one-hot labels: smooth "
                    "them, y = (1 − ε)·onehot + ε/Q)")
            sums = y.sum(axis=1)
            # float32 labels carry round-off of ~Q·eps in their sums
            tol = max(SIMPLEX_SUM_TOL, 10 * out_size * float(np.finfo(y.dtype).eps)) if (
                np.issubdtype(y.dtype, np.floating)) else SIMPLEX_SUM_TOL
            bad = np.nonzero(np.abs(sums - 1) > tol)[0]
            if bad.size:
                raise ValueError(
                    f"softmax cross-entropy needs label rows summing to 1; rows "
                    f"{bad[:10].tolist()} sum to {sums[bad[:10]].tolist()}")
        return SoftmaxCrossEntropy(int(out_size), int(num_points))

    def _bound(self):
        if self.num_classes is None or self.num_points is None:
            raise ValueError("SoftmaxCrossEntropy is not bound to data; pass it to "
                             "LeastSquaresProblem(..., loss=...) or call .bind(targets, N, Q)")
        return self.num_points, self.num_classes

    @property
    def kappa(self) -> float:
        """The prefactor 1/N."""
        return 1.0 / self._bound()[0]

    def __call__(self, outputs, targets) -> Scalar:
        n, q = self._bound()
        logp = jax.nn.log_softmax(outputs.reshape(n, q), axis=-1)
        return -jnp.sum(targets.reshape(n, q) * logp) / n

    def gradient(self, outputs, targets):
        n, q = self._bound()
        p = jax.nn.softmax(outputs.reshape(n, q), axis=-1)
        return ((p - targets.reshape(n, q)) / n).reshape(-1)

    def minimiser(self, outputs0: Float[Array, " QN"], targets: Float[Array, " QN"]):
        """x*_j = log y_j − mean(log y_j) + c_j/Q with c_j = Σ_i x0_ji: the minimiser of C on the
        fibre of X(0) (the end point of the adapted flow at full row rank)."""
        n, q = self._bound()
        logy = jnp.log(targets.reshape(n, q))
        c = jnp.sum(outputs0.reshape(n, q), axis=-1, keepdims=True)
        return (logy - jnp.mean(logy, axis=-1, keepdims=True) + c / q).reshape(-1)

    def minimum(self, targets: Float[Array, " QN"]) -> Scalar:
        """The mean label entropy −(1/N) Σ_j Σ_i y_ji log y_ji, the infimum of C."""
        n, q = self._bound()
        y = targets.reshape(n, q)
        return -jnp.sum(y * jnp.log(y)) / n

    def output_sums(self, outputs: Float[Array, "*S QN"]) -> Float[Array, "*S N"]:
        """c_j = Σ_i x_ji (conserved by the adapted flow)."""
        n, q = self._bound()
        return jnp.sum(outputs.reshape(*outputs.shape[:-1], n, q), axis=-1)

    def conserved(self, outputs):
        return self.output_sums(outputs)

    def hessian_block_size(self):
        return self._bound()[1]

    def metric_gradient(self, outputs, targets):
        """H⁺∇_X C in closed form: with p = softmax(x_j), H_j = (diag p − ppᵀ)/N and
        ∇_{x_j} C = (p − y_j)/N, z = 1 − y_j/p solves H_j z = ∇_{x_j} C (as Σ_i y_ji = 1), and
        its projection onto 1^⊥ = range H_j is the pseudo-inverse's answer."""
        n, q = self._bound()
        logp = jax.nn.log_softmax(outputs.reshape(n, q), axis=-1)
        z = 1.0 - jnp.exp(jnp.log(targets.reshape(n, q)) - logp)
        return (z - jnp.mean(z, axis=-1, keepdims=True)).reshape(-1)

    def metric_path(self, outputs0, targets, s):
        """p_j(s) = y_j + e^{−s}(p_j(0) − y_j) (∇C = (p − y)/N decays as e^{−s}), each
        example's output sum c_j kept: x_j(s) = log p_j(s) − mean(log p_j(s)) + c_j/Q."""
        n, q = self._bound()
        y = targets.reshape(n, q)
        p = y + jnp.exp(-s) * (jax.nn.softmax(outputs0.reshape(n, q), axis=-1) - y)
        logp = jnp.log(p)
        c = jnp.sum(outputs0.reshape(n, q), axis=-1, keepdims=True)
        return (logp - jnp.mean(logp, axis=-1, keepdims=True) + c / q).reshape(-1)


def smooth_labels(targets: Float[Array, "N Q"], epsilon: float = 0.1) -> Float[Array, "N Q"]:
    """(1 − ε)·y + ε/Q: one-hot labels moved into the open simplex.

    **Arguments:**

    - `targets`: labels, shape (N, Q) (one-hot rows).
    - `epsilon`: ε in (0, 1].

    **Returns:**

    The smoothed labels, shape (N, Q).

    **Raises:**

    - `ValueError`: when `epsilon` is not in (0, 1].
    """
    if not (math.isfinite(epsilon) and 0 < epsilon <= 1):
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon!r}")
    targets = jnp.asarray(targets)
    return (1 - epsilon) * targets + epsilon / targets.shape[-1]


#: name -> loss class, for configs: LOSSES[kind](**params).
LOSSES = {"squared": SquaredLoss, "softmax_cross_entropy": SoftmaxCrossEntropy}
