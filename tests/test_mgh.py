"""The Moré–Garbow–Hillstrom problems (flowlab.mgh): shapes, Jacobians against central
differences, the published minima at the published or reference minimisers, the
ResidualProblem form from 10·x0, and the benchmark's scoring (float64)."""

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from flowlab import mgh

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "results" / "mgh_reference.json"
NAMES = list(mgh.PROBLEMS)


@pytest.fixture(scope="module")
def reference():
    return {p["name"]: p for p in json.loads(REFERENCE.read_text())["problems"]}


def _agrees(value, printed, digits):
    """value equals the paper's printed value to its `digits` significant digits, truncated
    or rounded (the paper prints 'd.ddddd...')."""
    e = mpmath.floor(mpmath.log10(abs(value))) - (digits - 1)
    scaled, p = value / mpmath.mpf(10) ** e, mpmath.mpf(repr(printed)) / mpmath.mpf(10) ** e
    return abs(mpmath.floor(scaled) - p) < 0.5 or abs(mpmath.nint(scaled) - p) < 0.5


def test_registry():
    assert len(mgh.PROBLEMS) == 35
    assert [p.number for p in mgh.PROBLEMS.values()] == list(range(1, 36))
    for name, p in mgh.PROBLEMS.items():
        assert p.name == name and p.m >= p.n and p.x0.shape == (p.n,) and p.x0.dtype == np.float64
        assert p.sources and p.reference
    assert mgh.variant("watson", n=9).f_star == 1.39976e-6
    assert mgh.variant("penalty_1", n=4).m == 5
    assert mgh.variant("chebyquad", n=9).f_star == 0.0
    assert mgh.variant("chebyquad", n=11).f_star is None
    with pytest.raises(ValueError, match="fixed size"):
        mgh.variant("rosenbrock", n=3)
    with pytest.raises(KeyError):
        mgh.residual_problem("no_such_problem")


@pytest.mark.parametrize("name", NAMES)
def test_residual_shape_and_finite(name):
    p = mgh.PROBLEMS[name]
    r = np.asarray(p.residual(jnp.asarray(p.x0)))
    assert r.shape == (p.m,) and r.dtype == np.float64 and np.all(np.isfinite(r))
    # the mpmath form of the same definition agrees at x0
    mpmath.mp.dps = 30
    rm = np.array([float(v) for v in p.residual_mp([repr(float(v)) for v in p.x0])])
    np.testing.assert_allclose(r, rm, rtol=1e-12, atol=1e-14 * max(1.0, np.max(np.abs(rm))))


def _fd_jacobian(p, x):
    """Central differences of F in mpmath at 30 digits (step 1e-10·max(1, |x_j|)): free of
    float64 round-off (problem 4 has |F| ~ 1e6 next to |J| ~ 1)."""
    mpmath.mp.dps = 30
    xs = [mpmath.mpf(repr(float(v))) for v in x]
    cols = []
    for j in range(p.n):
        h = mpmath.mpf("1e-10") * max(1, abs(xs[j]))
        xp, xm = list(xs), list(xs)
        xp[j] += h
        xm[j] -= h
        cols.append([(a - b) / (2 * h) for a, b in zip(p.residual_mp(xp), p.residual_mp(xm))])
    return np.array([[float(c[i]) for c in cols] for i in range(p.m)])


@pytest.mark.parametrize("name", NAMES)
def test_jacobian_against_central_differences(name):
    p = mgh.PROBLEMS[name]
    rng = np.random.default_rng(p.number)
    xs = np.stack([p.x0, p.x0 + 0.1 * (np.abs(p.x0) + 1) * rng.uniform(-1, 1, p.n)])
    ads = np.asarray(jax.jit(jax.vmap(jax.jacfwd(p.residual)))(jnp.asarray(xs)))
    for x, ad in zip(xs, ads):
        fd = _fd_jacobian(p, x)
        assert ad.shape == (p.m, p.n)
        scale = np.maximum(np.linalg.norm(fd, axis=1, keepdims=True), 1e-300)
        err = np.max(np.abs(ad - fd) / scale)
        assert err <= 1e-6, (name, err)


@pytest.mark.parametrize("name", [n for n in NAMES if mgh.PROBLEMS[n].x_star is not None])
def test_exact_minimisers(name):
    """Where the paper (or the problem's construction) gives x*, f(x*) is its f* (0, or the
    closed form m − n of problem 32), in mpmath at 50 digits."""
    p = mgh.PROBLEMS[name]
    mpmath.mp.dps = 50
    f = mpmath.fsum(r * r for r in p.residual_mp(p.x_star))
    assert abs(f - p.f_star) <= mpmath.mpf(10) ** -40 * max(1, p.f_star)


