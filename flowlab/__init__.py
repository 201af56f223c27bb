"""flowlab: training of neural networks as ODEs, and the geometrically adapted gradient flow.

Implements T. Chen, "Global L2 minimization at uniform exponential rate via geometrically
adapted gradient descent in Deep Learning" (arXiv 2311.15487) and companion results. The maths
core is imported here; the study machinery (configs, runner, store, plots) is `flowlab.study`.
"""

from . import distributed as distributed
from . import pde as pde
from . import theory as theory
from ._cache import enable_compilation_cache as enable_compilation_cache
from ._checks import SettingError as SettingError
from .data import (
    Dataset as Dataset,
)
from .data import (
    gaussian_clusters as gaussian_clusters,
)
from .data import (
    load_csv as load_csv,
)
from .data import (
    load_npz as load_npz,
)
from .data import (
    random_labels as random_labels,
)
from .data import (
    smooth_regression as smooth_regression,
)
from .data import (
    teacher as teacher,
)
from .devices import device_mesh as device_mesh
from .devices import shard_batch as shard_batch
from .equilibria import (
    Equilibrium as Equilibrium,
)
from .equilibria import (
    ScalarProductModel as ScalarProductModel,
)
from .equilibria import (
    analyse_equilibrium as analyse_equilibrium,
)
from .equilibria import (
    product_model_endpoint as product_model_endpoint,
)
from .flows import (
    FLOWS as FLOWS,
)
from .flows import (
    AbstractFlow as AbstractFlow,
)
from .flows import (
    AbstractSpectralFilter as AbstractSpectralFilter,
)
from .flows import (
    AdaptedFlow as AdaptedFlow,
)
from .flows import (
    DampedFlow as DampedFlow,
)
from .flows import (
    GradientFlow as GradientFlow,
)
from .flows import (
    HessianMetricFlow as HessianMetricFlow,
)
from .flows import (
    HomotopyFlow as HomotopyFlow,
)
from .flows import (
    InterpolatingFilter as InterpolatingFilter,
)
from .flows import (
    InterpolationFlow as InterpolationFlow,
)
from .geometry import (
    SUBRIEMANNIAN_EXTRAS as SUBRIEMANNIAN_EXTRAS,
)
from .geometry import (
    kernel_component as kernel_component,
)
from .geometry import (
    output_speed as output_speed,
)
from .geometry import (
    parameter_speed as parameter_speed,
)
from .geometry import (
    path_lengths as path_lengths,
)
from .geometry import (
    vertical_fraction as vertical_fraction,
)
from .integrate import (
    RESULTS as RESULTS,
)
from .integrate import (
    STOP_REASONS as STOP_REASONS,
)
from .integrate import (
    ContractionPrediction as ContractionPrediction,
)
from .integrate import (
    IntegratorOptions as IntegratorOptions,
)
from .integrate import (
    OutputPathSolver as OutputPathSolver,
)
from .integrate import (
    SketchTrajectory as SketchTrajectory,
)
from .integrate import (
    Trajectory as Trajectory,
)
from .integrate import (
    block_partition as block_partition,
)
from .integrate import (
    euler_steps as euler_steps,
)
from .integrate import (
    predicted_contraction as predicted_contraction,
)
from .integrate import (
    simulate as simulate,
)
from .integrate import (
    sketch_project as sketch_project,
)
from .integrate import (
    solve as solve,
)
from .interpolation import (
    interpolate as interpolate,
)
from .interpolation import (
    s_of_t as s_of_t,
)
from .interpolation import (
    segment_distance as segment_distance,
)
from .linalg import (
    AbstractDampedPinvSolver as AbstractDampedPinvSolver,
)
from .linalg import (
    AbstractGram as AbstractGram,
)
from .linalg import (
    AbstractPinvSolver as AbstractPinvSolver,
)
from .linalg import (
    AutoGram as AutoGram,
)
from .linalg import (
    BlockedGram as BlockedGram,
)
from .linalg import (
    CGSolver as CGSolver,
)
from .linalg import (
    CholeskySolver as CholeskySolver,
)
from .linalg import (
    DenseGram as DenseGram,
)
from .linalg import (
    GramOrQRSolver as GramOrQRSolver,
)
from .linalg import (
    LayerwiseGram as LayerwiseGram,
)
from .linalg import (
    NormalCholeskySolver as NormalCholeskySolver,
)
from .linalg import (
    NystromPreconditioner as NystromPreconditioner,
)
from .linalg import (
    NystromSolver as NystromSolver,
)
from .linalg import (
    QRSolver as QRSolver,
)
from .linalg import (
    ShardedGram as ShardedGram,
)
from .linalg import (
    SVDSolver as SVDSolver,
)
from .linalg import (
    auto_gram as auto_gram,
)
from .linalg import (
    auto_solver as auto_solver,
)
from .linalg import (
    conjugate_residual as conjugate_residual,
)
from .linalg import (
    jacobian_svd as jacobian_svd,
)
from .linalg import (
    singular_values as singular_values,
)
from .losses import (
    LOSSES as LOSSES,
)
from .losses import (
    SoftmaxCrossEntropy as SoftmaxCrossEntropy,
)
from .losses import (
    smooth_labels as smooth_labels,
)
from .nets import MLP as MLP
from .nets import ConvNet as ConvNet
from .nets import ResidualMLP as ResidualMLP
from .problem import (
    AbstractLoss as AbstractLoss,
)
from .problem import (
    AbstractProblem as AbstractProblem,
)
from .problem import (
    LeastSquaresProblem as LeastSquaresProblem,
)
from .problem import (
    PointwiseResidual as PointwiseResidual,
)
from .problem import (
    ResidualProblem as ResidualProblem,
)
from .problem import (
    ResidualTerm as ResidualTerm,
)
from .problem import (
    SquaredLoss as SquaredLoss,
)

__version__ = "0.2.0"
