"""Defaults against the best manual settings (#19), float64:

1. PINNs with rank-deficient J (a hand-written 1-D Poisson on equinox.nn.MLP and the three of
   flowlab.pde): `euler_steps(problem, AdaptedFlow())` with no settings against the truncated
   SVD at rcond 1e-7, 1e-8, 1e-10, 1e-12 with ENGD's grid line search (the best of which is
   "the best manual setting"); the default `simulate` to C ≤ 1e-8·C(0).
2. Diagnostics: default `euler_steps` and `simulate` against `diagnostics=False` at N = 64 and
   N = 4096 (tanh 16 → 512 → 512 → 1).
3. Traces and compile: default `simulate` and `euler_steps` on tanh 2 → 32 → 32 → 1, N = 16:
   how often the velocity and the Gram are traced, first call and warm call.

    python benchmarks/defaults.py [--quick] [--part pinn,diagnostics,traces]

Writes benchmarks/results/defaults.json and .md. Contenders alternate in one process.
"""

import argparse
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from _common import machine

import flowlab as fl
from flowlab import pde

ROOT = Path(__file__).resolve().parents[1]
MANUAL_RCONDS = (1e-7, 1e-8, 1e-10, 1e-12)


def hand_poisson(width=32, n=48):
    net = eqx.nn.MLP(1, 1, width, 2, activation=jnp.tanh, key=jr.key(0))
    xi = jnp.linspace(0, 1, n + 2)[1:-1]

    def residual(model):
        u = lambda x: model(jnp.stack([x]))[0]  # noqa: E731
        uxx = jax.vmap(jax.grad(jax.grad(u)))(xi)
        r_in = (-uxx - jnp.pi**2 * jnp.sin(jnp.pi * xi)) / jnp.sqrt(n)
        return jnp.concatenate([r_in, jnp.stack([u(0.0), u(1.0)]) / jnp.sqrt(2.0)])

    p = fl.ResidualProblem(net, residual)
    grid = jnp.linspace(0, 1, 1001)

    def error(theta):
        m = p.model(theta)
        got = jax.vmap(lambda x: m(jnp.stack([x]))[0])(grid)
        exact = jnp.sin(jnp.pi * grid)
        return float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact))

    return p, error


def library(name):
    dim = {"poisson_1d": 1, "poisson_2d": 2, "burgers_1d": 1}[name]
    kw = {"poisson_2d": {"num_interior": 30, "num_boundary": 30},
          "poisson_1d": {"num_interior": 64}, "burgers_1d": {"num_interior": 200, "nu": 0.1}}[name]
    net = fl.MLP(dim, 1, [64] if name == "poisson_2d" else [32], "tanh", key=jr.key(0))
    p = getattr(pde, name)(net, **kw)
    return p, lambda th: float(p.relative_l2_error(th))


def _steps(p, error, flow, **kw):
    t = time.perf_counter()
    tr = fl.euler_steps(p, flow, num_steps=300, cost_target_relative=1e-24, **kw)
    return {"error": error(tr.theta_final), "steps": int(tr.num_steps), "stop": tr.stop_reason,
            "seconds": time.perf_counter() - t, "compile": float(tr.compile_time),
            "cost_ratio": float(tr.cost_final / tr.cost0)}


def bench_pinn(quick):
    problems = {"hand_poisson_eqx": hand_poisson}
    if not quick:
        problems.update({n: (lambda n=n: library(n)) for n in
                         ("poisson_1d", "poisson_2d", "burgers_1d")})
    out = {}
    for name, build in problems.items():
        p, error = build()
        row = {"K": p.num_params, "P": p.num_outputs,
               "default": _steps(p, error, fl.AdaptedFlow())}
        for rcond in MANUAL_RCONDS:
            row[f"svd {rcond:g} grid30"] = _steps(p, error, fl.AdaptedFlow("svd", rcond=rcond),
                                                   grid_search=30, max_condition=None)
        eps = 1e-8
        t1 = 1.2 * jnp.log(1 / eps) / (2 * p.kappa)
        t = time.perf_counter()
        tr = fl.simulate(p, fl.AdaptedFlow(), t1=float(t1), cost_target_relative=eps,
                         diagnostics=False)
        row["ode default"] = {"stop": tr.stop_reason, "s": float(tr.t_final),
                              "T_eps": float(jnp.log(1 / eps) / (2 * p.kappa)),
                              "steps": int(tr.num_steps), "error": error(tr.theta_final),
                              "seconds": time.perf_counter() - t,
                              "compile": float(tr.compile_time)}
        out[name] = row
        print(name, json.dumps(row, default=float), flush=True)
    return out


def _mlp(n, widths, in_size, seed=0):
    x = jr.normal(jr.key(seed), (n, in_size))
    y = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:2])
    return fl.LeastSquaresProblem(fl.MLP(in_size, 1, widths, "tanh", key=jr.key(seed + 1)),
                                  fl.Dataset(x, y))


