"""Integration of a flow: one `IntegratorOptions`, the ODE by diffrax (`simulate`, `solve`), Euler
steps (`euler_steps`), batching of seeds and the saved record (`Trajectory`)."""

from ._batch import compile_cached as compile_cached
from ._batch import initial_theta as initial_theta
from ._euler import euler_steps as euler_steps
from ._ode import make_solver as make_solver
from ._ode import simulate as simulate
from ._ode import solve as solve
from ._options import IntegratorOptions as IntegratorOptions
from ._output_path import OutputPathSolver as OutputPathSolver
from ._record import resolved_cost as resolved_cost
from ._results import FAILURES as FAILURES
from ._results import RESULTS as RESULTS
from ._results import STOP_CODE as STOP_CODE
from ._results import STOP_REASONS as STOP_REASONS
from ._results import from_linear_solve as from_linear_solve
from ._results import stop_message as stop_message
from ._sketch import ContractionPrediction as ContractionPrediction
from ._sketch import SketchTrajectory as SketchTrajectory
from ._sketch import block_partition as block_partition
from ._sketch import predicted_contraction as predicted_contraction
from ._sketch import sketch_project as sketch_project
from ._trajectory import (
    Trajectory as Trajectory,
)
