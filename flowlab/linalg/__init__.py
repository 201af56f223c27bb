r"""How the flows get at D: Gram strategies (`_gram`), pseudo-inverse solvers (`_solvers`) and the
spectrum of D with the rank and conditioning cutoffs (`_spectrum`), and the matrix-free route for
large QN (`_nystrom`)."""

from ._gram import (
    BLOCK_BYTES as BLOCK_BYTES,
)
from ._gram import (
    AbstractGram as AbstractGram,
)
from ._gram import (
    AutoGram as AutoGram,
)
from ._gram import (
    BlockedGram as BlockedGram,
)
from ._gram import (
    DenseGram as DenseGram,
)
from ._gram import (
    LayerwiseGram as LayerwiseGram,
)
from ._gram import (
    auto_gram as auto_gram,
)
from ._gram import (
    gram_matrix as gram_matrix,
)
from ._layerwise import backprop_transpose as backprop_transpose
from ._layerwise import gram_block as gram_block
from ._layerwise import mlp_backprop as mlp_backprop
from ._layerwise import mlp_gram as mlp_gram
from ._nystrom import (
    JacobianProducts as JacobianProducts,
)
from ._nystrom import (
    KrylovResult as KrylovResult,
)
from ._nystrom import (
    NystromPreconditioner as NystromPreconditioner,
)
from ._nystrom import (
    conjugate_residual as conjugate_residual,
)
from ._nystrom import (
    jacobian_products as jacobian_products,
)
from ._nystrom import (
    nystrom_preconditioner as nystrom_preconditioner,
)
from ._sharded import (
    ShardedGram as ShardedGram,
)
from ._solvers import (
    MEMORY_FRACTION as MEMORY_FRACTION,
)
from ._solvers import (
    QR_FALLBACK_SIZE as QR_FALLBACK_SIZE,
)
from ._solvers import (
    SOLVERS as SOLVERS,
)
from ._solvers import (
    AbstractDampedPinvSolver as AbstractDampedPinvSolver,
)
from ._solvers import (
    AbstractPinvSolver as AbstractPinvSolver,
)
from ._solvers import (
    CGSolver as CGSolver,
)
from ._solvers import (
    CholeskySolver as CholeskySolver,
)
from ._solvers import (
    GramOrQRSolver as GramOrQRSolver,
)
from ._solvers import (
    NormalCholeskySolver as NormalCholeskySolver,
)
from ._solvers import (
    NystromSolver as NystromSolver,
)
from ._solvers import (
    QRSolver as QRSolver,
)
from ._solvers import (
    SVDSolver as SVDSolver,
)
from ._solvers import (
    auto_solver as auto_solver,
)
from ._solvers import (
    memory_budget as memory_budget,
)
from ._solvers import (
    resolve_solver as resolve_solver,
)
from ._spectrum import (
    FACTOR_MAX_CONDITION as FACTOR_MAX_CONDITION,
)
from ._spectrum import (
    GRAM_MAX_CONDITION as GRAM_MAX_CONDITION,
)
from ._spectrum import (
    condition_limit as condition_limit,
)
from ._spectrum import (
    default_rcond as default_rcond,
)
from ._spectrum import (
    extreme_singular_values as extreme_singular_values,
)
from ._spectrum import (
    jacobian_svd as jacobian_svd,
)
from ._spectrum import (
    numerical_rank as numerical_rank,
)
from ._spectrum import (
    singular_values as singular_values,
)
from ._spectrum import (
    spectrum_ends as spectrum_ends,
)
