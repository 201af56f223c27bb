r"""The Moré–Garbow–Hillstrom test problems for nonlinear least squares, as residual problems.

J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization software",
ACM TOMS 7(1), 1981, 17–41 (here "MGH"), define 35 problems f(x) = Σ_{i=1}^m f_i(x)² with
residuals F = (f_1, ..., f_m): R^n → R^m, a standard start x0 and, for most, the minimum value
(or the values of several local minima). Each is written here from those definitions in
`jax.numpy` and cross-checked against two public implementations where there were two (the
MINPACK test drivers `ssqfcn`/`vecfcn`/`initpt`, the R package funconstrain, the CUTEst SIF
translations); `PROBLEMS[name].sources` says which.

Where the paper leaves m or n free, the registry `PROBLEMS` holds one standard choice per
problem (those of the MINPACK-1 driver where it has the problem, n = 10 for the other
variable-dimension problems); `variant(name, n=..., m=...)` builds any other admissible size.

    spec = PROBLEMS["rosenbrock"]            # m, n, residual(x), x0, f_star, ...
    problem = residual_problem("bard", 10)   # a flowlab.ResidualProblem from 10·x0

`residual_problem(name, scale)` poses F as a `flowlab.ResidualProblem` on an `eqx.Module`
holding the vector x (θ = x, K = n, P = m) from θ0 = scale·x0, with κ = 1 by default, so
C(θ) = |F(θ)|²/2 = f(θ)/2. MGH's own protocol runs every problem from x0, 10·x0 and 100·x0.

Conventions: `f_star` is the value f = |F|² at the lowest minimum the paper states (0 where
it states a zero; for problem 18 the paper states both f = 0 and a local value, and f_star is
the 0); `other_values` lists its other stated values (local minima, or limits at infinity);
`x_star` is a minimiser where the paper (or the problem's construction) gives it exactly.
The constants are decimal strings: `residual_mp` evaluates F in mpmath from the exact
decimals (for high-precision references, `benchmarks/mgh_reference.py`), `residual` in the
dtype of x (use float64: `jax.config.update("jax_enable_x64", True)`; several problems are
badly scaled on purpose and mean nothing in float32).

Starts that need care (all scales 1, 10, 100 were evaluated):
- 34 `linear_rank_1_zero`: f_1 = f_m = −1 are constant (zero Jacobian rows at every x), so
  `ResidualProblem`'s check (no zero rows of J at θ0) must be off: `residual_problem` passes
  `check=False` for it (`MGHProblem.needs_check_off`).
- 11 `gulf` at 100·x0 = (500, 250, 15): |y_i − x2|^{x3}/x1 ≈ 200¹⁵/500 ≈ 1e32, so every
  exp(·) underflows to 0: F = −t exactly and J = 0 in float64 (check off there too; no
  derivative-based method can leave this start).
- 20 `watson`: x0 = 0, so 10·x0 = 100·x0 = x0 (MINPACK's driver uses x = 10·1 and 100·1
  there instead; we keep scale·x0 as MGH write it).
- 11 `gulf`: 10·x0 = (50, 25, 1.5) is the minimiser itself (f = 0 up to round-off).
- 6 `jennrich_sampson`: at 100·x0 = (30, 40) the residuals are ≈ −e^{400} ≈ −5e173, finite,
  but f = |F|² overflows float64 (inf): a start no float64 method can use.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .problem import ResidualProblem

# --- the array functions the residuals are written in ----------------------------------------


class _JaxOps:
    """Residuals in jax.numpy, in the dtype of x (constants as Python floats / numpy float64)."""

    def __init__(self):
        self.pi = math.pi
        self.exp, self.log, self.sin, self.cos = jnp.exp, jnp.log, jnp.sin, jnp.cos
        self.sqrt, self.abs, self.atan2 = jnp.sqrt, jnp.abs, jnp.arctan2
        self.sum, self.prod, self.cumsum, self.dot = jnp.sum, jnp.prod, jnp.cumsum, jnp.dot

    @staticmethod
    def c(v) -> float:
        """A constant from a decimal string or a number."""
        return float(v)

    @staticmethod
    def data(values: Sequence[str]) -> np.ndarray:
        return np.array([float(v) for v in values])

    @staticmethod
    def arange(a: int, b: int) -> np.ndarray:
        """a, a+1, ..., b−1 as floats."""
        return np.arange(a, b, dtype=np.float64)

    @staticmethod
    def where(cond, a, b):
        return jnp.where(cond, a, b)

    @staticmethod
    def cat(*pieces):
        return jnp.concatenate([jnp.ravel(jnp.asarray(p)) for p in pieces])

    @staticmethod
    def interleave(*columns):
        """(a_1, b_1, ..., a_2, b_2, ...) from equally long a, b, ..."""
        return jnp.stack(columns, axis=1).reshape(-1)


class _MpOps:
    """Residuals in mpmath (numpy object arrays of mpf; precision from mpmath.mp.dps), the
    constants exact decimals."""

    def __init__(self):
        import mpmath

        self.mp = mpmath
        ufunc = lambda f: np.frompyfunc(f, 1, 1)
        self.exp, self.log, self.sin, self.cos = (ufunc(mpmath.exp), ufunc(mpmath.log),
                                                  ufunc(mpmath.sin), ufunc(mpmath.cos))
        self.sqrt, self.abs = ufunc(mpmath.sqrt), ufunc(mpmath.fabs)
        self.atan2 = np.frompyfunc(mpmath.atan2, 2, 1)
        self.sum, self.prod, self.cumsum, self.dot = np.sum, np.prod, np.cumsum, np.dot

    @property
    def pi(self):
        return +self.mp.pi

    def c(self, v):
        return self.mp.mpf(v)

    def data(self, values):
        return np.array([self.mp.mpf(v) for v in values], dtype=object)

    def arange(self, a, b):
        return np.array([self.mp.mpf(k) for k in range(a, b)], dtype=object)

    @staticmethod
    def where(cond, a, b):
        return a if bool(cond) else b

    @staticmethod
    def cat(*pieces):
        return np.concatenate([np.atleast_1d(np.asarray(p, dtype=object)).ravel()
                               for p in pieces])

    @staticmethod
    def interleave(*columns):
        return np.stack([np.asarray(c, dtype=object) for c in columns], axis=1).reshape(-1)


JAX_OPS = _JaxOps()


@functools.cache
def _mp_ops() -> _MpOps:
    return _MpOps()


# --- the problem record -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MGHProblem:
    """One MGH problem at one size.

    `residual(x)` is F(x) in R^m (jax.numpy, any dtype, jit- and grad-able), `residual_mp(x)`
    the same in mpmath at the current `mpmath.mp.dps`; f(x) = |F(x)|². `x0` is the standard
    start (float64 numpy); `f_star` the paper's value of f at its lowest stated minimum (None
    where it states none for this size), `f_star_digits` the significant digits it prints
    (None where exact); `other_values` its other stated values; `x_star` an exact minimiser
    where one is known; `reference` what the paper says; `sources` what the formulas were
    checked against; `f_star_exact` f_star as an exact fraction "p/q" where the paper gives a
    closed form (the linear problems 32–34); `unchecked_scales` the scales s whose start s·x0
    has zero rows of J in float64, so that `ResidualProblem`'s check must be off there (None:
    every start)."""

    def needs_check_off(self, scale: float) -> bool:
        """Whether the start scale·x0 has zero Jacobian rows (see `unchecked_scales`)."""
        return self.unchecked_scales is None or float(scale) in self.unchecked_scales

    number: int
    name: str
    title: str
    n: int
    m: int
    fn: Callable = dataclasses.field(repr=False)
    start: tuple[float, ...] = dataclasses.field(repr=False)
    f_star: float | None
    f_star_digits: int | None = None
    other_values: tuple[float, ...] = ()
    x_star: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)
    reference: str = ""
    sources: str = ""
    unchecked_scales: tuple[float, ...] | None = ()
    f_star_exact: str | None = None

    @property
    def x0(self) -> np.ndarray:
        """The standard start x0 (float64)."""
        return np.array(self.start, dtype=np.float64)

    def residual(self, x: Float[Array, " n"]) -> Float[Array, " m"]:
        """F(x) in jax.numpy."""
        x = jnp.asarray(x)
        if x.shape != (self.n,):
            raise ValueError(f"{self.name}: x must have shape ({self.n},), got {x.shape}")
        return self.fn(x, self.n, self.m, JAX_OPS)

    def residual_mp(self, x) -> np.ndarray:
        """F(x) in mpmath (an object array of m mpf), x any sequence of n numbers (converted
        with mpmath.mpf: pass strings or mpf for exact decimals)."""
        ops = _mp_ops()
        x = np.array([ops.mp.mpf(v) for v in x], dtype=object)
        if x.shape != (self.n,):
            raise ValueError(f"{self.name}: x must have {self.n} entries, got {x.shape[0]}")
        return self.fn(x, self.n, self.m, ops)

    def value(self, x) -> float:
        """f(x) = |F(x)|² in float64 numpy (x in float64)."""
        r = np.asarray(self.residual(jnp.asarray(np.asarray(x, np.float64))), np.float64)
        return float(r @ r)


# --- the residuals (MGH numbering; i = 1..m and j = 1..n as in the paper) ---------------------

# Data of the problems fitted to measurements, as printed in MGH (checked entry by entry
# against MINPACK's ssqfcn and funconstrain).
_BARD_Y = ("0.14", "0.18", "0.22", "0.25", "0.29", "0.32", "0.35", "0.39", "0.37", "0.58",
           "0.73", "0.96", "1.34", "2.10", "4.39")
_GAUSSIAN_Y = ("0.0009", "0.0044", "0.0175", "0.0540", "0.1295", "0.2420", "0.3521", "0.3989",
               "0.3521", "0.2420", "0.1295", "0.0540", "0.0175", "0.0044", "0.0009")
_MEYER_Y = ("34780", "28610", "23650", "19630", "16370", "13720", "11540", "9744", "8261",
            "7030", "6005", "5147", "4427", "3820", "3307", "2872")
_KOWALIK_Y = ("0.1957", "0.1947", "0.1735", "0.1600", "0.0844", "0.0627", "0.0456", "0.0342",
              "0.0323", "0.0235", "0.0246")
_KOWALIK_U = ("4", "2", "1", "0.5", "0.25", "0.167", "0.125", "0.1", "0.0833", "0.0714",
              "0.0625")
_OSBORNE1_Y = ("0.844", "0.908", "0.932", "0.936", "0.925", "0.908", "0.881", "0.850", "0.818",
               "0.784", "0.751", "0.718", "0.685", "0.658", "0.628", "0.603", "0.580", "0.558",
               "0.538", "0.522", "0.506", "0.490", "0.478", "0.467", "0.457", "0.448", "0.438",
               "0.431", "0.424", "0.420", "0.414", "0.411", "0.406")
_OSBORNE2_Y = ("1.366", "1.191", "1.112", "1.013", "0.991", "0.885", "0.831", "0.847", "0.786",
               "0.725", "0.746", "0.679", "0.608", "0.655", "0.616", "0.606", "0.602", "0.626",
               "0.651", "0.724", "0.649", "0.649", "0.694", "0.644", "0.624", "0.661", "0.612",
               "0.558", "0.533", "0.495", "0.500", "0.423", "0.395", "0.375", "0.372", "0.391",
               "0.396", "0.405", "0.428", "0.429", "0.523", "0.562", "0.607", "0.653", "0.672",
               "0.708", "0.633", "0.668", "0.645", "0.632", "0.591", "0.559", "0.597", "0.625",
               "0.739", "0.710", "0.729", "0.720", "0.636", "0.581", "0.428", "0.292", "0.162",
               "0.098", "0.054")


def _rosenbrock(x, n, m, o):
    # (1) f1 = 10(x2 − x1²), f2 = 1 − x1
    return o.cat(10 * (x[1] - x[0] ** 2), 1 - x[0])


def _freudenstein_roth(x, n, m, o):
    # (2) f1 = −13 + x1 + ((5 − x2)x2 − 2)x2, f2 = −29 + x1 + ((x2 + 1)x2 − 14)x2
    return o.cat(-13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
                 -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1])


def _powell_badly_scaled(x, n, m, o):
    # (3) f1 = 10⁴x1x2 − 1, f2 = exp(−x1) + exp(−x2) − 1.0001
    return o.cat(10000 * x[0] * x[1] - 1, o.exp(-x[0]) + o.exp(-x[1]) - o.c("1.0001"))


def _brown_badly_scaled(x, n, m, o):
    # (4) f1 = x1 − 10⁶, f2 = x2 − 2·10⁻⁶, f3 = x1x2 − 2
    return o.cat(x[0] - 1000000, x[1] - o.c("2e-6"), x[0] * x[1] - 2)


def _beale(x, n, m, o):
    # (5) f_i = y_i − x1(1 − x2^i), y = (1.5, 2.25, 2.625)
    return o.cat(o.c("1.5") - x[0] * (1 - x[1]), o.c("2.25") - x[0] * (1 - x[1] ** 2),
                 o.c("2.625") - x[0] * (1 - x[1] ** 3))


def _jennrich_sampson(x, n, m, o):
    # (6) f_i = 2 + 2i − (exp(i x1) + exp(i x2))
    i = o.arange(1, m + 1)
    return 2 + 2 * i - (o.exp(i * x[0]) + o.exp(i * x[1]))


def _helical_valley(x, n, m, o):
    # (7) f1 = 10(x3 − 10θ(x1, x2)), f2 = 10((x1² + x2²)^{1/2} − 1), f3 = x3, with
    # 2πθ = arctan(x2/x1) for x1 > 0 and arctan(x2/x1) + π for x1 < 0: θ in (−1/4, 3/4], the
    # angle of (x1, x2) over 2π with its cut on the negative x2 axis (x1 = 0: θ = ±1/4 by the
    # sign of x2, as MINPACK's ssqfcn)
    theta = o.atan2(x[1], x[0]) / (2 * o.pi)
    theta = o.where(theta < -o.c("0.25"), theta + 1, theta)
    return o.cat(10 * (x[2] - 10 * theta), 10 * (o.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2])


def _bard(x, n, m, o):
    # (8) f_i = y_i − (x1 + u_i/(v_i x2 + w_i x3)), u_i = i, v_i = 16 − i, w_i = min(u_i, v_i)
    u = o.arange(1, 16)
    v = 16 - u
    w = np.minimum(u, v)
    return o.data(_BARD_Y) - (x[0] + u / (v * x[1] + w * x[2]))


def _gaussian(x, n, m, o):
    # (9) f_i = x1 exp(−x2(t_i − x3)²/2) − y_i, t_i = (8 − i)/2
    t = (8 - o.arange(1, 16)) / 2
    return x[0] * o.exp(-x[1] * (t - x[2]) ** 2 / 2) - o.data(_GAUSSIAN_Y)


def _meyer(x, n, m, o):
    # (10) f_i = x1 exp(x2/(t_i + x3)) − y_i, t_i = 45 + 5i
    t = 45 + 5 * o.arange(1, 17)
    return x[0] * o.exp(x[1] / (t + x[2])) - o.data(_MEYER_Y)


def _gulf(x, n, m, o):
    # (11) f_i = exp(−|y_i − x2|^{x3}/x1) − t_i, t_i = i/100, y_i = 25 + (−50 ln t_i)^{2/3}
    # (the paper prints "|y_i m i x2|", a typesetting slip for y_i − x2; MINPACK-2, CUTEst and
    # funconstrain read it so, and only then is (50, 25, 1.5) a zero)
    t = o.arange(1, m + 1) / 100
    y = 25 + (-50 * o.log(t)) ** (o.c(2) / 3)
    return o.exp(-(o.abs(y - x[1]) ** x[2]) / x[0]) - t


def _box_3d(x, n, m, o):
    # (12) f_i = exp(−t_i x1) − exp(−t_i x2) − x3(exp(−t_i) − exp(−10 t_i)), t_i = 0.1 i
    t = o.arange(1, m + 1) / 10
    return o.exp(-t * x[0]) - o.exp(-t * x[1]) - x[2] * (o.exp(-t) - o.exp(-10 * t))


def _powell_singular(x, n, m, o):
    # (13) f1 = x1 + 10x2, f2 = 5^{1/2}(x3 − x4), f3 = (x2 − 2x3)², f4 = 10^{1/2}(x1 − x4)²
    return o.cat(x[0] + 10 * x[1], o.sqrt(o.c(5)) * (x[2] - x[3]), (x[1] - 2 * x[2]) ** 2,
                 o.sqrt(o.c(10)) * (x[0] - x[3]) ** 2)


def _wood(x, n, m, o):
    # (14) f1 = 10(x2 − x1²), f2 = 1 − x1, f3 = 90^{1/2}(x4 − x3²), f4 = 1 − x3,
    # f5 = 10^{1/2}(x2 + x4 − 2), f6 = 10^{−1/2}(x2 − x4)
    s10 = o.sqrt(o.c(10))
    return o.cat(10 * (x[1] - x[0] ** 2), 1 - x[0], o.sqrt(o.c(90)) * (x[3] - x[2] ** 2),
                 1 - x[2], s10 * (x[1] + x[3] - 2), (x[1] - x[3]) / s10)


def _kowalik_osborne(x, n, m, o):
    # (15) f_i = y_i − x1(u_i² + u_i x2)/(u_i² + u_i x3 + x4)
    u = o.data(_KOWALIK_U)
    return o.data(_KOWALIK_Y) - x[0] * (u ** 2 + u * x[1]) / (u ** 2 + u * x[2] + x[3])


def _brown_dennis(x, n, m, o):
    # (16) f_i = (x1 + t_i x2 − exp t_i)² + (x3 + x4 sin t_i − cos t_i)², t_i = i/5
    t = o.arange(1, m + 1) / 5
    return (x[0] + t * x[1] - o.exp(t)) ** 2 + (x[2] + x[3] * o.sin(t) - o.cos(t)) ** 2


def _osborne_1(x, n, m, o):
    # (17) f_i = y_i − (x1 + x2 exp(−t_i x4) + x3 exp(−t_i x5)), t_i = 10(i − 1)
    t = 10 * o.arange(0, 33)
    return o.data(_OSBORNE1_Y) - (x[0] + x[1] * o.exp(-t * x[3]) + x[2] * o.exp(-t * x[4]))


def _biggs_exp6(x, n, m, o):
    # (18) f_i = x3 exp(−t_i x1) − x4 exp(−t_i x2) + x6 exp(−t_i x5) − y_i, t_i = 0.1 i,
    # y_i = exp(−t_i) − 5 exp(−10 t_i) + 3 exp(−4 t_i)
    t = o.arange(1, m + 1) / 10
    y = o.exp(-t) - 5 * o.exp(-10 * t) + 3 * o.exp(-4 * t)
    return x[2] * o.exp(-t * x[0]) - x[3] * o.exp(-t * x[1]) + x[5] * o.exp(-t * x[4]) - y


def _osborne_2(x, n, m, o):
    # (19) f_i = y_i − (x1 e^{−t_i x5} + x2 e^{−(t_i − x9)² x6} + x3 e^{−(t_i − x10)² x7}
    #            + x4 e^{−(t_i − x11)² x8}), t_i = (i − 1)/10
    t = o.arange(0, 65) / 10
    model = (x[0] * o.exp(-t * x[4]) + x[1] * o.exp(-(t - x[8]) ** 2 * x[5])
             + x[2] * o.exp(-(t - x[9]) ** 2 * x[6]) + x[3] * o.exp(-(t - x[10]) ** 2 * x[7]))
    return o.data(_OSBORNE2_Y) - model


def _watson(x, n, m, o):
    # (20) f_i = Σ_{j=2}^n (j − 1)x_j t_i^{j−2} − (Σ_{j=1}^n x_j t_i^{j−1})² − 1, t_i = i/29,
    # 1 ≤ i ≤ 29; f30 = x1, f31 = x2 − x1² − 1
    t = o.arange(1, 30) / 29
    powers = np.stack([t ** k for k in range(n)], axis=1)  # t_i^{j−1}, j = 1..n (constants)
    j1 = o.arange(1, n)  # j − 1 for j = 2..n
    s1 = o.dot(powers[:, : n - 1] * j1, x[1:])
    s2 = o.dot(powers, x)
    return o.cat(s1 - s2 ** 2 - 1, x[0], x[1] - x[0] ** 2 - 1)


def _extended_rosenbrock(x, n, m, o):
    # (21) f_{2i−1} = 10(x_{2i} − x_{2i−1}²), f_{2i} = 1 − x_{2i−1}
    odd, even = x[0::2], x[1::2]
    return o.interleave(10 * (even - odd ** 2), 1 - odd)


def _extended_powell(x, n, m, o):
    # (22) f_{4i−3} = x_{4i−3} + 10x_{4i−2}, f_{4i−2} = 5^{1/2}(x_{4i−1} − x_{4i}),
    # f_{4i−1} = (x_{4i−2} − 2x_{4i−1})², f_{4i} = 10^{1/2}(x_{4i−3} − x_{4i})²
    a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
    return o.interleave(a + 10 * b, o.sqrt(o.c(5)) * (c - d), (b - 2 * c) ** 2,
                        o.sqrt(o.c(10)) * (a - d) ** 2)


def _penalty_1(x, n, m, o):
    # (23) f_i = a^{1/2}(x_i − 1), 1 ≤ i ≤ n; f_{n+1} = Σ x_j² − 1/4; a = 10⁻⁵
    return o.cat(o.sqrt(o.c("1e-5")) * (x - 1), o.sum(x ** 2) - o.c("0.25"))


def _penalty_2(x, n, m, o):
    # (24) f1 = x1 − 0.2; f_i = a^{1/2}(exp(x_i/10) + exp(x_{i−1}/10) − y_i), 2 ≤ i ≤ n;
    # f_i = a^{1/2}(exp(x_{i−n+1}/10) − exp(−1/10)), n < i < 2n; f_{2n} = Σ (n − j + 1)x_j² − 1;
    # a = 10⁻⁵, y_i = exp(i/10) + exp((i − 1)/10)
    sa = o.sqrt(o.c("1e-5"))
    i = o.arange(2, n + 1)
    y = o.exp(i / 10) + o.exp((i - 1) / 10)
    e = o.exp(x / 10)
    weights = o.arange(1, n + 1)[::-1]  # n − j + 1
    return o.cat(x[0] - o.c("0.2"), sa * (e[1:] + e[:-1] - y), sa * (e[1:] - o.exp(-o.c(1) / 10)),
                 o.sum(weights * x ** 2) - 1)


def _variably_dimensioned(x, n, m, o):
    # (25) f_i = x_i − 1, 1 ≤ i ≤ n; f_{n+1} = Σ j(x_j − 1); f_{n+2} = (Σ j(x_j − 1))²
    s = o.sum(o.arange(1, n + 1) * (x - 1))
    return o.cat(x - 1, s, s ** 2)


def _trigonometric(x, n, m, o):
    # (26) f_i = n − Σ_j cos x_j + i(1 − cos x_i) − sin x_i
    cx = o.cos(x)
    return n - o.sum(cx) + o.arange(1, n + 1) * (1 - cx) - o.sin(x)


def _brown_almost_linear(x, n, m, o):
    # (27) f_i = x_i + Σ_j x_j − (n + 1), 1 ≤ i < n; f_n = Π_j x_j − 1
    return o.cat(x[:-1] + o.sum(x) - (n + 1), o.prod(x) - 1)


def _discrete_boundary_value(x, n, m, o):
    # (28) f_i = 2x_i − x_{i−1} − x_{i+1} + h²(x_i + t_i + 1)³/2, h = 1/(n + 1), t_i = ih,
    # x_0 = x_{n+1} = 0
    h = o.c(1) / (n + 1)
    t = o.arange(1, n + 1) * h
    left, right = o.cat(0 * x[0], x[:-1]), o.cat(x[1:], 0 * x[0])
    return 2 * x - left - right + h ** 2 * (x + t + 1) ** 3 / 2


def _discrete_integral_equation(x, n, m, o):
    # (29) f_i = x_i + h[(1 − t_i) Σ_{j≤i} t_j(x_j + t_j + 1)³
    #                   + t_i Σ_{j>i} (1 − t_j)(x_j + t_j + 1)³]/2
    h = o.c(1) / (n + 1)
    t = o.arange(1, n + 1) * h
    cube = (x + t + 1) ** 3
    lower = o.cumsum(t * cube)
    upper_terms = (1 - t) * cube
    upper = o.sum(upper_terms) - o.cumsum(upper_terms)
    return x + h * ((1 - t) * lower + t * upper) / 2


def _broyden_tridiagonal(x, n, m, o):
    # (30) f_i = (3 − 2x_i)x_i − x_{i−1} − 2x_{i+1} + 1, x_0 = x_{n+1} = 0
    left, right = o.cat(0 * x[0], x[:-1]), o.cat(x[1:], 0 * x[0])
    return (3 - 2 * x) * x - left - 2 * right + 1


def _broyden_band(n: int, lower: int = 5, upper: int = 1) -> np.ndarray:
    """B_ij = 1 for j ≠ i, max(1, i − 5) ≤ j ≤ min(n, i + 1)."""
    i, j = np.indices((n, n))
    return ((j >= i - lower) & (j <= i + upper) & (j != i)).astype(np.int64)


def _broyden_banded(x, n, m, o):
    # (31) f_i = x_i(2 + 5x_i²) + 1 − Σ_{j∈J_i} x_j(1 + x_j),
    # J_i = {j ≠ i: max(1, i − m_l) ≤ j ≤ min(n, i + m_u)}, m_l = 5, m_u = 1
    band = _broyden_band(n)
    if isinstance(x, np.ndarray) and x.dtype == object:
        band = band.astype(object)
    return x * (2 + 5 * x ** 2) + 1 - o.dot(band, x * (1 + x))


def _linear_full_rank(x, n, m, o):
    # (32) f_i = x_i − (2/m)Σ_j x_j − 1, 1 ≤ i ≤ n; f_i = −(2/m)Σ_j x_j − 1, n < i ≤ m
    s = 2 * o.sum(x) / m
    return o.cat(x - s - 1, (-s - 1) * o.c(1) + 0 * o.arange(n, m))


def _linear_rank_1(x, n, m, o):
    # (33) f_i = i(Σ_j j x_j) − 1
    s = o.sum(o.arange(1, n + 1) * x)
    return o.arange(1, m + 1) * s - 1


def _linear_rank_1_zero(x, n, m, o):
    # (34) f1 = −1; f_i = (i − 1)(Σ_{j=2}^{n−1} j x_j) − 1, 2 ≤ i ≤ m − 1; f_m = −1
    # (f1 and f_m are constants: zero rows of J)
    s = o.sum(o.arange(2, n) * x[1:-1])
    return o.cat(o.arange(0, m - 1) * s - 1, -o.c(1) + 0 * x[0])


def _chebyquad(x, n, m, o):
    # (35) f_i = (1/n)Σ_j T_i(2x_j − 1) − ∫_0^1 T_i(2ξ − 1)dξ, T_i the Chebyshev polynomials;
    # the integral is 0 for odd i and −1/(i² − 1) for even i
    y = 2 * x - 1
    prev, cur = 1 + 0 * y, y
    rows = []
    for i in range(1, m + 1):
        integral = 0 if i % 2 else -o.c(1) / (i * i - 1)
        rows.append(o.sum(cur) / n - integral)
        prev, cur = cur, 2 * y * cur - prev
    return o.cat(*rows)


# --- the registry -------------------------------------------------------------------------------

_MINPACK = "MINPACK-1 test driver (ssqfcn/initpt, fortran-lang/minpack test_lmder.f90)"
_MINPACK_HYBRD = "MINPACK-1 test driver (vecfcn/initpt, fortran-lang/minpack test_hybrd.f90)"
_FUNCONSTRAIN = "funconstrain (jlmelville/funconstrain, R)"
_CERES = "Ceres Solver examples/more_garbow_hillstrom.cc"
_CUTEST = "CUTEst SIF (sif2jax translation)"


def _sources(*names):
    return "; ".join(names)


def _build(number, name, title, fn, n, m, start, f_star, f_star_digits=None, other_values=(),
           x_star=None, reference="", sources="", unchecked_scales=(),
           f_star_exact=None) -> MGHProblem:
    start = tuple(float(v) for v in start)
    if len(start) != n:
        raise ValueError(f"{name}: start has {len(start)} entries, n = {n}")
    if m < n:
        raise ValueError(f"{name}: MGH problems need m >= n, got m = {m}, n = {n}")
    return MGHProblem(number, name, title, n, m, fn, start, f_star, f_star_digits,
                      tuple(other_values), None if x_star is None else tuple(x_star),
                      reference, sources,
                      None if unchecked_scales is None else tuple(map(float, unchecked_scales)),
                      f_star_exact)


def _fixed(n0, m0):
    def check(name, n, m):
        n, m = n0 if n is None else n, m0 if m is None else m
        if (n, m) != (n0, m0):
            raise ValueError(f"{name} has fixed size n = {n0}, m = {m0}")
        return n, m
    return check


def _spec_rosenbrock(n=None, m=None):
    n, m = _fixed(2, 2)("rosenbrock", n, m)
    return _build(1, "rosenbrock", "Rosenbrock", _rosenbrock, n, m, (-1.2, 1.0), 0.0,
                  x_star=(1, 1), reference="f = 0 at (1, 1)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_freudenstein_roth(n=None, m=None):
    n, m = _fixed(2, 2)("freudenstein_roth", n, m)
    return _build(2, "freudenstein_roth", "Freudenstein and Roth", _freudenstein_roth, n, m,
                  (0.5, -2.0), 0.0, other_values=(48.9842,), x_star=(5, 4),
                  reference="f = 0 at (5, 4); f = 48.9842... at (11.41..., −0.8968...)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_powell_badly_scaled(n=None, m=None):
    n, m = _fixed(2, 2)("powell_badly_scaled", n, m)
    return _build(3, "powell_badly_scaled", "Powell badly scaled", _powell_badly_scaled, n, m,
                  (0.0, 1.0), 0.0, reference="f = 0 at (1.098...e−5, 9.106...)",
                  sources=_sources(_MINPACK_HYBRD, _FUNCONSTRAIN, _CERES))


def _spec_brown_badly_scaled(n=None, m=None):
    n, m = _fixed(2, 3)("brown_badly_scaled", n, m)
    return _build(4, "brown_badly_scaled", "Brown badly scaled", _brown_badly_scaled, n, m,
                  (1.0, 1.0), 0.0, x_star=("1e6", "2e-6"), reference="f = 0 at (1e6, 2e−6)",
                  sources=_sources(_FUNCONSTRAIN, _CERES))


def _spec_beale(n=None, m=None):
    n, m = _fixed(2, 3)("beale", n, m)
    return _build(5, "beale", "Beale", _beale, n, m, (1.0, 1.0), 0.0, x_star=(3, "0.5"),
                  reference="f = 0 at (3, 0.5)", sources=_sources(_FUNCONSTRAIN, _CERES))


def _spec_jennrich_sampson(n=None, m=None):
    n = 2 if n is None else n
    m = 10 if m is None else m
    if n != 2:
        raise ValueError("jennrich_sampson has n = 2")
    return _build(6, "jennrich_sampson", "Jennrich and Sampson", _jennrich_sampson, n, m,
                  (0.3, 0.4), 124.362 if m == 10 else None, 6 if m == 10 else None,
                  reference="f = 124.362... at x1 = x2 = 0.2578... for m = 10",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_helical_valley(n=None, m=None):
    n, m = _fixed(3, 3)("helical_valley", n, m)
    return _build(7, "helical_valley", "Helical valley", _helical_valley, n, m,
                  (-1.0, 0.0, 0.0), 0.0, x_star=(1, 0, 0), reference="f = 0 at (1, 0, 0)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_bard(n=None, m=None):
    n, m = _fixed(3, 15)("bard", n, m)
    return _build(8, "bard", "Bard", _bard, n, m, (1.0, 1.0, 1.0), 8.21487e-3, 6,
                  other_values=(17.4286,),
                  reference="f = 8.21487...e−3; f = 17.4286... at (0.8406..., −∞, −∞)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_gaussian(n=None, m=None):
    n, m = _fixed(3, 15)("gaussian", n, m)
    return _build(9, "gaussian", "Gaussian", _gaussian, n, m, (0.4, 1.0, 0.0), 1.12793e-8, 6,
                  reference="f = 1.12793...e−8", sources=_sources(_FUNCONSTRAIN, _CERES))


def _spec_meyer(n=None, m=None):
    n, m = _fixed(3, 16)("meyer", n, m)
    return _build(10, "meyer", "Meyer", _meyer, n, m, (0.02, 4000.0, 250.0), 87.9458, 6,
                  reference="f = 87.9458...", sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_gulf(n=None, m=None):
    n = 3 if n is None else n
    m = 99 if m is None else m
    if n != 3 or not 3 <= m <= 100:
        raise ValueError("gulf has n = 3 and 3 <= m <= 100")
    return _build(11, "gulf", "Gulf research and development", _gulf, n, m, (5.0, 2.5, 0.15),
                  0.0, x_star=(50, 25, "1.5"),
                  reference="f = 0 at (50, 25, 1.5); n ≤ m ≤ 100 (m = 99 as CUTEst GULF and "
                            "funconstrain: at m = 100, t_m = 1 puts y_m on x2* = 25)",
                  sources=_sources(_FUNCONSTRAIN, _CUTEST), unchecked_scales=(100,))


def _spec_box_3d(n=None, m=None):
    n = 3 if n is None else n
    m = 10 if m is None else m
    if n != 3:
        raise ValueError("box_3d has n = 3")
    return _build(12, "box_3d", "Box three-dimensional", _box_3d, n, m, (0.0, 10.0, 20.0), 0.0,
                  x_star=(1, 10, 1),
                  reference="f = 0 at (1, 10, 1), (10, 1, −1) and wherever x1 = x2, x3 = 0",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN))


def _spec_powell_singular(n=None, m=None):
    n, m = _fixed(4, 4)("powell_singular", n, m)
    return _build(13, "powell_singular", "Powell singular", _powell_singular, n, m,
                  (3.0, -1.0, 0.0, 1.0), 0.0, x_star=(0, 0, 0, 0),
                  reference="f = 0 at the origin (J singular there)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_wood(n=None, m=None):
    n, m = _fixed(4, 6)("wood", n, m)
    return _build(14, "wood", "Wood", _wood, n, m, (-3.0, -1.0, -3.0, -1.0), 0.0,
                  x_star=(1, 1, 1, 1), reference="f = 0 at (1, 1, 1, 1)",
                  sources=_sources(_FUNCONSTRAIN, _CERES))


def _spec_kowalik_osborne(n=None, m=None):
    n, m = _fixed(4, 11)("kowalik_osborne", n, m)
    return _build(15, "kowalik_osborne", "Kowalik and Osborne", _kowalik_osborne, n, m,
                  (0.25, 0.39, 0.415, 0.39), 3.07505e-4, 6, other_values=(1.02734e-3,),
                  reference="f = 3.07505...e−4; f = 1.02734...e−3 at (+∞, −14.07..., −∞, −∞)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_brown_dennis(n=None, m=None):
    n = 4 if n is None else n
    m = 20 if m is None else m
    if n != 4:
        raise ValueError("brown_dennis has n = 4")
    return _build(16, "brown_dennis", "Brown and Dennis", _brown_dennis, n, m,
                  (25.0, 5.0, -5.0, -1.0), 85822.2 if m == 20 else None, 6 if m == 20 else None,
                  reference="f = 85822.2... if m = 20",
                  sources=_sources(_MINPACK, _CERES))


def _spec_osborne_1(n=None, m=None):
    n, m = _fixed(5, 33)("osborne_1", n, m)
    return _build(17, "osborne_1", "Osborne 1", _osborne_1, n, m, (0.5, 1.5, -1.0, 0.01, 0.02),
                  5.46489e-5, 6, reference="f = 5.46489...e−5",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


def _spec_biggs_exp6(n=None, m=None):
    n = 6 if n is None else n
    m = 13 if m is None else m
    if n != 6:
        raise ValueError("biggs_exp6 has n = 6")
    return _build(18, "biggs_exp6", "Biggs EXP6", _biggs_exp6, n, m, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0),
                  0.0, other_values=(5.65565e-3,) if m == 13 else (), x_star=(1, 10, 1, 5, 4, 3),
                  reference="f = 5.65565...e−3 if m = 13; f = 0 at (1, 10, 1, 5, 4, 3)",
                  sources=_sources(_FUNCONSTRAIN, _CERES))


def _spec_osborne_2(n=None, m=None):
    n, m = _fixed(11, 65)("osborne_2", n, m)
    return _build(19, "osborne_2", "Osborne 2", _osborne_2, n, m,
                  (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 4.01377e-2, 6,
                  reference="f = 4.01377...e−2",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN, _CERES))


_WATSON = {6: 2.28767e-3, 9: 1.39976e-6, 12: 4.72238e-10}


def _spec_watson(n=None, m=None):
    n = 6 if n is None else n
    m = 31 if m is None else m
    if m != 31 or not 2 <= n <= 31:
        raise ValueError("watson has m = 31 and 2 <= n <= 31")
    return _build(20, "watson", "Watson", _watson, n, m, (0.0,) * n, _WATSON.get(n),
                  6 if n in _WATSON else None,
                  reference="f = 2.28767...e−3 if n = 6; 1.39976...e−6 if n = 9; "
                            "4.72238...e−10 if n = 12; x0 = 0 (so 10·x0 = 100·x0 = x0)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN))


def _spec_extended_rosenbrock(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if n % 2 or m != n:
        raise ValueError("extended_rosenbrock has n even and m = n")
    return _build(21, "extended_rosenbrock", "Extended Rosenbrock", _extended_rosenbrock, n, m,
                  (-1.2, 1.0) * (n // 2), 0.0, x_star=(1,) * n, reference="f = 0 at (1, ..., 1)",
                  sources=_sources(_FUNCONSTRAIN, _CUTEST + " SROSENBR"))


def _spec_extended_powell(n=None, m=None):
    n = 12 if n is None else n
    m = n if m is None else m
    if n % 4 or m != n:
        raise ValueError("extended_powell has n a multiple of 4 and m = n")
    return _build(22, "extended_powell", "Extended Powell singular", _extended_powell, n, m,
                  (3.0, -1.0, 0.0, 1.0) * (n // 4), 0.0, x_star=(0,) * n,
                  reference="f = 0 at the origin (J singular there)",
                  sources=_sources(_FUNCONSTRAIN, _CUTEST + " POWELLSG"))


def _spec_penalty_1(n=None, m=None):
    n = 10 if n is None else n
    m = n + 1 if m is None else m
    if m != n + 1:
        raise ValueError("penalty_1 has m = n + 1")
    known = {4: 2.24997e-5, 10: 7.08765e-5}
    return _build(23, "penalty_1", "Penalty I", _penalty_1, n, m, tuple(range(1, n + 1)),
                  known.get(n), 6 if n in known else None,
                  reference="f = 2.24997...e−5 if n = 4; 7.08765...e−5 if n = 10",
                  sources=_sources(_FUNCONSTRAIN, _CUTEST + " PENALTY1"))


def _spec_penalty_2(n=None, m=None):
    n = 10 if n is None else n
    m = 2 * n if m is None else m
    if m != 2 * n:
        raise ValueError("penalty_2 has m = 2n")
    known = {4: 9.37629e-6, 10: 2.93660e-4}
    return _build(24, "penalty_2", "Penalty II", _penalty_2, n, m, (0.5,) * n, known.get(n),
                  6 if n in known else None,
                  reference="f = 9.37629...e−6 if n = 4; 2.93660...e−4 if n = 10",
                  sources=_sources(_FUNCONSTRAIN, _CUTEST + " PENALTY2"))


def _spec_variably_dimensioned(n=None, m=None):
    n = 10 if n is None else n
    m = n + 2 if m is None else m
    if m != n + 2:
        raise ValueError("variably_dimensioned has m = n + 2")
    return _build(25, "variably_dimensioned", "Variably dimensioned", _variably_dimensioned, n, m,
                  tuple(1 - j / n for j in range(1, n + 1)), 0.0, x_star=(1,) * n,
                  reference="f = 0 at (1, ..., 1)",
                  sources=_sources(_FUNCONSTRAIN, _CUTEST + " VARDIMNE"))


def _spec_trigonometric(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if m != n:
        raise ValueError("trigonometric has m = n")
    return _build(26, "trigonometric", "Trigonometric", _trigonometric, n, m, (1 / n,) * n, 0.0,
                  x_star=(0,) * n, reference="f = 0 (at the origin, among others)",
                  sources=_sources(_MINPACK_HYBRD, _FUNCONSTRAIN))


def _spec_brown_almost_linear(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if m != n:
        raise ValueError("brown_almost_linear has m = n")
    return _build(27, "brown_almost_linear", "Brown almost-linear", _brown_almost_linear, n, m,
                  (0.5,) * n, 0.0, other_values=(1.0,), x_star=(1,) * n,
                  reference="f = 0 at (α, ..., α, α^{1−n}), nα^n − (n + 1)α^{n−1} + 1 = 0 "
                            "(α = 1 among them); f = 1 at (0, ..., 0, n + 1)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN))


def _grid_start(n):
    return tuple((j / (n + 1)) * (j / (n + 1) - 1) for j in range(1, n + 1))


def _spec_discrete_boundary_value(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if m != n:
        raise ValueError("discrete_boundary_value has m = n")
    return _build(28, "discrete_boundary_value", "Discrete boundary value",
                  _discrete_boundary_value, n, m, _grid_start(n), 0.0, reference="f = 0",
                  sources=_sources(_MINPACK_HYBRD, _FUNCONSTRAIN))


def _spec_discrete_integral_equation(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if m != n:
        raise ValueError("discrete_integral_equation has m = n")
    return _build(29, "discrete_integral_equation", "Discrete integral equation",
                  _discrete_integral_equation, n, m, _grid_start(n), 0.0, reference="f = 0",
                  sources=_sources(_MINPACK_HYBRD, _FUNCONSTRAIN))


def _spec_broyden_tridiagonal(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if m != n:
        raise ValueError("broyden_tridiagonal has m = n")
    return _build(30, "broyden_tridiagonal", "Broyden tridiagonal", _broyden_tridiagonal, n, m,
                  (-1.0,) * n, 0.0, reference="f = 0",
                  sources=_sources(_MINPACK_HYBRD, _FUNCONSTRAIN))


def _spec_broyden_banded(n=None, m=None):
    n = 10 if n is None else n
    m = n if m is None else m
    if m != n:
        raise ValueError("broyden_banded has m = n")
    return _build(31, "broyden_banded", "Broyden banded", _broyden_banded, n, m, (-1.0,) * n,
                  0.0, reference="f = 0", sources=_sources(_MINPACK_HYBRD, _FUNCONSTRAIN))


def _spec_linear_full_rank(n=None, m=None):
    n = 5 if n is None else n
    m = 10 if m is None else m
    return _build(32, "linear_full_rank", "Linear function — full rank", _linear_full_rank, n, m,
                  (1.0,) * n, float(m - n), x_star=(-1,) * n, f_star_exact=f"{m - n}/1",
                  reference="f = m − n at (−1, ..., −1)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN))


def _spec_linear_rank_1(n=None, m=None):
    n = 5 if n is None else n
    m = 10 if m is None else m
    return _build(33, "linear_rank_1", "Linear function — rank 1", _linear_rank_1, n, m,
                  (1.0,) * n, m * (m - 1) / (2 * (2 * m + 1)),
                  f_star_exact=f"{m * (m - 1)}/{2 * (2 * m + 1)}",
                  reference="f = m(m − 1)/(2(2m + 1)) wherever Σ j x_j = 3/(2m + 1)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN))


def _spec_linear_rank_1_zero(n=None, m=None):
    n = 5 if n is None else n
    m = 10 if m is None else m
    if n < 3:
        raise ValueError("linear_rank_1_zero needs n >= 3")
    return _build(34, "linear_rank_1_zero", "Linear function — rank 1 with zero columns and rows",
                  _linear_rank_1_zero, n, m, (1.0,) * n, (m * m + 3 * m - 6) / (2 * (2 * m - 3)),
                  f_star_exact=f"{m * m + 3 * m - 6}/{2 * (2 * m - 3)}",
                  reference="f = (m² + 3m − 6)/(2(2m − 3)) wherever Σ_{j=2}^{n−1} j x_j = "
                            "3/(2m − 3); f1 = f_m = −1 are constant (zero rows of J)",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN), unchecked_scales=None)


_CHEBYQUAD = {8: 3.51687e-3, 10: 6.50395e-3}


def _spec_chebyquad(n=None, m=None):
    n = 8 if n is None else n
    m = n if m is None else m
    if m < n:
        raise ValueError("chebyquad needs m >= n")
    if m == n:
        f_star, digits = (0.0, None) if n <= 7 or n == 9 else (_CHEBYQUAD.get(n), 6)
        if f_star is None:
            digits = None
    else:
        f_star, digits = None, None
    return _build(35, "chebyquad", "Chebyquad", _chebyquad, n, m,
                  tuple(j / (n + 1) for j in range(1, n + 1)), f_star, digits,
                  reference="f = 0 for m = n, 1 ≤ n ≤ 7 and n = 9; f = 3.51687...e−3 for "
                            "m = n = 8; f = 6.50395...e−3 for m = n = 10",
                  sources=_sources(_MINPACK, _FUNCONSTRAIN))


_BUILDERS = {b().name: b for b in (
    _spec_rosenbrock, _spec_freudenstein_roth, _spec_powell_badly_scaled,
    _spec_brown_badly_scaled, _spec_beale, _spec_jennrich_sampson, _spec_helical_valley,
    _spec_bard, _spec_gaussian, _spec_meyer, _spec_gulf, _spec_box_3d, _spec_powell_singular,
    _spec_wood, _spec_kowalik_osborne, _spec_brown_dennis, _spec_osborne_1, _spec_biggs_exp6,
    _spec_osborne_2, _spec_watson, _spec_extended_rosenbrock, _spec_extended_powell,
    _spec_penalty_1, _spec_penalty_2, _spec_variably_dimensioned, _spec_trigonometric,
    _spec_brown_almost_linear, _spec_discrete_boundary_value, _spec_discrete_integral_equation,
    _spec_broyden_tridiagonal, _spec_broyden_banded, _spec_linear_full_rank, _spec_linear_rank_1,
    _spec_linear_rank_1_zero, _spec_chebyquad)}

#: The 35 MGH problems at their standard sizes, by name, in the paper's order.
PROBLEMS: dict[str, MGHProblem] = {name: build() for name, build in _BUILDERS.items()}

#: MGH's protocol: every problem from x0, 10·x0 and 100·x0.
SCALES = (1.0, 10.0, 100.0)


def variant(name: str, n: int | None = None, m: int | None = None) -> MGHProblem:
    """Problem `name` at another admissible size (n and/or m; the standard one where None),
    e.g. `variant("watson", n=9)`; f_star is the paper's value where it gives one for that
    size (always for the zero-residual problems), None otherwise."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown MGH problem {name!r}; the problems are {list(_BUILDERS)}")
    return _BUILDERS[name](n, m)


