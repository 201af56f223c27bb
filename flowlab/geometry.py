r"""Sub-Riemannian diagnostics of a flow (MATH §3.5).

The horizontal space at θ is H_θ = (ker D)^⊥ = range Dᵀ, with the metric g(v, w) = <Dv, Dw>.
The adapted field −D⁺∇_X C is the minimal-norm v with Dv = −∇_X C, so it is horizontal and its
g-length ∫|Dθ'| ds equals the length of the output path, |X(0) − Y| on the straight segment.

`SUBRIEMANNIAN_EXTRAS` plugs into ``simulate(..., extras=SUBRIEMANNIAN_EXTRAS)``; `path_lengths`
integrates the saved speeds.
"""

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from .linalg import default_rcond, jacobian_svd


def kernel_component(problem, theta, v: Float[Array, " K"], rcond: float | None = None):
    """The projection of v onto ker D (singular values ≤ rcond·σ_max count as zero).

    **Arguments:**

    - `problem`: the problem.
    - `theta`: θ, where D is taken (by its SVD).
    - `v`: a vector of parameter space, shape (K,).
    - `rcond`: the cutoff relative to σ_max; None: max(QN, K)·eps.

    **Returns:**

    P_{ker D} v, shape (K,).
    """
    rcond = default_rcond(problem) if rcond is None else rcond
    _, s, vt = jacobian_svd(problem, theta)
    keep = s > rcond * s[0]
    return v - vt.T @ jnp.where(keep, vt @ v, 0.0)


def parameter_speed(problem, flow, theta) -> Scalar:
    """|θ'|, the Euclidean speed.

    **Arguments:**

    - `problem`, `flow`, `theta`: the problem, the flow and the point θ.

    **Returns:**

    |θ'| at θ, a scalar.
    """
    return jnp.linalg.norm(flow.velocity(problem, theta))


def output_speed(problem, flow, theta) -> Scalar:
    """|Dθ'| = |X'|, the g-speed of a horizontal velocity.

    **Arguments:**

    - `problem`, `flow`, `theta`: the problem, the flow and the point θ.

    **Returns:**

    |X'| at θ, a scalar (one jvp).
    """
    return jnp.linalg.norm(flow.output_velocity(problem, theta))


def vertical_fraction(problem, flow, theta) -> Scalar:
    """|P_{ker D} θ'| / |θ'| (0 for a horizontal field; 0 where θ' = 0).

    **Arguments:**

    - `problem`, `flow`, `theta`: the problem, the flow and the point θ.

    **Returns:**

    The fraction in [0, 1], a scalar.
    """
    v = flow.velocity(problem, theta)
    norm = jnp.linalg.norm(v)
    vert = jnp.linalg.norm(kernel_component(problem, theta, v))
    return jnp.where(norm > 0, vert / jnp.where(norm > 0, norm, 1.0), 0.0)


#: name -> fn(problem, flow, θ), for simulate(..., extras=SUBRIEMANNIAN_EXTRAS).
SUBRIEMANNIAN_EXTRAS = {
    "parameter_speed": parameter_speed,
    "output_speed": output_speed,
    "vertical_fraction": vertical_fraction,
}


def _trapezoid(ts, f):
    return float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(ts)))


def _length(ts, speed):
    """Trapezoid length and a Richardson error estimate |T(h) − T(2h)|/3 (every other point)."""
    full = _trapezoid(ts, speed)
    if ts.size < 5:
        return full, math.nan
    coarse = _trapezoid(ts[::2], speed[::2]) if ts.size % 2 else _trapezoid(
        np.append(ts[:-1:2], ts[-1]), np.append(speed[:-1:2], speed[-1]))
    return full, abs(full - coarse) / 3


def path_lengths(trajectory) -> dict:
    """Lengths of one (unbatched) trajectory saved with SUBRIEMANNIAN_EXTRAS, over its valid
    saves, by the trapezoid rule on the save grid (error estimates by Richardson, comparing
    with every other save point; refine the grid until they are small):

    g_length = ∫|Dθ'| ds (the output path's length), euclidean_length = ∫|θ'| ds,
    output_chord = |X(0) − X(T)|, output_distance = |X(0) − Y| (the g-length of the adapted
    flow run to the end), g_ratio = g_length / output_chord (1 for a straight output path),
    max_vertical_fraction, and parameter_chord = |θ(T) − θ(0)| when θ was saved.

    **Arguments:**

    - `trajectory`: one (unbatched) `Trajectory` from
      `simulate(..., extras=SUBRIEMANNIAN_EXTRAS)`.

    **Returns:**

    A dict of floats: `t_end`, `g_length`, `g_length_error`, `euclidean_length`,
    `euclidean_length_error`, `output_chord`, `output_distance`, `g_ratio`,
    `max_vertical_fraction`, and `parameter_chord` when θ was saved.

    **Raises:**

    - `ValueError`: when the trajectory is batched (use `trajectory.seed(i)`) or lacks the
      extras of `SUBRIEMANNIAN_EXTRAS`.
    """
    tr = trajectory
    if tr.batch_shape:
        raise ValueError("path_lengths takes one trajectory; use trajectory.seed(i)")
    missing = [k for k in SUBRIEMANNIAN_EXTRAS if k not in tr.extras]
    if missing:
        raise ValueError(f"the trajectory lacks extras {missing}; simulate with "
                         "extras=SUBRIEMANNIAN_EXTRAS")
    valid = np.asarray(tr.valid)
    ts = np.asarray(tr.ts)[valid]
    g_len, g_err = _length(ts, np.asarray(tr.extras["output_speed"])[valid])
    e_len, e_err = _length(ts, np.asarray(tr.extras["parameter_speed"])[valid])
    x = np.asarray(tr.outputs)[valid]
    chord = float(np.linalg.norm(x[-1] - x[0]))
    out = {
        "t_end": float(ts[-1]),
        "g_length": g_len,
        "g_length_error": g_err,
        "euclidean_length": e_len,
        "euclidean_length_error": e_err,
        "output_chord": chord,
        "output_distance": float(np.linalg.norm(np.asarray(tr.outputs0) - np.asarray(tr.targets))),
        "g_ratio": g_len / chord if chord > 0 else math.nan,
        "max_vertical_fraction": float(np.max(np.asarray(tr.extras["vertical_fraction"])[valid])),
    }
    if tr.theta is not None:
        th = np.asarray(tr.theta)[valid]
        out["parameter_chord"] = float(np.linalg.norm(th[-1] - th[0]))
    return out

