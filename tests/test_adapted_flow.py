"""The paper's claims along the overparametrised adapted flow (MATH.md §3), in float64."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl
from flowlab import theory

KAPPA = 0.5
T1 = 10.0  # κ·t1 = 5: C falls by e^{-10}, well above the float floor
SEEDS = 3

# (width, depth, Q): widths 8/32/128, depths 1/2/3, Q = 1 and 3; K ≥ QN in all.
CASES = [(8, 1, 1), (32, 2, 1), (128, 1, 1), (32, 2, 3), (16, 3, 3)]


def make_problem(width, depth, q, n=10, d=3, activation="tanh", seed=0):
    data = fl.random_labels(jr.key(seed), n, d, q)
    net = fl.MLP(d, q, [width] * depth, activation, key=jr.key(seed + 1))
    return fl.LeastSquaresProblem(net, data, kappa=KAPPA)


def seed_batch(problem, width, depth, q, d=3, seeds=SEEDS):
    return jnp.stack(
        [problem.flatten(fl.MLP(d, q, [width] * depth, key=jr.key(100 + s))) for s in range(seeds)]
    )


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "w%d-d%d-q%d" % c)
def adapted_run(request):
    width, depth, q = request.param
    problem = make_problem(width, depth, q)
    assert problem.num_params >= problem.num_outputs
    traj = fl.simulate(
        problem, fl.AdaptedFlow(), seed_batch(problem, width, depth, q), t1=T1, num_saves=21,
        rtol=1e-11, atol=1e-11,
    )
    return problem, traj


def test_cost_decays_at_uniform_rate(adapted_run):
    """|log(C(s)/C(0)) + 2κs| ≤ 1e-5 at every saved time, every seed."""
    problem, traj = adapted_run
    assert traj.stop_reason == ["t1_reached"] * SEEDS
    log_ratio = np.log(np.asarray(traj.cost) / np.asarray(traj.cost0)[:, None])
    assert np.max(np.abs(log_ratio + 2 * KAPPA * np.asarray(traj.ts))) <= 1e-5


def test_outputs_follow_straight_segment(adapted_run):
    """|X(s) − Y − e^{−κs}(X(0) − Y)|∞ ≤ 1e-6."""
    problem, traj = adapted_run
    for i in range(SEEDS):
        tr = traj.seed(i)
        exact = theory.predicted_outputs(tr.outputs0, problem.targets, KAPPA, tr.ts)
        assert np.max(np.abs(np.asarray(tr.outputs) - exact)) <= 1e-6


def test_compare_and_rate_fit(adapted_run):
    _, traj = adapted_run
    report = theory.compare(traj.seed(0))
    assert report["rate_relative_error"] <= 1e-4
    assert report["max_log_cost_error"] <= 1e-5
    # rank stays full along the orbit: the premise of the theorem
    assert np.all(np.asarray(traj.rank) == traj.outputs.shape[-1])


def test_stop_at_epsilon_matches_a_priori_time():
    """The cost event fires within 1e-3 (relative) of T_ε = ln(C(0)/ε)/(2κ)."""
    problem = make_problem(32, 2, 1)
    eps_rel = 1e-8
    traj = fl.simulate(
        problem, fl.AdaptedFlow(), seed_batch(problem, 32, 2, 1), t1=60.0, num_saves=11,
        rtol=1e-11, atol=1e-11, cost_target_relative=eps_rel,
    )
    assert traj.stop_reason == ["cost_target"] * SEEDS
    for i in range(SEEDS):
        c0 = float(traj.cost0[i])
        t_eps = theory.stopping_time(c0, eps_rel * c0, KAPPA)
        assert abs(float(traj.t_final[i]) - t_eps) <= 1e-3 * t_eps
        assert float(traj.cost_final[i]) == pytest.approx(eps_rel * c0, rel=1e-3)
    # saves after the stop are marked invalid and hold +inf, never NaN
    assert not np.any(np.isnan(np.asarray(traj.cost)))
    assert np.all(np.isinf(np.asarray(traj.cost)[~np.asarray(traj.valid)]))
    assert np.all(np.asarray(traj.ts)[np.asarray(traj.valid)] <= np.asarray(traj.t_final)[:, None])


def test_solve_under_jit_and_vmap_matches_simulate():
    problem = make_problem(16, 1, 1)
    thetas = seed_batch(problem, 16, 1, 1)
    flow = fl.AdaptedFlow()
    kw = dict(ts=np.linspace(0, 4.0, 5), rtol=1e-10, atol=1e-10, diagnostics=False)
    batched = jax.jit(jax.vmap(lambda th: fl.solve(problem, flow, th, 4.0, **kw)))(thetas)
    ref = fl.simulate(problem, flow, thetas, t1=4.0, **kw)
    np.testing.assert_allclose(batched.cost, ref.cost, rtol=1e-12)
    np.testing.assert_allclose(batched.theta_final, ref.theta_final, rtol=1e-12)
    assert ref.compile_time > 0 and ref.wall_time > 0
    again = fl.simulate(problem, flow, thetas, t1=4.0, **kw)
    assert again.compile_time == 0.0  # same shapes and switches: no recompilation
