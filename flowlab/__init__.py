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
    CholeskySolver as CholeskySolver,
    DenseGram as DenseGram,
    QRSolver as QRSolver,
    SVDSolver as SVDSolver,
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
