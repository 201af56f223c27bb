"""flowlab: training of neural networks as ODEs, and the geometrically adapted gradient flow.

Implements T. Chen, "Global L2 minimization at uniform exponential rate via geometrically
adapted gradient descent in Deep Learning" (arXiv 2311.15487) and companion results.
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
from .discrete import euler_steps as euler_steps
from .flows import (
    AbstractFlow as AbstractFlow,
    AdaptedFlow as AdaptedFlow,
    DampedFlow as DampedFlow,
    GradientFlow as GradientFlow,
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
    singular_values as singular_values,
)
from .nets import MLP as MLP
from .problem import (
    AbstractLoss as AbstractLoss,
    LeastSquaresProblem as LeastSquaresProblem,
    SquaredLoss as SquaredLoss,
)
from .simulate import (
    STOP_REASONS as STOP_REASONS,
    Trajectory as Trajectory,
    simulate as simulate,
    solve as solve,
)

__version__ = "0.1.0"
from .equilibria import (
    Equilibrium as Equilibrium,
    ScalarProductModel as ScalarProductModel,
    analyse_equilibrium as analyse_equilibrium,
    product_model_endpoint as product_model_endpoint,
)
from .geometry import (
    SUBRIEMANNIAN_EXTRAS as SUBRIEMANNIAN_EXTRAS,
    jacobian_svd as jacobian_svd,
    kernel_component as kernel_component,
    output_speed as output_speed,
    parameter_speed as parameter_speed,
    path_lengths as path_lengths,
    vertical_fraction as vertical_fraction,
)
from .homotopy import (
    AbstractSpectralFilter as AbstractSpectralFilter,
    HomotopyFlow as HomotopyFlow,
    InterpolatingFilter as InterpolatingFilter,
    homotopy_rate_bound as homotopy_rate_bound,
)
from .interpolation import (
    InterpolationFlow as InterpolationFlow,
    interpolate as interpolate,
    s_of_t as s_of_t,
    segment_distance as segment_distance,
)
from .losses import (
    LOSSES as LOSSES,
    SoftmaxCrossEntropy as SoftmaxCrossEntropy,
    smooth_labels as smooth_labels,
)
from .config import ConfigError as ConfigError, Study as Study, load_config as load_config
from .store import RunStore as RunStore, read_summary as read_summary
from .sweep import expand_grid as expand_grid, run_study as run_study
from .plots import plot_run as plot_run