def bench_diagnostics(quick):
    out = {}
    sizes = [(64, [32, 32], 2)] if quick else [(64, [32, 32], 2), (4096, [512, 512], 16)]
    for n, widths, m in sizes:
        p = _mlp(n, widths, m)
        row = {"K": p.num_params}
        for diag in (True, False):  # alternate within one process
            t = time.perf_counter()
            tr = fl.euler_steps(p, fl.AdaptedFlow(), cost_target_relative=1e-10, diagnostics=diag)
            row[f"steps diagnostics={diag}"] = {
                "total": time.perf_counter() - t, "compile": float(tr.compile_time),
                "run": float(tr.wall_time), "steps": int(tr.num_steps), "stop": tr.stop_reason}
        if n <= 64:
            for diag in (True, False):
                t = time.perf_counter()
                tr = fl.simulate(p, fl.AdaptedFlow(), t1=float(1.1 * jnp.log(1e10) / (2 * p.kappa)),
                                 cost_target_relative=1e-10, diagnostics=diag)
                row[f"ode diagnostics={diag}"] = {
                    "total": time.perf_counter() - t, "compile": float(tr.compile_time),
                    "run": float(tr.wall_time), "steps": int(tr.num_steps),
                    "stop": tr.stop_reason}
        out[f"N={n}"] = row
        print(n, json.dumps(row), flush=True)
    return out


def bench_traces():
    p = _mlp(16, [32, 32], 2)
    counts = {"velocity": 0, "gram": 0}
    velocity = fl.AdaptedFlow.velocity_details
    gram = fl.linalg.LayerwiseGram.__call__

    def counted_velocity(self, *a, **k):
        counts["velocity"] += 1
        return velocity(self, *a, **k)

    def counted_gram(self, *a, **k):
        counts["gram"] += 1
        return gram(self, *a, **k)

    fl.AdaptedFlow.velocity_details = counted_velocity
    fl.linalg.LayerwiseGram.__call__ = counted_gram
    out = {}
    try:
        for name, run in (("simulate", lambda: fl.simulate(p, fl.AdaptedFlow())),
                          ("euler_steps", lambda: fl.euler_steps(p, fl.AdaptedFlow()))):
            counts.update(velocity=0, gram=0)
            t = time.perf_counter()
            jax.block_until_ready(run().cost_final)
            first = time.perf_counter() - t
            traced = dict(counts)
            t = time.perf_counter()
            jax.block_until_ready(run().cost_final)
            warm = time.perf_counter() - t
            out[name] = {"velocity traces": traced["velocity"], "gram traces": traced["gram"],
                         "first call": first, "warm call": warm, "first − warm": first - warm}
    finally:
        fl.AdaptedFlow.velocity_details = velocity
        fl.linalg.LayerwiseGram.__call__ = gram
    print(json.dumps(out), flush=True)
    return out


def markdown(res) -> str:
    m = res["machine"]
    lines = [f"Machine: {m.get('cpu')} ({m.get('cores')} cores), jax {m.get('jax')}, "
             f"{res['date']}, commit {m.get('git_commit', '?')}; load before {res['load']}.",
             "Command: `python benchmarks/defaults.py`.", ""]
    if "pinn" in res:
        lines += ["| problem | K | P | route | rel L2 | steps | stop | s |",
                  "|---|---:|---:|---|---:|---:|---|---:|"]
        for name, row in res["pinn"].items():
            for route, r in row.items():
                if not isinstance(r, dict):
                    continue
                lines.append(f"| {name} | {row['K']} | {row['P']} | {route} | {r['error']:.2e} | "
                             f"{r['steps']} | {r['stop']} | {r['seconds']:.1f} |")
        lines.append("")
    if "diagnostics" in res:
        lines += ["| N | K | run | total s | compile s | run s | steps |",
                  "|---:|---:|---|---:|---:|---:|---:|"]
        for n, row in res["diagnostics"].items():
            for k, r in row.items():
                if isinstance(r, dict):
                    lines.append(f"| {n} | {row['K']} | {k} | {r['total']:.2f} | "
                                 f"{r['compile']:.2f} | {r['run']:.3f} | {r['steps']} |")
        lines.append("")
    if "traces" in res:
        lines += ["| call | velocity traces | Gram traces | first s | warm s | first − warm s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, r in res["traces"].items():
            lines.append(f"| {k} | {r['velocity traces']} | {r['gram traces']} | "
                         f"{r['first call']:.2f} | {r['warm call']:.3f} | {r['first − warm']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one PINN, N = 64 only")
    ap.add_argument("--part", default="pinn,diagnostics,traces")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "defaults"))
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    parts = args.part.split(",")
    res = {"machine": machine(provenance=True), "date": time.strftime("%Y-%m-%d"),
           "load": os.getloadavg()[0]}
    if "traces" in parts:  # first: nothing compiled yet
        res["traces"] = bench_traces()
    if "diagnostics" in parts:
        res["diagnostics"] = bench_diagnostics(args.quick)
    if "pinn" in parts:
        res["pinn"] = bench_pinn(args.quick)
    res["load_after"] = os.getloadavg()[0]
    Path(args.out + ".json").write_text(json.dumps(res, indent=1, default=float))
    Path(args.out + ".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
