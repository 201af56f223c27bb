r"""Vector fields θ' = F(θ) on parameter space, one class per geometry, each stating its theory.

Each flow is an `eqx.Module` callable as a diffrax vector field ``(t, θ, problem) -> θ'``
(pass the problem as ``args``). With g = ∇_X C = κ(X − Y) and D = U Σ Vᵀ:

| flow | θ' | X' = D θ' | mode rate m(σ) |
|---|---|---|---|
| GradientFlow | −Dᵀ g | −Θ g | κσ² |
| AdaptedFlow | −D⁺ g | −P g (−g at full row rank) | κ |
| DampedFlow | −Dᵀ(Θ + λI)⁻¹ g | −Θ(Θ + λI)⁻¹ g | κσ²/(σ² + λ) |
| HomotopyFlow | −V f(Σ) Uᵀ g | −U σf(σ) Uᵀ g | κσf(σ) |
| InterpolationFlow | D⁺(Y − X(0)) (time t) | Y − X(0) | C(t) = (1 − t)²C(0) |
| HessianMetricFlow | −D⁺H⁺g, H = ∇²_X C | −H⁺g: ∇_X C(s) = e^{−s}∇_X C(0) | 1 (time κs) |

`FLOWS` maps the names a config uses to the classes.
"""

from ._adapted import AdaptedFlow as AdaptedFlow
from ._base import AbstractFlow as AbstractFlow
from ._base import linear_theory_applies as linear_theory_applies
from ._damped import DampedFlow as DampedFlow
from ._gradient import GradientFlow as GradientFlow
from ._hessian_metric import HessianMetricFlow as HessianMetricFlow
from ._homotopy import (
    AbstractSpectralFilter as AbstractSpectralFilter,
)
from ._homotopy import (
    HomotopyFlow as HomotopyFlow,
)
from ._homotopy import (
    InterpolatingFilter as InterpolatingFilter,
)
from ._interpolation import InterpolationFlow as InterpolationFlow

FLOWS: dict[str, type[AbstractFlow]] = {
    "standard": GradientFlow,
    "adapted": AdaptedFlow,
    "damped": DampedFlow,
    "homotopy": HomotopyFlow,
    "interpolation": InterpolationFlow,
    "hessian_metric": HessianMetricFlow,
}
