"""Two processes on 127.0.0.1 (jax.distributed, gloo): the sharded Gram's simulate and
euler_steps equal one process's to 1e-10 relative, and a data set that the devices do not
divide is refused by name. Each process is bounded in time and both are killed on failure."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax.random as jr
import numpy as np
import pytest

import flowlab as fl

WORKER = textwrap.dedent("""
    import json, sys
    import flowlab as fl
    info = fl.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.random as jr
    n = int(sys.argv[3])
    data = fl.smooth_regression(jr.key(0), num_points=n, in_size=2)
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [16, 16], "tanh", key=jr.key(1)), data)
    gram = fl.ShardedGram()
    try:
        placed = gram.place(problem)
    except ValueError as e:
        print(json.dumps({"refused": str(e)}), flush=True)
        sys.exit(0)
    flow = fl.AdaptedFlow(fl.CholeskySolver(gram=gram))
    ode = fl.simulate(placed, flow, t1=20.0, num_saves=5, diagnostics=False)
    steps = fl.euler_steps(placed, flow, num_steps=4, diagnostics=False)
    out = {"info": info, "ode": [float(c) for c in ode.cost],
           "steps": [float(c) for c in steps.cost]}
    print(json.dumps(out), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, n):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "FLOWLAB_COMPILATION_CACHE": "off", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(script), address, str(i), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


def test_two_processes_equal_one(tmp_path):
    results = _two_processes(tmp_path, 8)
    assert [r["info"]["num_processes"] for r in results] == [2, 2]
    assert all(r["info"]["devices"] == 2 for r in results)
    data = fl.smooth_regression(jr.key(0), num_points=8, in_size=2)
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [16, 16], "tanh", key=jr.key(1)), data)
    flow = fl.AdaptedFlow(fl.CholeskySolver())
    ode = fl.simulate(problem, flow, t1=20.0, num_saves=5, diagnostics=False)
    steps = fl.euler_steps(problem, flow, num_steps=4, diagnostics=False)
    for r in results:
        np.testing.assert_allclose(r["ode"], np.asarray(ode.cost), rtol=1e-10)
        np.testing.assert_allclose(r["steps"], np.asarray(steps.cost), rtol=1e-10)


def test_a_size_the_processes_do_not_divide_is_refused(tmp_path):
    results = _two_processes(tmp_path, 7)
    for r in results:
        assert "multiple" in r["refused"] and "7" in r["refused"]


def test_initialize_checks_its_process_id():
    with pytest.raises(ValueError, match="process_id"):
        fl.distributed.initialize("127.0.0.1:1", 2, 5)
