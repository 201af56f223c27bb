"""Training sets: a validated (inputs, targets) pair, generators and loaders."""

import csv
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Dataset(eqx.Module):
    """N inputs x_j in R^M with targets y_j in R^Q.

    Stacked targets Y = (y_1, ..., y_N) in R^{QN} are j-major, as the outputs X(θ).
    Raises ValueError on mismatched shapes, non-float data or NaN/inf.
    """

    inputs: Float[Array, "N M"]
    targets: Float[Array, "N Q"]

    def __init__(self, inputs, targets):
        inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
        if inputs.ndim == 1:
            inputs = inputs[:, None]
        if targets.ndim == 1:
            targets = targets[:, None]
        if inputs.ndim != 2 or targets.ndim != 2:
            raise ValueError(
                f"inputs must be (N, M) and targets (N, Q); got shapes {inputs.shape} and "
                f"{targets.shape}"
            )
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets disagree on N: {inputs.shape[0]} inputs, "
                f"{targets.shape[0]} targets"
            )
        if inputs.shape[0] == 0:
            raise ValueError("the dataset is empty (N = 0)")
        for name, a in (("inputs", inputs), ("targets", targets)):
            if not (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == jnp.bool_):
                raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        dtype = jnp.zeros(()).dtype
        inputs, targets = inputs.astype(dtype), targets.astype(dtype)
        for name, a in (("inputs", inputs), ("targets", targets)):
            if _is_concrete(a) and not bool(jnp.all(jnp.isfinite(a))):
                bad = int(jnp.sum(~jnp.isfinite(a)))
                raise ValueError(f"{name} contain {bad} non-finite values (NaN or inf)")
        self.inputs, self.targets = inputs, targets

    @property
    def num_points(self) -> int:
        return self.inputs.shape[0]

    @property
    def in_size(self) -> int:
        return self.inputs.shape[1]

    @property
    def out_size(self) -> int:
        return self.targets.shape[1]

    @property
    def stacked_targets(self) -> Float[Array, " QN"]:
        return self.targets.reshape(-1)


def _gaussian_inputs(key, num_points, in_size):
    return jr.normal(key, (num_points, in_size))


def teacher(
    key: PRNGKeyArray,
    num_points: int,
    in_size: int,
    out_size: int = 1,
    hidden: tuple[int, ...] = (32,),
    activation: str = "tanh",
    noise: float = 0.0,
) -> Dataset:
    """Targets from a random MLP (the teacher) on Gaussian inputs, plus optional noise."""
    from .nets import MLP

    kx, kt, kn = jr.split(key, 3)
    x = _gaussian_inputs(kx, num_points, in_size)
    net = MLP(in_size, out_size, hidden, activation, key=kt)
    y = jax.vmap(net)(x)
    return Dataset(x, y + noise * jr.normal(kn, y.shape))


def smooth_regression(
    key: PRNGKeyArray, num_points: int, in_size: int = 2, out_size: int = 1, noise: float = 0.0
) -> Dataset:
    """y_q = sin(π <w_q, x>) + cos(<v_q, x>)/2 on x uniform in [-1, 1]^M, w, v ~ N(0, I)."""
    kx, kw, kv, kn = jr.split(key, 4)
    x = jr.uniform(kx, (num_points, in_size), minval=-1.0, maxval=1.0)
    w = jr.normal(kw, (in_size, out_size))
    v = jr.normal(kv, (in_size, out_size))
    y = jnp.sin(jnp.pi * x @ w) + 0.5 * jnp.cos(x @ v)
    return Dataset(x, y + noise * jr.normal(kn, y.shape))


def random_labels(
    key: PRNGKeyArray, num_points: int, in_size: int, out_size: int = 1
) -> Dataset:
    """Gaussian inputs with independent N(0, 1) targets: nothing to learn but memorisation."""
    kx, ky = jr.split(key)
    return Dataset(
        _gaussian_inputs(kx, num_points, in_size), jr.normal(ky, (num_points, out_size))
    )


def gaussian_clusters(
    key: PRNGKeyArray,
    num_points: int,
    in_size: int,
    num_classes: int = 3,
    spread: float = 0.5,
    label_smoothing: float = 0.0,
) -> Dataset:
    """Points around num_classes random unit-variance centres with one-hot targets (Q =
    classes); label_smoothing = ε in (0, 1) gives (1 − ε)·onehot + ε/Q, labels in the open
    simplex as the cross-entropy cost needs."""
    if num_classes < 2:
        raise ValueError(f"gaussian_clusters needs num_classes >= 2, got {num_classes}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    kc, kl, kx = jr.split(key, 3)
    centres = jr.normal(kc, (num_classes, in_size))
    labels = jr.randint(kl, (num_points,), 0, num_classes)
    x = centres[labels] + spread * jr.normal(kx, (num_points, in_size))
    onehot = jax.nn.one_hot(labels, num_classes)
    return Dataset(x, (1.0 - label_smoothing) * onehot + label_smoothing / num_classes)


def load_npz(path: str | os.PathLike, inputs_key: str = "inputs", targets_key: str = "targets"):
    """Load a Dataset from an .npz file holding two arrays (pickled objects are refused)."""
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in (inputs_key, targets_key) if k not in f.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; the file has {f.files}")
        return Dataset(f[inputs_key], f[targets_key])


def load_csv(
    path: str | os.PathLike, num_targets: int = 1, *, delimiter: str = ",", header: bool | None = None
) -> Dataset:
    """Load a Dataset from a CSV file whose last `num_targets` columns are the targets.

    A first row that does not parse as numbers is taken as a header (or set `header`).
    """
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no rows")

    def numeric(row):
        try:
            [float(c) for c in row]
            return True
        except ValueError:
            return False

    if header is None:
        header = not numeric(rows[0])
    body = rows[1:] if header else rows
    for i, row in enumerate(body, start=2 if header else 1):
        if len(row) != len(body[0]):
            raise ValueError(f"{path}: line {i} has {len(row)} columns, expected {len(body[0])}")
        if not numeric(row):
            raise ValueError(f"{path}: line {i} has a non-numeric entry: {row}")
    data = np.asarray(body, dtype=float)
    if not 1 <= num_targets < data.shape[1]:
        raise ValueError(
            f"{path}: num_targets={num_targets} leaves no inputs among {data.shape[1]} columns"
        )
    return Dataset(data[:, :-num_targets], data[:, -num_targets:])


GENERATORS = {
    "teacher": teacher,
    "smooth_regression": smooth_regression,
    "random_labels": random_labels,
    "gaussian_clusters": gaussian_clusters,
}