# --- as flowlab residual problems ---------------------------------------------------------------


class MGHParameters(eqx.Module):
    """The model of an MGH residual problem: the parameter vector x itself (θ = x)."""

    x: Float[Array, " n"]


class MGHResidual(eqx.Module):
    """model ↦ F(model.x) for one MGH problem (hashable: problems of the same spec share a
    compilation)."""

    spec: MGHProblem = eqx.field(static=True)

    def __call__(self, model: MGHParameters) -> Float[Array, " m"]:
        return self.spec.residual(model.x)


def residual_problem(name: str | MGHProblem, scale: float = 1.0, *, kappa: float = 1.0,
                     check: bool | None = None, dtype=None) -> ResidualProblem:
    """MGH problem `name` (a key of `PROBLEMS`, or an `MGHProblem` from `variant`) as a
    `flowlab.ResidualProblem`: θ = x in R^n, r(θ) = F(x) in R^m, C = (κ/2)|F|² (κ = 1: C =
    f/2), from θ0 = scale·x0 (MGH's scales are 1, 10, 100).

    **Arguments:**

    - `name`: the problem (a key of `PROBLEMS` or an `MGHProblem`).
    - `scale`: θ0 = scale·x0.
    - `kappa`: κ of C = (κ/2)|r|².
    - `check`: `ResidualProblem`'s check at θ0 (finite r, no zero rows of J); None: on, except
      at the starts that have zero rows of J (`MGHProblem.needs_check_off`: problem 34 at
      every start, its f1 = f_m = −1 constant; problem 11 at 100·x0, where every
      exp(−|y_i − x2|^{x3}/x1) underflows to 0).
    - `dtype`: of θ0 (default: JAX's default float, float64 under `jax_enable_x64`).

    **Returns:** the `ResidualProblem` (its model an `MGHParameters`).
    """
    spec = name if isinstance(name, MGHProblem) else PROBLEMS.get(name)
    if spec is None:
        raise KeyError(f"unknown MGH problem {name!r}; the problems are {list(PROBLEMS)}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    theta0 = jnp.asarray(scale * spec.x0, dtype=dtype)
    check = (not spec.needs_check_off(scale)) if check is None else check
    return ResidualProblem(MGHParameters(theta0), MGHResidual(spec), kappa=kappa, check=check)
