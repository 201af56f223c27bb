"""Sharding the seed axis over devices gives the unsharded results; compiled solves are reused.

The multi-device check runs in a subprocess: XLA_FLAGS=--xla_force_host_platform_device_count=4
must be set before JAX initialises, which in this process it already has. It compiles four
solves (~35 s on 2 cores)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
    theta0 = p.theta0 + 0.1 * jr.normal(jr.key(2), (3, p.num_params))  # 3 seeds -> padded to 4
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


@pytest.fixture(scope="module")
def sharded_run():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
