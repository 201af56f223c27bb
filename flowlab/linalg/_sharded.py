r"""ShardedGram: Θ = D Dᵀ with the rows of D (the N examples of a data fit) split over devices.

The N examples are split into d equal contiguous blocks over a 1-D mesh with axis "data"
(`flowlab.devices.device_mesh(axis="data")`). Device k holds the inputs of its block and
computes only its own rows of D (X is j-major, so the QN/d rows of N/d examples are contiguous):
- 'layerwise' (a flowlab.MLP; inner LayerwiseGram, or AutoGram on an MLP): the activations
  H_{l−1} and backprop signals Δ_l of its N/d examples, one forward/backward pass;
- 'rows' (any model; inner BlockedGram or DenseGram, or AutoGram otherwise): its rows D_k by
  per-example reverse passes, QN/d × K.
Θ[rows_k, :] = [D_k D_jᵀ]_j is filled by passing the blocks around a ring (d − 1 `ppermute`s),
so a device holds two blocks at a time, never all of D or all the signals; Θ comes out row-
sharded (QN/d × QN on each device), and the Cholesky that follows is placed by XLA. Dᵀ w =
Σ_k D_kᵀ w_k: each device multiplies its own block by its slice of w, then one psum of K floats.
Per device: O(K + QN²/d + 2·QN/d·Σ M_l) (layerwise) or O(K + QN²/d + 2·QN/d·K) (rows).

N must be a multiple of the device count; otherwise a ValueError says so (no padding: a padded
example would add rows to D, and zero rows would make Θ singular). Pick `num_devices`, a
divisor of N, to use fewer devices. On one device the result is the unsharded Gram. Only for a
LeastSquaresProblem (rows = examples). Do not combine with seed sharding
(`simulate(..., shard=True)`): both split over the same devices.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..devices import DATA_AXIS, device_mesh
from ._gram import AbstractGram, AutoGram, BlockedGram, DenseGram, LayerwiseGram, auto_gram
from ._layerwise import backprop_transpose, gram_block, mlp_backprop

try:  # jax ≥ 0.6; the experimental module before
    from jax import shard_map as _shard_map
except ImportError:  # pragma: no cover
    from jax.experimental.shard_map import shard_map as _shard_map


def _varying(x):
    """θ marked as differing per device, so that a reverse pass inside the shard_map gives each
    device its own rows (the transpose of the implicit broadcast of a replicated θ is a psum)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, DATA_AXIS, to="varying")
    if hasattr(jax.lax, "pvary"):  # pragma: no cover (jax 0.6 – 0.7)
        return jax.lax.pvary(x, DATA_AXIS)
    return x  # pragma: no cover (before varying types: no implicit psum)


def _ring_rows(block, theirs, size: int):
    """[block(theirs_j)]_j laid side by side in device order, theirs_j passed round the ring:
    after s steps device k holds the block of device (k − s) mod d."""
    k = jax.lax.axis_index(DATA_AXIS)
    perm = [(j, (j + 1) % size) for j in range(size)]
    out = None
    for step in range(size):
        b = block(theirs)
        if out is None:
            out = jnp.zeros((b.shape[0], size * b.shape[1]), b.dtype)
        start = ((k - step) % size) * b.shape[1]
        out = jax.lax.dynamic_update_slice(out, b, (jnp.zeros_like(start), start))
        if step < size - 1:
            theirs = jax.lax.ppermute(theirs, DATA_AXIS, perm)
    return out


