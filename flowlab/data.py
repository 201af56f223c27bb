"""Training sets: a validated (inputs, targets) pair, generators and loaders."""

import csv
import hashlib
import math
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

    Stacked targets Y = (y_1, ..., y_N) in R^{QN} are j-major, as the outputs X(θ). Both
    arrays are stored in the default float dtype (float64 with `jax_enable_x64`).

    **Arguments:**

    - `inputs`: the inputs, shape (N, M) (a 1-D array is N inputs of dimension 1).
    - `targets`: the targets, shape (N, Q) (a 1-D array is N targets of width 1).

    **Raises:**

    - `ValueError`: on shapes that are not (N, M) and (N, Q) with the same N ≥ 1, non-numeric
      data, or NaN/inf entries.
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
    """Targets from a random MLP (the teacher) on Gaussian inputs, plus optional noise.

    **Arguments:**

    - `key`: the PRNG key of the inputs, the teacher and the noise.
    - `num_points`: N.
    - `in_size`: M, the inputs' dimension (x_j ~ N(0, I)).
    - `out_size`: Q, the teacher's outputs.
    - `hidden`: the teacher's hidden widths.
    - `activation`: the teacher's activation (a name of `flowlab.nets.ACTIVATIONS`).
    - `noise`: the standard deviation of Gaussian noise added to the targets.

    **Returns:**

    A `Dataset` of N examples.

    **Raises:**

    - `ValueError`: from the teacher `MLP`: an unknown activation or a size below 1.
    """
    from .nets import MLP

    kx, kt, kn = jr.split(key, 3)
    x = _gaussian_inputs(kx, num_points, in_size)
    net = MLP(in_size, out_size, hidden, activation, key=kt)
    y = jax.vmap(net)(x)
    return Dataset(x, y + noise * jr.normal(kn, y.shape))


def smooth_regression(
    key: PRNGKeyArray, num_points: int, in_size: int = 2, out_size: int = 1, noise: float = 0.0
) -> Dataset:
    """y_q = sin(π <w_q, x>) + cos(<v_q, x>)/2 on x uniform in [-1, 1]^M, w, v ~ N(0, I).

    **Arguments:**

    - `key`: the PRNG key of the inputs, w, v and the noise.
    - `num_points`: N.
    - `in_size`: M.
    - `out_size`: Q.
    - `noise`: the standard deviation of Gaussian noise added to the targets.

    **Returns:**

    A `Dataset` of N examples.
    """
    kx, kw, kv, kn = jr.split(key, 4)
    x = jr.uniform(kx, (num_points, in_size), minval=-1.0, maxval=1.0)
    w = jr.normal(kw, (in_size, out_size))
    v = jr.normal(kv, (in_size, out_size))
    y = jnp.sin(jnp.pi * x @ w) + 0.5 * jnp.cos(x @ v)
    return Dataset(x, y + noise * jr.normal(kn, y.shape))


