"""flowlab: training of neural networks as ODEs, and the geometrically adapted gradient flow.

Implements T. Chen, "Global L2 minimization at uniform exponential rate via geometrically
adapted gradient descent in Deep Learning" (arXiv 2311.15487) and companion results. The maths
core is imported here; the study machinery (configs, runner, store, plots) is `flowlab.study`.
"""

from . import theory as theory
from .data import (
    Dataset as Dataset,
    gaussian_clusters as gaussian_clusters,
    load_csv as load_csv,
    load_npz as load_npz,
    random_labels as random_labels,
    smooth_regression as smooth_regression,
    teacher as teacher,
)
from .devices import device_mesh as device_mesh, shard_batch as shard_batch
from .equilibria import (
    Equilibrium as Equilibrium,
    ScalarProductModel as ScalarProductModel,
    analyse_equilibrium as analyse_equilibrium,
    product_model_endpoint as product_model_endpoint,
)
from .flows import (
    FLOWS as FLOWS,
    AbstractFlow as AbstractFlow,
    AbstractSpectralFilter as AbstractSpectralFilter,
    AdaptedFlow as AdaptedFlow,
    DampedFlow as DampedFlow,
    GradientFlow as GradientFlow,
    HomotopyFlow as HomotopyFlow,
    InterpolatingFilter as InterpolatingFilter,
    InterpolationFlow as InterpolationFlow,
)
from .geometry import (
    SUBRIEMANNIAN_EXTRAS as SUBRIEMANNIAN_EXTRAS,
    kernel_component as kernel_component,
    output_speed as output_speed,
    parameter_speed as parameter_speed,
    path_lengths as path_lengths,
    vertical_fraction as vertical_fraction,
)
from .integrate import (
    STOP_REASONS as STOP_REASONS,
    IntegratorOptions as IntegratorOptions,
    Trajectory as Trajectory,
    euler_steps as euler_steps,
    simulate as simulate,
    solve as solve,
)
from .interpolation import (
    interpolate as interpolate,
    s_of_t as s_of_t,
    segment_distance as segment_distance,
)
from .linalg import (
    AbstractGram as AbstractGram,
    AbstractPinvSolver as AbstractPinvSolver,
    AutoGram as AutoGram,
    CGSolver as CGSolver,
    CholeskySolver as CholeskySolver,
    DenseGram as DenseGram,
    LayerwiseGram as LayerwiseGram,
    NormalCholeskySolver as NormalCholeskySolver,
    QRSolver as QRSolver,
    SVDSolver as SVDSolver,
    auto_gram as auto_gram,
    auto_solver as auto_solver,
    jacobian_svd as jacobian_svd,
    singular_values as singular_values,
)
from .losses import (
    LOSSES as LOSSES,
    SoftmaxCrossEntropy as SoftmaxCrossEntropy,
    smooth_labels as smooth_labels,
)
from .nets import MLP as MLP
from .problem import (
    AbstractLoss as AbstractLoss,
    LeastSquaresProblem as LeastSquaresProblem,
    SquaredLoss as SquaredLoss,
)

__version__ = "0.2.0"
