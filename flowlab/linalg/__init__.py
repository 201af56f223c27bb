r"""How the flows get at D: Gram strategies (`_gram`), pseudo-inverse solvers (`_solvers`) and the
spectrum of D with the rank and conditioning cutoffs (`_spectrum`)."""

from ._gram import (
    AbstractGram as AbstractGram,
    AutoGram as AutoGram,
    DenseGram as DenseGram,
    LayerwiseGram as LayerwiseGram,
    auto_gram as auto_gram,
    is_mlp_problem as is_mlp_problem,
    mlp_gram as mlp_gram,
)
from ._solvers import (
    MEMORY_FRACTION as MEMORY_FRACTION,
    SOLVERS as SOLVERS,
    AbstractPinvSolver as AbstractPinvSolver,
    CGSolver as CGSolver,
    CholeskySolver as CholeskySolver,
    NormalCholeskySolver as NormalCholeskySolver,
    QRSolver as QRSolver,
    SVDSolver as SVDSolver,
    auto_solver as auto_solver,
    memory_budget as memory_budget,
    resolve_solver as resolve_solver,
)
from ._spectrum import (
    FACTOR_MAX_CONDITION as FACTOR_MAX_CONDITION,
    GRAM_MAX_CONDITION as GRAM_MAX_CONDITION,
    default_rcond as default_rcond,
    jacobian_svd as jacobian_svd,
    numerical_rank as numerical_rank,
    singular_values as singular_values,
)