def random_labels(
    key: PRNGKeyArray, num_points: int, in_size: int, out_size: int = 1
) -> Dataset:
    """Gaussian inputs with independent N(0, 1) targets: nothing to learn but memorisation.

    **Arguments:**

    - `key`: the PRNG key of the inputs and the targets.
    - `num_points`: N.
    - `in_size`: M.
    - `out_size`: Q.

    **Returns:**

    A `Dataset` of N examples.
    """
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
    """Points around `num_classes` random centres (drawn from N(0, I)) with one-hot targets
    (Q = classes).

    **Arguments:**

    - `key`: the PRNG key of the centres, the labels and the points.
    - `num_points`: N.
    - `in_size`: M.
    - `num_classes`: Q ≥ 2.
    - `spread`: the standard deviation of the points around their centre.
    - `label_smoothing`: ε in [0, 1); ε > 0 gives (1 − ε)·onehot + ε/Q, labels in the open
      simplex as the cross-entropy cost needs.

    **Returns:**

    A `Dataset` of N examples.

    **Raises:**

    - `ValueError`: when `num_classes` < 2 or `label_smoothing` is not in [0, 1).
    """
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


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and what is wrong with it."""


def data_sha256(inputs: np.ndarray, targets: np.ndarray) -> str:
    """SHA-256 (hex) of a dataset's contents: the shapes and values of its inputs and targets as
    the runs use them (a file re-saved or re-formatted with the same numbers keeps it)."""
    h = hashlib.sha256()
    for a in (inputs, targets):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _checked(path, name: str, a: np.ndarray, dtype) -> np.ndarray:
    """One array of a data file as a finite (N, ·) array of `dtype`, or a DataFileError."""
    if a.dtype.kind not in "biuf":
        what = {"O": "Python objects", "c": "complex numbers", "U": "text", "S": "bytes",
                "V": "records", "M": "dates", "m": "time spans"}.get(a.dtype.kind, "non-numbers")
        raise DataFileError(f"{path}: {name} holds {what} (dtype {a.dtype}); expected real numbers")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataFileError(f"{path}: {name} has shape {a.shape}; expected (N,) or (N, columns)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataFileError(f"{path}: {name} is empty (shape {a.shape})")
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(dtype)
    bad = ~np.isfinite(out)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise DataFileError(
            f"{path}: {name} holds {int(bad.sum())} non-finite value(s) (NaN, inf or beyond "
            f"{np.dtype(dtype).name}), the first at row {i}, column {j}: {a[i, j].item()!r}")
    return out


def _pair(path, inputs, targets, names, dtype):
    x = _checked(path, names[0], inputs, dtype)
    y = _checked(path, names[1], targets, dtype)
    if x.shape[0] != y.shape[0]:
        raise DataFileError(f"{path}: {names[0]} and {names[1]} disagree on N: {x.shape[0]} "
                            f"and {y.shape[0]} rows")
    return x, y


def read_npz(path: str | os.PathLike, inputs_key: str = "inputs", targets_key: str = "targets",
             *, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, targets) arrays of an .npz file, checked (NumPy only, no JAX): numeric,
    finite in `dtype`, (N, M) and (N, Q) with N, M, Q >= 1. Pickled objects are refused.
    Raises DataFileError naming the file and the problem."""
    try:
        f = np.load(path, allow_pickle=False)
    except OSError as e:
        raise DataFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 -- not a zip, truncated, a pickle (refused), ...
        raise DataFileError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataFileError(f"{path}: holds a single .npy array, not an .npz archive of "
                            f"'{inputs_key}' and '{targets_key}'")
    arrays = {}
    with f:
        missing = [k for k in (inputs_key, targets_key) if k not in f.files]
        if missing:
            raise DataFileError(f"{path}: missing arrays {missing}; the file has {f.files}")
        for k in (inputs_key, targets_key):
            try:
                arrays[k] = f[k]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise DataFileError(
                        f"{path}: array '{k}' holds pickled Python objects; object arrays cannot "
                        f"be loaded (pickles are refused): save numeric arrays") from None
                raise DataFileError(f"{path}: array '{k}' cannot be read ({e})") from None
            except Exception as e:  # noqa: BLE001 -- truncated or corrupt member: zlib, zipfile, EOF, header errors
                raise DataFileError(f"{path}: array '{k}' is damaged ({type(e).__name__}: {e})") from None
    return _pair(path, arrays[inputs_key], arrays[targets_key],
                 (f"array '{inputs_key}'", f"array '{targets_key}'"), dtype)


