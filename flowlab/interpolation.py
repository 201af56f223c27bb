r"""Running the interpolation flow (`flowlab.flows.InterpolationFlow`), and measuring it ([CM24], MATH §5).

With t = 1 − e^{−κs} the adapted flow becomes dθ/dt = D⁺(Y − X(0)) on t in [0, 1]: at full row
rank X' = Y − X(0), so X(t) = (1 − t)X(0) + tY runs along the segment and reaches the global
minimum at the finite time t = 1.
"""

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .flows import InterpolationFlow
from .integrate import Trajectory, simulate
from .linalg import AbstractPinvSolver


def s_of_t(t, kappa: float):
    """The adapted flow's time s = −ln(1 − t)/κ for interpolation time t in [0, 1).

    **Arguments:**

    - `t`: interpolation times in [0, 1) (a number or an array).
    - `kappa`: κ.

    **Returns:**

    s, a numpy array of the shape of `t`.
    """
    return -np.log1p(-np.asarray(t)) / kappa


def interpolate(
    problem,
    theta0: Float[Array, " K"] | None = None,
    *,
    solver: str | AbstractPinvSolver = "auto",
    num_saves: int = 101,
    ts=None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    **simulate_kwargs,
) -> Trajectory:
    r"""Integrate dθ/dt = D⁺(Y − X(θ0)) from θ0 over t in [0, 1] (diffrax, via `simulate`).

    Returns a Trajectory whose `ts` are interpolation times t; at full row rank its outputs
    follow X(t) = (1 − t)X(0) + tY and C(1) = 0 up to the integration error.

    **Arguments:**

    - `problem`: the problem.
    - `theta0`: one parameter vector (K,); None: the problem's θ0 (loop over seeds for a
      batch).
    - `solver`: how D⁺ is applied (as in `AdaptedFlow`).
    - `num_saves`, `ts`: the save times in [0, 1], as in `simulate`.
    - `rtol`, `atol`: the step-size controller's tolerances.
    - `simulate_kwargs`: other keywords of `simulate` (guards included).

    **Returns:**

    A `Trajectory` whose `ts` are interpolation times t.

    **Raises:**

    - `ValueError`: when θ0 is not of shape (K,); and whatever `simulate` raises.
    """
    theta0 = problem.theta0 if theta0 is None else jnp.asarray(theta0)
    if theta0.shape != (problem.num_params,):
        raise ValueError(f"theta0 must have shape (K,) = ({problem.num_params},), got "
                         f"{theta0.shape}")
    flow = InterpolationFlow(problem.outputs(theta0), solver)
    return simulate(problem, flow, theta0, 1.0, ts=ts, num_saves=num_saves, rtol=rtol,
                    atol=atol, **simulate_kwargs)


def segment_distance(outputs: Float[Array, "S QN"], outputs0, targets) -> np.ndarray:
    """Distance of each X to the segment [X(0), Y], and the position τ in [0, 1] of its foot.

    **Arguments:**

    - `outputs`: X at S saves, shape (S, QN).
    - `outputs0`: X(0), shape (QN,).
    - `targets`: Y, shape (QN,).

    **Returns:**

    `(distance, tau)`, numpy arrays of shape (S,).

    **Raises:**

    - `ValueError`: when X(0) = Y (the segment is a point).
    """
    x, x0, y = (np.asarray(a, float) for a in (outputs, outputs0, targets))
    d = y - x0
    dd = float(d @ d)
    if not math.isfinite(dd) or dd == 0:
        raise ValueError("X(0) = Y: the segment is a point")
    tau = np.clip((x - x0) @ d / dd, 0.0, 1.0)
    foot = x0 + tau[:, None] * d
    return np.linalg.norm(x - foot, axis=-1), tau
