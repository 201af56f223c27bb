"""Blocked Gram against plain jacrev on a non-MLP model with K ≈ 10⁶ (time and peak memory).

    python benchmarks/gram.py [--ns 64,256] [--width 700] [--block 16]

Model: flowlab.ResidualMLP(64 → width, one pre-norm residual block with layer norm → 1), float64,
N random inputs, Q = 1. Strategies for Θ = D Dᵀ (and w ↦ Dᵀw):
- blocked: `BlockedGram(block)`: rows of D `block` examples at a time (per-example reverse
  passes), Θ[block, :] by vmapped jvps, accumulated; holds block·K of D;
- rows: `BlockedGram()` with the whole of D in one block (per-example reverse passes, then
  D Dᵀ by one matmul; the route `BlockedGram` takes when D fits its byte budget);
- jacrev: `jax.jacrev(problem.outputs)` (QN cotangents through the whole batch), then D Dᵀ.
Wall time after warm-up (min of ≥ 3 calls); peak memory from the compiled executable's
`memory_analysis()` (arguments + outputs + temporaries). Results: benchmarks/results/gram.{json,md}.
"""

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
from _common import fmt_bytes, machine, memory_bytes, timeit

import flowlab as fl

ROOT = Path(__file__).resolve().parent


def problem(n, width):
    net = fl.ResidualMLP(64, 1, width=width, depth=1, key=jr.key(0))
    x = jr.normal(jr.key(1), (n, 64))
    return fl.LeastSquaresProblem(net, fl.Dataset(x, jnp.sin(x[:, :1])))


def strategies(block):
    def blocked(p, th, w):
        g, t = fl.BlockedGram(block)(p, th)
        return g, t(w)

    def rows(p, th, w):
        d = p.jacobian(th, "rev")
        return d @ d.T, d.T @ w

    def jacrev(p, th, w):
        d = jax.jacrev(p.outputs)(th)
        return d @ d.T, d.T @ w

    return {"blocked": blocked, "rows": rows, "jacrev": jacrev}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="64,256")
    ap.add_argument("--width", type=int, default=700)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--skip", default="", help="comma list of strategy@N to skip, e.g. jacrev@256")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # before any array is built
    skip = set(filter(None, args.skip.split(",")))
    res = {"machine": machine(), "rows": []}
    for n in (int(v) for v in args.ns.split(",")):
        p = problem(n, args.width)
        th = p.theta0
        w = jr.normal(jr.key(2), (p.num_outputs,))
        ref = None
        for name, fn in strategies(args.block).items():
            if f"{name}@{n}" in skip:
                continue
            t0 = time.perf_counter()
            compiled = jax.jit(lambda th, w, fn=fn, p=p: fn(p, th, w)).lower(th, w).compile()
            compile_s = time.perf_counter() - t0
            mem = memory_bytes(compiled)
            best, med = timeit(compiled, th, w, min_total=2.0, max_reps=5)
            g, dtw = compiled(th, w)
            if ref is None:
                ref = (g, dtw)
            err = float(jnp.max(jnp.abs(g - ref[0])) / jnp.max(jnp.abs(ref[0])))
            row = {"N": n, "K": p.num_params, "strategy": name,
                   "block": args.block if name == "blocked" else None,
                   "seconds": best, "median_seconds": med, "compile_seconds": compile_s,
                   "peak_bytes": mem, "D_bytes": n * p.num_params * 8, "rel_diff_gram": err,
                   "load": os.getloadavg()[0]}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gram.json").write_text(json.dumps(res, indent=1, default=float))
    lines = ["| N | K | strategy | time (s) | peak memory (MiB) | D itself (MiB) | "
             "rel. diff of Θ | compile (s) | load |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        label = r["strategy"] + (f" (b = {r['block']})" if r["block"] else "")
        lines.append(f"| {r['N']} | {r['K']} | {label} | {r['seconds']:.2f} | "
                     f"{fmt_bytes(r['peak_bytes'])} | {fmt_bytes(r['D_bytes'])} | "
                     f"{r['rel_diff_gram']:.1e} | {r['compile_seconds']:.1f} | {r['load']:.1f} |")
    (out / "gram.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
