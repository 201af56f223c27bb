"""Each flow states its own theory: mode rates, the linearised cost curve, rate bounds; and the
one settings object behind simulate and euler_steps."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import flowlab as fl
from flowlab.linalg import gram_matrix


@pytest.fixture(scope="module")
def problem():
    data = fl.teacher(jr.key(0), 8, 2)
    return fl.LeastSquaresProblem(fl.MLP(2, 1, (16,), key=jr.key(1)), data, kappa=1.0)


def test_standard_flow_curve_is_the_ntk_exponential(problem):
    """C_pred(s) = (κ/2)|e^{−κΘ(θ0)s} r0|², checked against scipy's matrix exponential."""
    ts = np.array([0.0, 0.3, 1.0, 4.0, 20.0])
    pred = fl.GradientFlow().predicted_cost(problem, problem.theta0, ts)
    gram = np.asarray(gram_matrix(problem, problem.theta0))
    r0 = np.asarray(problem.residual(problem.theta0))
    kappa = problem.kappa
    exact = [0.5 * kappa * np.sum((scipy.linalg.expm(-kappa * gram * s) @ r0) ** 2) for s in ts]
    np.testing.assert_allclose(pred, exact, rtol=1e-10, atol=1e-14)


def test_linearised_curve_agrees_with_the_flow_to_first_order(problem):
    """C and the NTK curve have the same value and slope at s = 0, so they separate as O(s²):
    ten times the time, about a hundred times the log error."""
    flow = fl.GradientFlow()
    tr = fl.simulate(problem, flow, t1=1e-2, ts=[0.0, 1e-3, 1e-2], rtol=1e-12, atol=1e-12)
    pred = flow.predicted_cost(problem, problem.theta0, tr.ts)
    err = np.abs(np.log(np.asarray(tr.cost)) - np.log(pred))
    assert err[0] < 1e-14 and err[1] < 1e-4
    assert 50 < err[2] / err[1] < 200


def test_mode_rates_of_the_family(problem):
    sigma = jnp.linspace(0.1, 3.0, 7)
    kappa = problem.kappa
    np.testing.assert_allclose(fl.GradientFlow().mode_rates(problem, sigma), kappa * sigma**2)
    np.testing.assert_allclose(fl.AdaptedFlow().mode_rates(problem, sigma), kappa)
    # the homotopy's end points are the standard and the adapted flow
    np.testing.assert_allclose(fl.HomotopyFlow(alpha=0.0).mode_rates(problem, sigma),
                               kappa * sigma**2, rtol=1e-12)
    np.testing.assert_allclose(fl.HomotopyFlow(alpha=1.0).mode_rates(problem, sigma), kappa,
                               rtol=1e-12)
    lam = 0.3
    np.testing.assert_allclose(fl.DampedFlow(damping=lam).mode_rates(problem, sigma),
                               kappa * sigma**2 / (sigma**2 + lam), rtol=1e-12)
    # rate bounds: guaranteed decay at full row rank
    assert fl.AdaptedFlow().rate_bound(problem) == 2 * kappa
    assert fl.HomotopyFlow(alpha=0.3).rate_bound(problem) == pytest.approx(0.6 * kappa)
    assert fl.GradientFlow().rate_bound(problem) == 0.0
    assert fl.DampedFlow(damping=0.0, damping_lambda_min=1.0).rate_bound(problem) == kappa


def test_predicted_rate_is_the_slowest_mode(problem):
    sigma = np.asarray(fl.singular_values(problem, problem.theta0))
    kappa = problem.kappa
    assert fl.GradientFlow().predicted_rate(problem, problem.theta0) == pytest.approx(
        2 * kappa * sigma[0] ** 2, rel=1e-10)
    alpha = 0.25
    assert fl.HomotopyFlow(alpha=alpha).predicted_rate(problem, problem.theta0) == pytest.approx(
        2 * kappa * (alpha + (1 - alpha) * sigma[0] ** 2), rel=1e-10)


def test_no_rate_is_claimed_where_the_theory_makes_none():
    """K < QN: C(∞) > 0 in general, so neither a rate nor a bound; other losses likewise."""
    data = fl.smooth_regression(jr.key(0), 16, 2)
    under = fl.LeastSquaresProblem(fl.MLP(2, 1, (2,), key=jr.key(1)), data)
    assert not under.overparametrised
    flow = fl.AdaptedFlow("qr")
    assert math.isnan(flow.predicted_rate(under, under.theta0))
    assert math.isnan(flow.rate_bound(under))
    tr = fl.simulate(under, flow, t1=5.0, max_condition=None)
    report = fl.theory.compare(tr, under, flow)
    assert math.isnan(report["predicted_rate"]) and math.isnan(report["rate_relative_error"])
    # the adapted law read off the trajectory alone makes no claim either
    assert math.isnan(fl.theory.compare(tr)["predicted_rate"])


def test_interpolation_flow_states_its_curve(problem):
    tr = fl.interpolate(problem, num_saves=11, rtol=1e-10, atol=1e-10)
    flow = fl.InterpolationFlow()
    pred = flow.predicted_cost(problem, problem.theta0, tr.ts)
    np.testing.assert_allclose(pred, float(tr.cost0) * (1 - np.asarray(tr.ts)) ** 2, rtol=1e-12)
    keep = np.asarray(tr.ts) < 0.95
    np.testing.assert_allclose(np.asarray(tr.cost)[keep], pred[keep], rtol=1e-6)


def test_conditioning_guard_follows_the_route(problem):
    """The default guard is what the flow's solve resolves: 1e7 through the Gram, 1e10 through a
    factorisation of D (QR, SVD, and the homotopy's SVD)."""
    assert fl.AdaptedFlow("cholesky").default_max_condition(problem) == 1e7
    assert fl.AdaptedFlow("qr").default_max_condition(problem) == 1e10
    assert fl.HomotopyFlow(alpha=0.5).default_max_condition(problem) == 1e10
    assert fl.HomotopyFlow(alpha=0.0).default_max_condition(problem) is None
    assert fl.InterpolationFlow(solver="svd").default_max_condition(problem) == 1e10
    assert fl.InterpolationFlow(solver="cholesky").default_max_condition(problem) == 1e7
    assert fl.GradientFlow().default_max_condition(problem) is None


def test_one_options_object_feeds_both_integrators(problem):
    opts = fl.IntegratorOptions(t1=30.0, rtol=1e-10, atol=1e-10, cost_target_relative=1e-9,
                                num_saves=11)
    a = fl.simulate(problem, fl.AdaptedFlow(), options=opts)
    b = fl.simulate(problem, fl.AdaptedFlow(), t1=30.0, rtol=1e-10, atol=1e-10,
                    cost_target_relative=1e-9, num_saves=11)
    assert a.stop_reason == b.stop_reason == "cost_target"
    np.testing.assert_array_equal(np.asarray(a.cost), np.asarray(b.cost))
    # keywords update the object
    c = fl.simulate(problem, fl.AdaptedFlow(), options=opts, cost_target_relative=1e-3)
    assert float(c.cost_final / c.cost0) == pytest.approx(1e-3, rel=1e-6)
    e = fl.euler_steps(problem, fl.AdaptedFlow(), options=opts.build(opts, step_size=0.5))
    ratios = np.asarray(e.cost)[1:6] / np.asarray(e.cost)[:5]
    np.testing.assert_allclose(ratios[-1], (1 - 0.5 * problem.kappa) ** 2, rtol=1e-2)
