"""HomotopyFlow V_α = −V f_α(Σ) Uᵀ∇_X C between the standard and the adapted field (MATH §5)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl

T1 = 10.0


def make_problem():  # as in tests/test_geometry.py (shared compiled solve)
    return fl.LeastSquaresProblem(fl.MLP(2, 1, (8,), key=jr.PRNGKey(1)),
                                  fl.teacher(jr.PRNGKey(0), 6, 2), kappa=1.0)


@eqx.filter_jit
def velocity(flow, pb, th):
    return flow.velocity(pb, th)


def test_endpoints_and_linearity_of_the_family():
    pb = make_problem()
    th = pb.theta0 + 0.1 * jr.normal(jr.PRNGKey(2), pb.theta0.shape)
    v0 = velocity(fl.HomotopyFlow(alpha=0.0), pb, th)
    v1 = velocity(fl.HomotopyFlow(alpha=1.0), pb, th)
    g, a = velocity(fl.GradientFlow(), pb, th), velocity(fl.AdaptedFlow(), pb, th)
    np.testing.assert_allclose(v0, g, atol=1e-12 * float(jnp.max(jnp.abs(g))))
    np.testing.assert_allclose(v1, a, atol=1e-12 * float(jnp.max(jnp.abs(a))))
    for alpha in (0.25, 0.6):
        np.testing.assert_allclose(velocity(fl.HomotopyFlow(alpha=alpha), pb, th),
                                   (1 - alpha) * v0 + alpha * v1, atol=1e-12)
    assert fl.flows.FLOWS["homotopy"] is fl.HomotopyFlow
    assert not fl.HomotopyFlow(alpha=0.0).inverts_jacobian
    assert fl.HomotopyFlow(alpha=0.5).inverts_jacobian
    with pytest.raises(ValueError, match="alpha"):
        fl.HomotopyFlow(alpha=1.5)


@pytest.fixture(scope="module")
def rank_deficient():
    """X = Aθ with A (4 × 5) of rank 3, so D = A has a zero singular value (and rank < QN)."""
    k1, k2, k3 = jr.split(jr.PRNGKey(7), 3)
    a = jr.normal(k1, (4, 3)) @ jr.normal(k2, (3, 5))
    ds = fl.Dataset(a, jr.normal(k3, (4, 1)))
    pb = fl.LeastSquaresProblem(fl.MLP(5, 1, (), "identity", use_bias=False, key=k1), ds)
    sv = np.linalg.svd(np.asarray(a), compute_uv=False)
    assert sv[-1] < 1e-12 * sv[0]
    theta_star = jnp.linalg.pinv(a) @ ds.targets[:, 0]
    return pb, a, theta_star


FLOWS_TO_CHECK = [fl.HomotopyFlow(alpha=al) for al in (0.0, 0.3, 0.7, 1.0)] + [
    fl.HomotopyFlow(filter=lambda s: 1.0 / (s**2 + 0.1))]


def test_same_zero_set_for_every_member(rank_deficient):
    pb, a, theta_star = rank_deficient
    null = jnp.linalg.svd(a)[2][-1]  # a direction in ker A
    r_star = pb.residual(theta_star)
    assert float(jnp.linalg.norm(r_star)) > 0.1  # an equilibrium with C > 0
    for th in (theta_star, theta_star + 0.7 * null):
        assert float(jnp.linalg.norm(a.T @ pb.residual(th))) < 1e-12  # Dᵀ∇C = 0
        for flow in FLOWS_TO_CHECK:
            assert float(jnp.linalg.norm(velocity(flow, pb, th))) < 1e-12
    # off the zero set (Dᵀ∇C ≠ 0) every member moves
    th = theta_star + 0.3 * a[0]
    assert float(jnp.linalg.norm(a.T @ pb.residual(th))) > 1e-3
    for flow in FLOWS_TO_CHECK:
        assert float(jnp.linalg.norm(velocity(flow, pb, th))) > 1e-4


@pytest.fixture(scope="module")
def homotopy_runs():
    pb = make_problem()
    runs = {al: fl.simulate(pb, fl.HomotopyFlow(alpha=al), t1=T1, num_saves=201, rtol=1e-10,
                            atol=1e-10, extras=fl.SUBRIEMANNIAN_EXTRAS, save_theta=True)
            for al in (0.2, 0.5)}
    return pb, runs


def test_full_rank_rate_bound(homotopy_runs):
    pb, runs = homotopy_runs
    for alpha, tr in runs.items():
        assert tr.stop_reason == "t1_reached"
        assert float(np.min(tr.sigma_min)) > 1e-6  # full row rank along the orbit
        flow = fl.HomotopyFlow(alpha=alpha)
        assert flow.rate_bound(pb) == pytest.approx(2 * alpha * pb.kappa, rel=1e-12)
        bound = float(tr.cost0) * np.exp(-flow.rate_bound(pb) * np.asarray(tr.ts))
        assert np.all(np.asarray(tr.cost) <= bound * (1 + 1e-6))
        rate = fl.theory.fit_decay_rate(tr.ts, tr.cost, floor=1e-25)
        assert rate >= flow.rate_bound(pb)
        # the slowest mode's rate 2κ(α + (1 − α)σ_min²) at the end bounds the late rate
        late = np.asarray(tr.ts) >= T1 / 2
        late_rate = fl.theory.fit_decay_rate(np.asarray(tr.ts)[late], np.asarray(tr.cost)[late],
                                             floor=1e-25)
        assert late_rate >= flow.predicted_rate(pb, tr.theta_final) * (1 - 1e-3)