class ShardedGram(AbstractGram):
    """Θ = D Dᵀ and w ↦ Dᵀ w with the examples (rows of D) split over devices (see module doc).

    Use as `CholeskySolver(gram=ShardedGram())`; `place(problem)` puts the inputs on the mesh
    once, so that a jitted solve does not move them at every call. On one device the result
    is the unsharded Gram. How to run it: docs, How-to → GPU and multi-device.

    **Arguments:**

    - `inner`: how a device forms its rows: `LayerwiseGram` (an MLP), `BlockedGram` /
      `DenseGram` (its rows of D by per-example reverse passes), `AutoGram` (layerwise for an
      MLP, rows otherwise).
    - `num_devices`: use the first that many of `jax.devices()`; None: all.

    **Raises:**

    - `TypeError`: when `inner` is a ShardedGram; when used on a problem whose rows are not
      examples (a `ResidualProblem`: use `BlockedGram`).
    - `ValueError`: when `num_devices` is not None or an integer ≥ 1; when used, if
      `num_devices` exceeds the visible devices, N is not a multiple of the device count,
      `inner` is a LayerwiseGram on a model that is not a flowlab.MLP, or `inner` is another
      kind of Gram.
    """

    inner: AbstractGram = AutoGram()
    num_devices: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if isinstance(self.inner, ShardedGram):
            raise TypeError("ShardedGram cannot wrap another ShardedGram")
        if self.num_devices is not None and (not isinstance(self.num_devices, int)
                                             or self.num_devices < 1):
            raise ValueError(f"num_devices must be an integer >= 1 or None, got "
                             f"{self.num_devices!r}")

    def mesh(self):
        """The 1-D mesh (axis "data") the examples are split over."""
        devices = jax.devices()
        if self.num_devices is not None:
            if self.num_devices > len(devices):
                raise ValueError(f"ShardedGram(num_devices={self.num_devices}) but only "
                                 f"{len(devices)} devices are visible")
            devices = devices[: self.num_devices]
        return device_mesh(devices, DATA_AXIS)

    def route(self, problem) -> str:
        """'layerwise' or 'rows': how each device forms its rows."""
        if not problem.rows_by_example:
            raise TypeError(
                "ShardedGram splits the examples of a LeastSquaresProblem over devices, got a "
                f"{type(problem).__name__}; use BlockedGram for residual problems"
            )
        inner = auto_gram(problem) if isinstance(self.inner, AutoGram) else self.inner
        if isinstance(inner, LayerwiseGram):
            if not problem.layerwise:
                raise ValueError("ShardedGram(LayerwiseGram()) needs a flowlab.MLP; use "
                                 "ShardedGram(BlockedGram()) for other models")
            return "layerwise"
        if isinstance(inner, (BlockedGram, DenseGram)):
            return "rows"
        raise ValueError("ShardedGram wraps LayerwiseGram, BlockedGram, DenseGram or AutoGram, "
                         f"got {type(inner).__name__}")

    def _checked_mesh(self, problem):
        mesh = self.mesh()
        n, d = problem.num_points, mesh.size
        if n % d:
            raise ValueError(
                f"ShardedGram splits the N = {n} examples over {d} devices, so N must be a "
                f"multiple of {d}: drop {n % d} examples, or pass num_devices = a divisor of N"
            )
        return mesh

    def place(self, problem):
        """The problem with its inputs row-sharded over the mesh (P("data")), on device."""
        self.route(problem)
        sharding = NamedSharding(self._checked_mesh(problem), P(DATA_AXIS))
        host = np.asarray(problem.inputs)
        inputs = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        return eqx.tree_at(lambda p: p.inputs, problem, inputs)

    def __call__(self, problem, theta):
        route = self.route(problem)
        mesh = self._checked_mesh(problem)
        d = mesh.size
        rows_spec, data = P(DATA_AXIS, None), P(DATA_AXIS)

        if route == "layerwise":
            def local(th, x):
                model = problem.model(th)
                hs, deltas = mlp_backprop(model, x)
                gram = _ring_rows(lambda other: gram_block(model, hs, deltas, *other),
                                  (hs, deltas), d)
                return gram, (hs, deltas)

            def local_transpose(th, aux, w):
                hs, deltas = aux
                return backprop_transpose(problem, problem.model(th), hs, deltas, w)
        else:
            def local(th, x):
                def f(t, xi):
                    return problem.model(t)(xi).reshape(-1)

                rows = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(_varying(th), x)
                rows = rows.reshape(-1, th.shape[0])  # D_k: (QN/d, K)
                return _ring_rows(lambda other: rows @ other.T, rows, d), rows

            def local_transpose(th, aux, w):
                return aux.T @ w

        gram, aux = _shard_map(local, mesh=mesh, in_specs=(P(), data),
                               out_specs=(rows_spec, data))(theta, problem.inputs)

        def summed(th, a, w):
            return jax.lax.psum(local_transpose(th, a, w), DATA_AXIS)

        transpose_map = _shard_map(summed, mesh=mesh, in_specs=(P(), data, data),
                                   out_specs=P())
        return gram, lambda w: transpose_map(theta, aux, w)
