r"""Sharding the seed axis of a batched run over devices with `jax.sharding`.

A batch θ0 of shape (B, K) is padded to a multiple of the device count (by repeating its last
row, so the padding is a valid, finite problem), placed with a NamedSharding over a 1-D Mesh of
`jax.devices()` (axis "seeds"), run by the same compiled vmapped solve, and the padding stripped
from the results. The problem and the flow are replicated. The same code runs on 1 CPU, several
GPUs or a TPU slice; on one device sharding is a no-op.

Test on a CPU by forcing several host devices *before JAX initialises*:
``XLA_FLAGS=--xla_force_host_platform_device_count=4 python ...``.

Multi-host (several processes, each with its local devices): call
``jax.distributed.initialize()`` (or with ``coordinator_address=..., num_processes=...,
process_id=...`` where no cluster environment provides them) at the very start of every
process, before any other JAX call, and run the same program with the same full θ0 batch in
every process. `jax.devices()` then lists the global devices, `shard_batch` builds the global
array with `jax.make_array_from_callback` (each process supplies only its addressable shards)
and `unshard` gathers the results to every process with `process_allgather`.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: name of the mesh axis the seeds are split over.
SEED_AXIS = "seeds"
#: name of the mesh axis the examples (rows of D) are split over (`flowlab.ShardedGram`).
DATA_AXIS = "data"


def device_mesh(devices=None, axis: str = SEED_AXIS) -> Mesh:
    """A 1-D Mesh over devices.

    **Arguments:**

    - `devices`: the devices; None: all of `jax.devices()` (every process's, multi-host).
    - `axis`: the mesh axis name: "seeds" (`SEED_AXIS`, the batch of θ0) or "data"
      (`DATA_AXIS`, the examples, `flowlab.ShardedGram`).

    **Returns:**

    A `jax.sharding.Mesh` of shape (len(devices),).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def resolve_shard(shard: bool | str, batch_size: int) -> bool:
    """True/False as given; 'auto' shards when there is more than one device and more than
    one seed."""
    if shard == "auto":
        return jax.device_count() > 1 and batch_size > 1
    if isinstance(shard, bool):
        return shard
    raise ValueError(f"shard must be True, False or 'auto', got {shard!r}")


def padded_size(batch_size: int, num_devices: int) -> int:
    """The smallest multiple of num_devices that is ≥ batch_size."""
    return num_devices * math.ceil(batch_size / num_devices)


def pad_batch(batch, multiple: int):
    """Pad the leading axis of an array to a multiple of `multiple` by repeating the last row."""
    batch = np.asarray(batch)
    extra = padded_size(batch.shape[0], multiple) - batch.shape[0]
    if extra == 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], extra, axis=0)], axis=0)


def shard_batch(batch, mesh: Mesh | None = None) -> jax.Array:
    """`batch` (B, ...) padded to a multiple of the device count and split along axis 0.

    The padding repeats the last row, so it is a valid, finite problem; `simulate` strips it
    from the results.

    **Arguments:**

    - `batch`: an array with the seeds on axis 0 (numpy or JAX; it is copied to the host).
    - `mesh`: the mesh to split over (axis "seeds"); None: `device_mesh()`.

    **Returns:**

    A global `jax.Array` of shape (mesh.size·⌈B/mesh.size⌉, ...), sharded along axis 0.
    """
    mesh = device_mesh() if mesh is None else mesh
    host = pad_batch(batch, mesh.size)
    sharding = NamedSharding(mesh, PartitionSpec(SEED_AXIS))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh | None = None):
    """Every array leaf of `tree` placed whole on every device of the mesh."""
    mesh = device_mesh() if mesh is None else mesh
    sharding = NamedSharding(mesh, PartitionSpec())
    arrays, static = eqx.partition(tree, eqx.is_array)

    def put(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return eqx.combine(jax.tree_util.tree_map(put, arrays), static)


def unshard(tree, batch_size: int):
    """The first `batch_size` rows of every array leaf (padding stripped), gathered to every
    process when running multi-host, and placed on the default device."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a)[:batch_size]) if eqx.is_array(a) else a, tree
    )
