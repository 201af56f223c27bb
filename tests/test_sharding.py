"""Sharding the seed axis over devices gives the unsharded results; compiled solves are reused.
Sharding the data axis (the rows of D, `ShardedGram`) gives the unsharded Gram, Dᵀ and velocity.

The multi-device checks run in subprocesses: XLA_FLAGS=--xla_force_host_platform_device_count=4
must be set before JAX initialises, which in this process it already has. The seed check
compiles four solves (~35 s on 2 cores), the data-axis check a few small Grams and solves."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowlab as fl
from flowlab.devices import pad_batch, padded_size, resolve_shard

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, jax.random as jr, numpy as np
    import flowlab as fl

    assert jax.device_count() == 4, jax.devices()
    model = fl.MLP(2, 1, [8], "tanh", key=jr.key(0))
    x = jr.normal(jr.key(1), (4, 2))
    p = fl.LeastSquaresProblem(model, fl.Dataset(x, jnp.sin(x[:, :1])))
    theta0 = p.theta0[None, :] + 0.1 * jr.normal(jr.key(2), (3, p.num_params))  # 3 seeds -> padded to 4
    flow = fl.AdaptedFlow()
    kw = dict(t1=2.0, num_saves=5, diagnostics=False)
    ref = fl.simulate(p, flow, theta0, **kw)
    again = fl.simulate(p, flow, theta0 + 0.01, **kw)  # same shapes: compiled once
    sh = fl.simulate(p, flow, theta0, shard=True, **kw)
    auto = fl.simulate(p, flow, theta0, shard="auto", **kw)
    eref = fl.euler_steps(p, flow, theta0, num_steps=4, diagnostics=False)
    esh = fl.euler_steps(p, flow, theta0, num_steps=4, diagnostics=False, shard=True)

    def diff(a, b):
        out = 0.0
        for name in ("cost", "outputs", "theta_final", "t_final", "cost_final"):
            x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
            assert x.shape == y.shape, (name, x.shape, y.shape)
            ok = np.isfinite(y)
            assert np.array_equal(ok, np.isfinite(x)), name
            out = max(out, float(np.max(np.abs(x[ok] - y[ok]) / (1 + np.abs(y[ok])))))
        return out

    print(json.dumps({
        "devices": jax.device_count(),
        "shape": list(np.asarray(sh.cost).shape),
        "sim": diff(sh, ref), "auto": diff(auto, ref), "euler": diff(esh, eref),
        "codes": [np.asarray(sh.stop_code).tolist(), np.asarray(ref.stop_code).tolist(),
                  np.asarray(esh.stop_code).tolist(), np.asarray(eref.stop_code).tolist()],
        "steps": [np.asarray(sh.num_steps).tolist(), np.asarray(ref.num_steps).tolist()],
        "compile": [ref.compile_time, again.compile_time, sh.compile_time, auto.compile_time],
        "shard_spec": str(fl.shard_batch(np.asarray(theta0)).sharding.spec),
    }))
    """
)


def _run_on_4_devices(script):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sharded_run():
    return _run_on_4_devices(SCRIPT)


def test_sharded_equals_unsharded(sharded_run):
    r = sharded_run
    assert r["devices"] == 4
    assert r["shape"] == [3, 5]  # padding stripped
    assert r["sim"] < 1e-12 and r["auto"] < 1e-12 and r["euler"] < 1e-12, r
    assert r["codes"][0] == r["codes"][1] and r["codes"][2] == r["codes"][3]
    assert r["steps"][0] == r["steps"][1]
    assert "seeds" in r["shard_spec"]


def test_compiled_solve_reused(sharded_run):
    ref, again, sharded, auto = sharded_run["compile"]
    assert ref > 0 and again == 0.0  # equal shapes: the cached executable
    assert sharded > 0  # a sharded batch is a different executable...
    assert auto == 0.0  # ...and 'auto' (4 devices, 3 seeds) reuses it


