"""Integration of a flow: one `IntegratorOptions`, the ODE by diffrax (`simulate`, `solve`), Euler
steps (`euler_steps`), batching of seeds and the saved record (`Trajectory`)."""

from ._batch import compile_cached as compile_cached, initial_theta as initial_theta
from ._euler import euler_steps as euler_steps
from ._ode import make_solver as make_solver, simulate as simulate, solve as solve
from ._options import IntegratorOptions as IntegratorOptions
from ._trajectory import (
    STOP_CODE as STOP_CODE,
    STOP_REASONS as STOP_REASONS,
    Trajectory as Trajectory,
)