def read_csv(path: str | os.PathLike, num_targets: int = 1, *, delimiter: str = ",",
             header: bool | None = None, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, targets) arrays of a CSV file whose last `num_targets` columns are the
    targets, checked as `read_npz` checks (NumPy only). Blank lines are skipped; a first row
    with no number in it is a header (or set `header`). Every other entry must be a finite
    number: an empty, non-numeric, NaN or inf entry is a DataFileError naming its line and
    column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i, r) for i, r in enumerate(csv.reader(f, delimiter=delimiter), start=1)
                    if r and any(c.strip() for c in r)]
    except OSError as e:
        raise DataFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataFileError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise DataFileError(f"{path}: no rows")

    def number(text):
        try:
            return float(text)
        except ValueError:
            return None

    if header is None:
        header = all(number(c) is None for c in rows[0][1])
    body = rows[1:] if header else rows
    if not body:
        raise DataFileError(f"{path}: no data rows below the header")
    width = len(body[0][1])
    if header and len(rows[0][1]) != width:
        raise DataFileError(f"{path}: the header (line {rows[0][0]}) names {len(rows[0][1])} "
                            f"columns, the data rows have {width}")
    values = []
    for line, row in body:
        if len(row) != width:
            raise DataFileError(f"{path}: line {line} has {len(row)} columns, expected {width}")
        nums = [number(c) for c in row]
        for col, (text, v) in enumerate(zip(row, nums), start=1):
            if v is None:
                what = "an empty entry" if not text.strip() else f"a non-numeric entry {text!r}"
                raise DataFileError(f"{path}: line {line} has {what} in column {col}")
            if not math.isfinite(v):
                raise DataFileError(f"{path}: line {line} has a non-finite entry {text.strip()!r} "
                                    f"in column {col}")
        values.append(nums)
    data = np.asarray(values, dtype=np.float64)
    if not 1 <= num_targets < data.shape[1]:
        raise DataFileError(
            f"{path}: num_targets = {num_targets} leaves no inputs among {data.shape[1]} columns")
    return _pair(path, data[:, :-num_targets], data[:, -num_targets:],
                 ("the input columns", "the target columns"), dtype)


def load_npz(path: str | os.PathLike, inputs_key: str = "inputs", targets_key: str = "targets"):
    """Load a Dataset from an .npz file holding two arrays (pickled objects are refused).

    **Arguments:**

    - `path`: the .npz file.
    - `inputs_key`: the name of the inputs array, (N, M) or (N,).
    - `targets_key`: the name of the targets array, (N, Q) or (N,).

    **Returns:**

    A `Dataset`.

    **Raises:**

    - `DataFileError` (a ValueError): for every problem with the file, naming it: unreadable,
      not an .npz archive, a missing or damaged array, pickled objects, non-numeric or
      non-finite values, wrong shapes or disagreeing N (`flowlab.data.read_npz`).
    """
    return Dataset(*read_npz(path, inputs_key, targets_key))


def load_csv(
    path: str | os.PathLike, num_targets: int = 1, *, delimiter: str = ",", header: bool | None = None
) -> Dataset:
    """Load a Dataset from a CSV file whose last `num_targets` columns are the targets.

    **Arguments:**

    - `path`: the CSV file (UTF-8; blank lines are skipped).
    - `num_targets`: how many trailing columns are targets (Q); at least one column must be
      left for the inputs.
    - `delimiter`: the column separator.
    - `header`: whether the first row is a header; None: it is when it holds no number.

    **Returns:**

    A `Dataset`.

    **Raises:**

    - `DataFileError` (a ValueError): for every problem with the file, naming the file, line
      and column: unreadable, not UTF-8, no rows, ragged rows, an empty, non-numeric, NaN or
      inf entry, or `num_targets` leaving no inputs (`flowlab.data.read_csv`).
    """
    return Dataset(*read_csv(path, num_targets, delimiter=delimiter, header=header))


def _sklearn(name: str):
    try:
        from sklearn import datasets
    except ImportError:  # pragma: no cover - scikit-learn is an optional dependency
        raise ImportError(f"the {name!r} data set needs scikit-learn (pip install "
                          "'flowlab[data]')") from None
    return getattr(datasets, f"load_{name}")()


def _subset(key, total: int, num_points: int, name: str) -> np.ndarray:
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or not (
            1 <= num_points <= total):
        raise ValueError(f"{name} has {total} examples; num_points must be in [1, {total}], got "
                         f"{num_points!r}")
    return np.sort(np.asarray(jr.permutation(key, total))[:num_points])