def test_padding_helpers():
    assert padded_size(3, 4) == 4 and padded_size(8, 4) == 8 and padded_size(1, 1) == 1
    b = np.arange(6.0).reshape(3, 2)
    padded = pad_batch(b, 4)
    assert padded.shape == (4, 2)
    np.testing.assert_array_equal(padded[:3], b)
    np.testing.assert_array_equal(padded[3], b[-1])  # a valid, finite member
    assert resolve_shard(True, 1) and not resolve_shard(False, 8)
    with pytest.raises(ValueError, match="shard"):
        resolve_shard("yes", 4)


# --- the data axis: rows of D over devices (ShardedGram) ------------------------------------------

DATA_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, jax.random as jr, numpy as np
    import flowlab as fl

    assert jax.device_count() == 4, jax.devices()

    def rel(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    def problem(model, n, q):
        x = jr.normal(jr.key(1), (n, 16))
        return fl.LeastSquaresProblem(model, fl.Dataset(x, jnp.sin(x[:, :q]) + x[:, 1:q + 1]))

    def velocity(gram):
        flow = fl.AdaptedFlow(fl.CholeskySolver(gram=gram))
        return jax.jit(lambda prob, th: flow.velocity(prob, th))

    def shards(a):
        return [[list(s.data.shape), str(s.device), s.index[0].start]
                for s in sorted(a.addressable_shards, key=lambda s: s.device.id)]

    out = {}
    cases = {  # route: (model, N, Q, unsharded reference, sharded strategy)
        "layerwise": (fl.MLP(16, 2, (32, 32), "tanh", key=jr.key(0)), 16, 2,
                      fl.LayerwiseGram(), fl.ShardedGram()),
        "rows": (fl.ResidualMLP(16, 1, width=24, depth=1, key=jr.key(0)), 16, 1,
                 fl.BlockedGram(), fl.ShardedGram(fl.BlockedGram())),
    }
    for name, (model, n, q, ref_gram, sgram) in cases.items():
        p = problem(model, n, q)
        placed = sgram.place(p)
        th = p.theta0
        g0, t0 = ref_gram(p, th)
        g1, t1 = sgram(placed, th)
        w = jr.normal(jr.key(3), (n * q,))
        v0 = velocity(ref_gram)(p, th)
        v1 = velocity(sgram)(placed, th)
        ths = th + 0.01 * jr.normal(jr.key(4), (3, th.shape[0]))  # a vmapped batch of seeds
        vb0 = jax.vmap(lambda t: fl.AdaptedFlow(fl.CholeskySolver(gram=ref_gram)).velocity(p, t))(ths)
        vb1 = jax.vmap(lambda t: fl.AdaptedFlow(fl.CholeskySolver(gram=sgram)).velocity(placed, t))(ths)
        out[name] = {
            "route": sgram.route(p), "gram": rel(g1, g0), "transpose": rel(t1(w), t0(w)),
            "velocity": rel(v1, v0), "vmap_velocity": rel(vb1, vb0),
            "gram_spec": list(g1.sharding.spec), "gram_shards": shards(g1),
            "input_spec": list(placed.inputs.sharding.spec), "input_shards": shards(placed.inputs),
        }

    # Euler steps of the adapted flow, sharded Gram against the default
    model, n, q, ref_gram, sgram = cases["layerwise"]
    p = problem(model, n, q)
    e0 = fl.euler_steps(p, fl.AdaptedFlow(fl.CholeskySolver()), p.theta0, num_steps=2,
                        diagnostics=False)
    e1 = fl.euler_steps(sgram.place(p), fl.AdaptedFlow(fl.CholeskySolver(gram=sgram)),
                        p.theta0, num_steps=2, diagnostics=False)
    out["euler"] = {"cost": rel(e1.cost, e0.cost), "theta": rel(e1.theta_final, e0.theta_final)}

    # N = 18 over 4 devices: refused; over 2 devices (num_devices=2): fine
    p18 = problem(fl.MLP(16, 1, (32,), "tanh", key=jr.key(0)), 18, 1)
    try:
        fl.ShardedGram()(p18, p18.theta0)
        out["indivisible"] = None
    except ValueError as e:
        out["indivisible"] = str(e)
    g2, _ = fl.ShardedGram(num_devices=2)(p18, p18.theta0)
    out["two_devices"] = {"gram": rel(g2, fl.LayerwiseGram()(p18, p18.theta0)[0]),
                          "shards": len({s.device for s in g2.addressable_shards})}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def data_sharded_run():
    return _run_on_4_devices(DATA_SCRIPT)


@pytest.mark.parametrize("route", ["layerwise", "rows"])
def test_sharded_gram_equals_unsharded(data_sharded_run, route):
    r = data_sharded_run[route]
    assert r["route"] == route
    assert r["gram"] < 1e-12 and r["transpose"] < 1e-12, r
    assert r["velocity"] < 1e-10 and r["vmap_velocity"] < 1e-10, r


@pytest.mark.parametrize("route", ["layerwise", "rows"])
def test_sharded_gram_is_distributed(data_sharded_run, route):
    r = data_sharded_run[route]
    qn, n = (32, 16) if route == "layerwise" else (16, 16)
    assert r["gram_spec"] == ["data", None], r["gram_spec"]
    # one row block of Θ on each of the 4 devices, in order: device k holds rows k·QN/4 ...
    assert [s[0] for s in r["gram_shards"]] == [[qn // 4, qn]] * 4
    assert len({s[1] for s in r["gram_shards"]}) == 4
    assert [s[2] for s in r["gram_shards"]] == [k * qn // 4 for k in range(4)]
    assert r["input_spec"] == ["data"]
    assert [s[0] for s in r["input_shards"]] == [[n // 4, 16]] * 4
    assert len({s[1] for s in r["input_shards"]}) == 4


def test_sharded_gram_in_euler_steps(data_sharded_run):
    r = data_sharded_run["euler"]
    assert r["cost"] < 1e-10 and r["theta"] < 1e-10, r


def test_sharded_gram_needs_divisible_n(data_sharded_run):
    msg = data_sharded_run["indivisible"]
    assert msg is not None and "N = 18" in msg and "multiple of 4" in msg, msg
    r = data_sharded_run["two_devices"]
    assert r["gram"] < 1e-12 and r["shards"] == 2, r


def test_sharded_gram_one_device():
    """In this (one-device) process the sharded Gram is the unsharded one; wrong uses refused."""
    import jax.numpy as jnp
    import jax.random as jr

    x = jr.normal(jr.key(1), (8, 3))
    p = fl.LeastSquaresProblem(fl.MLP(3, 1, (16,), "tanh", key=jr.key(0)),
                               fl.Dataset(x, jnp.sin(x[:, :1])))
    g0, t0 = fl.LayerwiseGram()(p, p.theta0)
    g1, t1 = fl.ShardedGram()(p, p.theta0)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(t1(jnp.arange(8.0)), t0(jnp.arange(8.0)), rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match="another ShardedGram"):
        fl.ShardedGram(fl.ShardedGram())
    with pytest.raises(ValueError, match="num_devices"):
        fl.ShardedGram(num_devices=0)
    with pytest.raises(ValueError, match="only"):
        fl.ShardedGram(num_devices=64).mesh()
    residual = fl.ResidualProblem(fl.MLP(1, 1, (8,), "tanh", key=jr.key(0)),
                                  lambda m: jnp.ravel(m(jnp.ones(1))))
    with pytest.raises(TypeError, match="LeastSquaresProblem"):
        fl.ShardedGram()(residual, residual.theta0)
    with pytest.raises(ValueError, match="BlockedGram"):
        fl.ShardedGram(fl.LayerwiseGram()).route(
            fl.LeastSquaresProblem(fl.ResidualMLP(3, 1, width=8, depth=1, key=jr.key(0)),
                                   fl.Dataset(x, jnp.sin(x[:, :1]))))
