"""What the benchmarks share: the machine description, timing, compiling, memory and flop counts of
compiled executables, a matmul reference rate and the MLP fit of the README.

Importing this module changes no JAX setting: each benchmark's `main()` sets its precision
(`jax_enable_x64`) at its start, before it builds arrays. No benchmark imports another; what two
of them need lives here.
"""

import math
import os
import platform
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import flowlab as fl

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine(provenance: bool = False) -> dict:
    """The machine now: cpu, cores, platform, python and jax versions, devices, backend, the
    load average and the date; with `provenance`, also scipy's version and the checkout's git
    commit (and whether it has uncommitted changes)."""
    out = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
        "loadavg_start": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if provenance:
        import scipy

        def git(*a):
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  check=False).stdout.strip()

        out.update({"scipy": scipy.__version__, "git_commit": git("rev-parse", "HEAD"),
                    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))})
    return out


def timeit(fn, *args, min_total=1.0, max_reps=20):
    """(min, median) seconds of fn(*args) after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < max_reps and (sum(times) < min_total or len(times) < 3):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
        if times[-1] > 5.0:
            break
    return min(times), float(np.median(times))


def compile_fn(fn, *args):
    """(the compiled executable of jax.jit(fn) at args, the seconds it took)."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def memory_bytes(compiled) -> int | None:
    """Peak bytes of a compiled executable (arguments + outputs + temporaries − aliased), or
    None where the backend does not report them."""
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 (best effort: not every backend reports it)
        return None


def fmt_bytes(b):
    """Bytes as MiB with one decimal ('–' for None)."""
    return "–" if b is None else f"{b / 2**20:.1f}"


def xla_flops(compiled) -> float | None:
    """XLA's flop count of a compiled executable, or None where it reports none."""
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops", math.nan))
    except Exception:  # noqa: BLE001 (best effort: not every backend reports it)
        return None


def matmul_rate(n=1024) -> float:
    """FLOP/s of an n×n matmul (in JAX's default float: float64 under x64) on this machine
    now."""
    a = jr.normal(jr.key(0), (n, n))
    b = jr.normal(jr.key(1), (n, n))
    f, _ = compile_fn(lambda x, y: x @ y, a, b)
    best, _ = timeit(f, a, b)
    return 2 * n**3 / best


def mlp_problem(width, n, depth=2, activation="tanh", seed=0, in_size=2):
    """The README's fit: a tanh MLP in_size → width × depth → 1 on n points of
    `smooth_regression` (data key `seed`, network key `seed + 1`); width 256, n = 64 is the
    fit of benchmarks/run.py (fit) and benchmarks/fair_fit.py."""
    data = fl.smooth_regression(jr.key(seed), n, in_size=in_size)
    model = fl.MLP(in_size, 1, [width] * depth, activation, key=jr.key(seed + 1))
    return fl.LeastSquaresProblem(model, data)


def train_test_losses(problem, test, thetas):
    """(training cost, test cost) at each θ of `thetas`, one compiled vmap."""
    f = jax.jit(jax.vmap(lambda th: jnp.stack([problem.cost(th), test.cost(th)])))
    out = np.asarray(f(jnp.asarray(thetas)))
    return out[:, 0], out[:, 1]


def first_at_levels(levels, seconds, train, test_loss, c0, c_min) -> dict:
    """{ε: (the first time C − C_min ≤ ε·(C(0) − C_min), the test loss there)} for each ε of
    `levels` (NaN, NaN where never); (1 + 1e-6) because an ODE stops at a level by root
    finding, to its tolerance."""
    rows = {}
    for eps in levels:
        hit = np.nonzero(train - c_min <= (1 + 1e-6) * eps * (c0 - c_min))[0]
        rows[eps] = ((float(seconds[hit[0]]), float(test_loss[hit[0]])) if hit.size
                     else (float("nan"), float("nan")))
    return rows