def diabetes(key: PRNGKeyArray, num_points: int = 442, in_size: int = 10, out_size: int = 1,
             noise: float = 0.0) -> Dataset:
    """scikit-learn's diabetes regression data (bundled, N = 442, M = 10, Q = 1): a random
    subset of `num_points` examples (`key`), inputs and target standardised to mean 0 and
    variance 1 over all 442 examples."""
    if in_size != 10 or out_size != 1:
        raise ValueError(f"diabetes has M = 10 inputs and Q = 1 target; set data.in_size = 10 "
                         f"and data.out_size = 1 (got {in_size}, {out_size})")
    d = _sklearn("diabetes")
    x = (d.data - d.data.mean(axis=0)) / d.data.std(axis=0)
    y = (d.target - d.target.mean()) / d.target.std()
    idx = _subset(key, x.shape[0], num_points, "diabetes")
    y = y[idx, None] + noise * np.asarray(jr.normal(jr.fold_in(key, 1), (len(idx), 1)))
    return Dataset(x[idx], y)


def digits(key: PRNGKeyArray, num_points: int = 500, in_size: int = 64, num_classes: int = 10,
           label_smoothing: float = 0.0) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (bundled, 1797 images, M = 64 pixels scaled to
    [0, 1]): a random subset of `num_points` images of the classes 0..num_classes−1, one-hot
    targets (Q = num_classes); label_smoothing = ε gives (1 − ε)·onehot + ε/Q, labels in the
    open simplex as the softmax cross-entropy needs."""
    if in_size != 64:
        raise ValueError(f"digits has M = 64 pixels; set data.in_size = 64 (got {in_size})")
    if not 2 <= num_classes <= 10:
        raise ValueError(f"digits has 10 classes; num_classes must be in [2, 10], got "
                         f"{num_classes}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    d = _sklearn("digits")
    keep = d.target < num_classes
    x, labels = d.data[keep] / 16.0, d.target[keep]
    idx = _subset(key, x.shape[0], num_points, f"digits with {num_classes} classes")
    onehot = np.eye(num_classes)[labels[idx]]
    return Dataset(x[idx], (1.0 - label_smoothing) * onehot + label_smoothing / num_classes)


def wine(key: PRNGKeyArray, num_points: int = 178, in_size: int = 13, num_classes: int = 3,
         label_smoothing: float = 0.0) -> Dataset:
    """scikit-learn's wine recognition data (bundled, 178 wines, 3 cultivars, M = 13 chemical
    measurements standardised to mean 0 and variance 1 over all 178).

    **Arguments:**

    - `key`: picks the random subset.
    - `num_points`: how many wines, 1 to 178.
    - `in_size`: must be 13 (a config's data.in_size).
    - `num_classes`: must be 3 (a config's data.out_size).
    - `label_smoothing`: ε in [0, 1): targets (1 − ε)·onehot + ε/3, in the open simplex for
      ε > 0 (as the softmax cross-entropy needs).

    **Returns:**

    A `Dataset` with inputs (num_points, 13) and targets (num_points, 3).

    **Raises:**

    - `ValueError`: for a size other than 13 × 3, `num_points` outside [1, 178], or ε outside
      [0, 1).
    - `ImportError`: without scikit-learn (``pip install 'flowlab[data]'``).
    """
    if in_size != 13 or num_classes != 3:
        raise ValueError(f"wine has M = 13 inputs and 3 classes; set data.in_size = 13 and "
                         f"data.out_size = 3 (got {in_size}, {num_classes})")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    d = _sklearn("wine")
    x = (d.data - d.data.mean(axis=0)) / d.data.std(axis=0)
    idx = _subset(key, x.shape[0], num_points, "wine")
    onehot = np.eye(3)[d.target[idx]]
    return Dataset(x[idx], (1.0 - label_smoothing) * onehot + label_smoothing / 3)


def train_test_split(dataset: Dataset, test_fraction: float, key: PRNGKeyArray
                     ) -> tuple[Dataset, Dataset]:
    """A random split into (train, test), round(test_fraction·N) test examples (at least one of
    each)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n = dataset.num_points
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    if n < 2:
        raise ValueError("a train/test split needs at least 2 examples")
    perm = np.asarray(jr.permutation(key, n))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return (Dataset(dataset.inputs[train], dataset.targets[train]),
            Dataset(dataset.inputs[test], dataset.targets[test]))


GENERATORS = {
    "teacher": teacher,
    "smooth_regression": smooth_regression,
    "random_labels": random_labels,
    "gaussian_clusters": gaussian_clusters,
    "diabetes": diabetes,
    "digits": digits,
    "wine": wine,
}