@pytest.mark.parametrize("name", NAMES)
def test_reference_minimum_and_published_value(name, reference):
    """|F(x_ref)|² at the reference minimiser (30 digits) is the reference f*, in mpmath and
    in float64, and equals the paper's f* to the digits it prints (exactly for the closed
    forms of problems 32–34; f* = 0 where the paper states 0)."""
    p, ref = mgh.PROBLEMS[name], reference[name]
    assert (ref["n"], ref["m"]) == (p.n, p.m)
    mpmath.mp.dps = 50
    f = mpmath.fsum(r * r for r in p.residual_mp(ref["x_star"]))
    f_ref = mpmath.mpf(ref["f_star"])
    if ref["is_zero"]:
        assert p.f_star == 0 and f <= mpmath.mpf(10) ** -40
    else:
        assert abs(f - f_ref) <= mpmath.mpf(10) ** -25 * f_ref
        assert math.isclose(p.value(np.array([float(v) for v in ref["x_star"]])),
                            ref["f_star_float"], rel_tol=1e-10)
    if p.f_star is None:
        return
    if p.f_star_exact is not None:
        a, b = p.f_star_exact.split("/")
        assert abs(f_ref - mpmath.mpf(a) / mpmath.mpf(b)) <= mpmath.mpf(10) ** -30
    elif p.f_star == 0:
        assert ref["is_zero"]
    else:
        assert _agrees(f_ref, p.f_star, p.f_star_digits), (name, ref["f_star"], p.f_star)


@pytest.mark.parametrize("name", NAMES)
def test_residual_problem_from_10_x0(name):
    p = mgh.PROBLEMS[name]
    prob = mgh.residual_problem(name, 10)
    x = 10 * p.x0
    np.testing.assert_array_equal(np.asarray(prob.theta0), x)
    assert (prob.num_params, prob.num_outputs, prob.kappa) == (p.n, p.m, 1.0)
    r = np.asarray(p.residual(jnp.asarray(x)))
    np.testing.assert_allclose(float(prob.cost(prob.theta0)), 0.5 * float(r @ r), rtol=1e-13)
    np.testing.assert_array_equal(np.asarray(prob.model().x), x)


def test_checks_off_where_rows_of_j_vanish():
    """Problem 34's f1 = f_m = −1 are constant; at 100·x0 every Gulf residual underflows to
    −t_i (J = 0): the ResidualProblem check refuses both, residual_problem turns it off there
    and only there."""
    from flowlab.problem import ResidualProblem

    for name, scale, match in (("linear_rank_1_zero", 1, "do not depend on θ"),
                               ("gulf", 100, "does not depend on θ")):
        with pytest.raises(ValueError, match=match):
            mgh.residual_problem(name, scale, check=True)
        assert isinstance(mgh.residual_problem(name, scale), ResidualProblem)
    assert mgh.PROBLEMS["gulf"].needs_check_off(100) and not mgh.PROBLEMS["gulf"].needs_check_off(1)


def _harness():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import mgh as harness

    return harness


def test_success_definition():
    h = _harness()
    positive = {"f_star_float": 2.0, "is_zero": False,
                "local_minima": [{"value_float": 5.0, "is_minimum": True}],
                "paper_other_values": []}
    assert h.score(2.0 + 2e-6, positive)["success"]  # 6 digits
    s = h.score(2.0 + 3e-5, positive)
    assert not s["success"] and 4.8 < s["digits"] < 4.9
    assert h.score(5.0, positive)["local_min"] == 5.0
    assert h.score(math.inf, positive)["digits"] == 0.0
    zero = {"f_star_float": 0.0, "is_zero": True, "local_minima": [], "paper_other_values": []}
    assert h.score(1e-25, zero)["success"] and not h.score(1e-23, zero)["success"]
    assert h.score(0.0, zero)["digits"] is None


def test_scipy_contender_on_rosenbrock(reference):
    """The harness's scipy lm route solves Rosenbrock from x0 (f* = 0)."""
    h = _harness()
    row = h.run_one(mgh.PROBLEMS["rosenbrock"], 1.0, "scipy_lm", h.scipy_lm,
                    reference["rosenbrock"])
    assert row["success"] and row["f"] <= 1e-24 and row["nfev"] > 0


@pytest.mark.slow
def test_flowlab_contenders_on_bard(reference):
    """Both Gauss–Newton routes of the harness reach 6 digits on Bard from x0."""
    h = _harness()
    for name in ("gn_backtracking", "gn_plain"):
        row = h.run_one(mgh.PROBLEMS["bard"], 1.0, name, h.CONTENDERS[name], reference["bard"])
        assert row["success"], row
