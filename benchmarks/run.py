"""flowlab benchmarks: one command, results as JSON and Markdown.

    python benchmarks/run.py [--quick] [--only field,fit,study] [--out benchmarks/results]
        [--dtype float32] [--ns 4096 --widths 512 --strategies layerwise+cholesky]
        [--fit-n 4096 --fit-width 256 --fit-repeats 1] [--tag gpu]

The options after the first line are for the GPU script (benchmarks/gpu.sh); without them the
benchmarks are the ones the README reports (float64, the grids below).

(a) field: one adapted vector-field evaluation θ' = −D⁺∇_X C against width (K) and N for each
    Gram/solve strategy: wall time after warm-up, compile time, peak memory from the compiled
    executable's memory_analysis(), XLA's flop count and the achieved FLOP/s against a plain
    matmul timed in the same run. Combinations whose estimated time (> 60 s) or memory
    (> 4 GiB) is too large are skipped and listed.
(b) fit: time and evaluations to reach C ≤ 1e-10·C(0) on one fixed fit (width 256, N = 64, the
    same initialisation) for the adapted flow (diffrax), discrete adapted steps, the standard
    flow (capped), optax Adam (best lr), optimistix Gauss–Newton / Levenberg–Marquardt and
    scipy least_squares 'trf'.
(c) study: the quickstart CLI end to end, and a seeds-scaling table (1, 4, 16, 64 seeds).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import (
    compile_fn,
    fmt_bytes,
    machine,
    matmul_rate,
    memory_bytes,
    mlp_problem,
    timeit,
    xla_flops,
)

import flowlab as fl
from flowlab import baselines as bl
from flowlab.linalg import CGSolver, CholeskySolver, DenseGram, LayerwiseGram, ShardedGram

GRID: dict = {}  # --widths / --ns / --strategies / --fit-* overrides
MAX_SECONDS = 60.0
MAX_BYTES = 4 * 2**30
ROOT = Path(__file__).resolve().parent


# ---------------------------------------------------------------- (a) field

#: input dimension of the field benchmark: with M = 2 the Gram of N ≥ 256 points is numerically
#: singular (Cholesky fails), so the field benchmark uses M = 16, where Θ stays invertible.
FIELD_IN_SIZE = 16

STRATEGIES = {  # the first is the reference the others are compared with
    "layerwise+cholesky": lambda qn: fl.AdaptedFlow(CholeskySolver(LayerwiseGram())),
    "jacrev+cholesky": lambda qn: fl.AdaptedFlow(CholeskySolver(DenseGram("rev"))),
    "jacfwd+cholesky": lambda qn: fl.AdaptedFlow(CholeskySolver(DenseGram("fwd"))),
    "cg (matrix-free)": lambda qn: fl.AdaptedFlow(CGSolver(rtol=1e-10, atol=1e-14,
                                                           max_steps=min(qn, 500))),
}
#: run only when named in --strategies: the examples split over all devices (ShardedGram).
EXTRA_STRATEGIES = {
    "sharded+cholesky": lambda qn: fl.AdaptedFlow(CholeskySolver(ShardedGram())),
}


def estimate(strategy, k, n, width, rate):
    """(seconds, bytes) rough upper estimates, for skipping; rate in FLOP/s (× 0.25 efficiency)."""
    fwd = 2.0 * n * k
    acts = n * 2 * width * 8  # hidden activations of the N points
    if strategy.startswith("jacfwd"):
        flops, mem = 1.5 * k * fwd, k * acts + n * k * 8
    elif strategy.startswith("jacrev"):
        flops, mem = 3.0 * n * fwd + 2 * n * n * k, 2 * n * k * 8 + n * acts
    elif strategy.startswith(("layerwise", "sharded")):
        flops, mem = 6.0 * fwd + 4 * n * n * width, 8 * (3 * k + n * n + 4 * n * width)
    else:
        flops, mem = 2 * min(n, 500) * 3.0 * fwd, 8 * (6 * k + acts)
    return flops / (0.25 * rate), mem


def bench_field(quick):
    widths = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024, 2048]
    ns = [64, 256] if quick else [64, 256, 1024]
    widths = GRID.get("widths", widths)
    ns = GRID.get("ns", ns)
    rate = matmul_rate()
    print(f"matmul reference: {rate / 1e9:.1f} GFLOP/s ({jnp.zeros(()).dtype}, 1024x1024)",
          flush=True)
    strategies = {**STRATEGIES, **EXTRA_STRATEGIES}
    names = GRID.get("strategies", list(STRATEGIES))
    rows, skipped = [], []
    for n in ns:
        for width in widths:
            p = mlp_problem(width, n, in_size=FIELD_IN_SIZE)
            k, qn = p.num_params, p.num_outputs
            theta = p.theta0
            ref_v = None
            for name in names:
                make = strategies[name]
                est_s, est_b = estimate(name, k, n, width, rate)
                if est_s > GRID.get("max_seconds", MAX_SECONDS) or est_b > MAX_BYTES:
                    skipped.append({"strategy": name, "width": width, "K": k, "N": n,
                                    "est_seconds": est_s, "est_bytes": est_b})
                    print(f"skip {name:20s} N={n:5d} width={width:5d} K={k:8d} "
                          f"(est {est_s:.0f} s, {est_b / 2**30:.1f} GiB)", flush=True)
                    continue
                flow = make(qn)
                # the problem is an argument (not a baked-in constant), as inside simulate()
                compiled, ctime = compile_fn(lambda prob, th, flow=flow: flow.velocity(prob, th),
                                             p, theta)
                best, med = timeit(compiled, p, theta)
                v = compiled(p, theta)
                if ref_v is None:
                    ref_v = v
                flops = xla_flops(compiled)
                row = {
                    "strategy": name, "width": width, "K": k, "N": n, "QN": qn,
                    "seconds": best, "median_seconds": med, "compile_seconds": ctime,
                    "peak_bytes": memory_bytes(compiled), "xla_flops": flops,
                    "finite": bool(jnp.all(jnp.isfinite(v))),
                    "flop_rate": flops / best if flops else None, "matmul_rate": rate,
                    "rel_diff_vs_layerwise": (float(jnp.linalg.norm(v - ref_v) / jnp.linalg.norm(ref_v))
                                              if ref_v is not None else None),
                }
                rows.append(row)
                print(f"{name:20s} N={n:5d} width={width:5d} K={k:8d} {best * 1e3:10.2f} ms "
                      f"compile {ctime:5.1f} s mem {row['peak_bytes'] / 2**20 if row['peak_bytes'] else -1:9.1f} MiB",
                      flush=True)
    return {"rows": rows, "skipped": skipped, "matmul_rate": rate}


# ---------------------------------------------------------------- (b) fit

FIT_METHODS = ("adapted", "adapted_jacrev", "discrete", "standard", "adam", "optimistix", "scipy")


def bench_fit(quick, methods=FIT_METHODS):
    eps = 1e-10
    width, n = GRID.get("fit_width", 256), GRID.get("fit_n", 64)
    # M = 2 inputs for the README's fit; with --fit-n the field's M = 16 (Θ stays invertible)
    p = mlp_problem(width, n, in_size=FIELD_IN_SIZE if "fit_n" in GRID else 2)
    theta0 = p.theta0
    c0 = float(p.cost(theta0))
    target = eps * c0
    kappa = p.kappa
    t_eps = math.log(1 / eps) / (2 * kappa)
    rows = []

    def add(method, seconds, evals, ratio, compile_s=None, note=""):
        rows.append({"method": method, "seconds": seconds, "evals": evals,
                     "cost_ratio": ratio, "reached": bool(ratio <= eps * (1 + 1e-6)),  # NaN: no
                     "compile_seconds": compile_s, "note": note})
        print(f"{method:34s} {seconds:9.3f} s evals {evals!s:>7} C/C0 {ratio:.2e} {note}",
              flush=True)

    quiet = {"diagnostics": False, "check_finite": False, "max_condition": None, "num_saves": 2}
    repeats = GRID.get("fit_repeats", 3)  # the short runs: best of 3 (the executable is reused)
    for key, label, solver in (
        ("adapted", "adapted flow, diffrax Tsit5 (auto = layerwise)", "auto"),
        ("adapted_jacrev", "adapted flow, diffrax Tsit5 (jacrev)", CholeskySolver(DenseGram("rev"))),
    ):
        if key not in methods:
            continue
        runs = [fl.simulate(p, fl.AdaptedFlow(solver), theta0, t1=1.5 * t_eps,
                            cost_target_relative=eps, **quiet) for _ in range(repeats)]
        tr = runs[0]
        add(label, min(r.wall_time for r in runs), int(tr.num_field_evals), float(tr.cost_final) / c0,
            tr.compile_time, f"rtol=atol=1e-8, stop {tr.stop_reason}, s={float(tr.t_final):.0f}")

    if "discrete" in methods:
        budget = 30
        runs = [fl.euler_steps(p, fl.AdaptedFlow(), theta0, num_steps=budget,
                               cost_target_relative=eps, diagnostics=False)
                for _ in range(repeats)]
        tr = runs[0]
        cost = np.asarray(tr.cost)
        used = int(tr.num_field_evals)
        add("discrete adapted steps h=1/κ", min(r.wall_time for r in runs), used,
            float(tr.cost_final) / c0, tr.compile_time,
            f"budget {budget} steps, exits at the target after {used}; first step C1/C0 = "
            f"{cost[1] / cost[0]:.1f}; C_k/C0 = "
            + ", ".join(f"{c / c0:.1e}" for c in cost[np.isfinite(cost)]))

    if "adam" in methods:
        _adam(p, theta0, target, c0, quick, add)
    if "optimistix" in methods:
        _optimistix(p, theta0, c0, add)
    if "scipy" in methods:
        _scipy(p, theta0, target, c0, quick, add)
    if "standard" not in methods:
        return {"rows": rows, "eps": eps, "K": p.num_params, "N": p.num_points, "C0": c0,
                "T_eps": t_eps, "width": width}
    cap = 300 if quick else 1000
    tr = fl.simulate(p, fl.GradientFlow(), theta0, t1=1e5, cost_target_relative=eps,
                     max_steps=cap, diagnostics=False, check_finite=False, max_condition=None,
                     ts=np.geomspace(1.0, 1e5, 60))
    costs = np.asarray(tr.cost)
    last = float(costs[np.isfinite(costs)][-1]) if np.any(np.isfinite(costs)) else c0
    t_last = float(np.asarray(tr.ts)[np.isfinite(costs)][-1]) if np.any(np.isfinite(costs)) else 0.0
    add("standard flow, diffrax Tsit5", tr.wall_time, int(tr.num_field_evals), last / c0,
        tr.compile_time, f"capped at {cap} steps ({tr.stop_reason}); last save s={t_last:.0f}")

    return {"rows": rows, "eps": eps, "K": p.num_params, "N": p.num_points, "C0": c0,
            "T_eps": t_eps, "width": width}


def _adam(p, theta0, target, c0, quick, add):
    max_steps = 5000 if quick else 20_000
    results = []
    cap = max_steps
    # largest lr first; a smaller lr is only "best" if it needs fewer steps (same cost per
    # step), so it is capped at the best step count so far
    for lr in (1e-2, 3e-3, 1e-3):
        run = bl.adam_to_target(p, lr, target)
        limit = jnp.asarray(cap)
        compiled, ctime = compile_fn(run, theta0, limit)
        t = time.perf_counter()
        steps, cost = jax.block_until_ready(compiled(theta0, limit))
        secs = time.perf_counter() - t
        ok = float(cost) / c0 <= 1e-10 * (1 + 1e-6)
        results.append((ok, secs, int(steps), float(cost) / c0, ctime, lr))
        print(f"  adam lr={lr:g}: {int(steps)} steps, {secs:.1f} s, C/C0={float(cost) / c0:.1e}",
              flush=True)
        if ok:
            cap = min(cap, int(steps))
    reached = [r for r in results if r[0]]
    best = min(reached, key=lambda r: r[1]) if reached else min(results, key=lambda r: r[3])
    note = "; ".join(f"lr={r[5]:g}: {r[2]} steps, {r[1]:.1f} s, C/C0={r[3]:.1e}" for r in results)
    add(f"optax Adam (best lr={best[5]:g}, <= {max_steps} steps)", best[1], best[2], best[3],
        best[4], note + " (smaller lrs capped at the best step count so far)")


def _optimistix(p, theta0, c0, add):
    for name, method in (
            ("optimistix GaussNewton", bl.gauss_newton(1e-13, 1e-13, jac="bwd", weighted=True)),
            ("optimistix LevenbergMarquardt",
             bl.levenberg_marquardt(1e-13, 1e-13, jac="bwd", weighted=True))):
        # optimistix.least_squares' loop on √κ·r, to its own termination or 100 steps
        run = bl.until_done(method, p, max_steps=100)
        try:
            compiled, ctime = compile_fn(run, theta0)
            t = time.perf_counter()
            value, steps = jax.block_until_ready(compiled(theta0))
            secs = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 -- e.g. LM's dense (QN + K) × K QR does not fit in memory
            msg = str(e).splitlines()[0][:160]
            add(name, math.nan, 0, math.nan, None, f"failed: {type(e).__name__}: {msg}")
            continue
        add(name, secs, int(steps), float(p.cost(value)) / c0, ctime,
            "jac='bwd', rtol=atol=1e-13, runs to its own termination (time is an upper bound "
            "on the time to 1e-10·C0)")


def _scipy(p, theta0, target, c0, quick, add):
    cap = 30.0 if quick else 120.0
    # on √κ·r (scipy's cost is C), Jacobian by reverse passes; compiled before the timing
    r = bl.scipy_least_squares(p, theta0, method="trf", jac_mode="rev", weighted=True,
                               ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=2000,
                               cost_target=target, max_seconds=cap)
    add("scipy least_squares trf (jax jac)", float(r.seconds[-1]), r.info["nfev"],
        float(r.cost[-1]) / c0, r.compile_seconds,
        f"status {r.info['status']}, njev {r.info['njev']}, capped at {cap:.0f} s")


# ---------------------------------------------------------------- (c) study

def bench_study(quick):
    out = {}
    config = ROOT.parent / "configs" / "quickstart.toml"
    try:
        import flowlab.cli  # noqa: F401

        have_cli = config.exists() and not GRID.get("no_cli")
    except ImportError:
        have_cli = False
    if have_cli:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "flowlab.cli", "run", str(config),
                                   "--out", str(Path(tmp) / "qs"), "--no-plot", "--quiet"],
                                  capture_output=True, text=True, timeout=900, check=False)
            out["quickstart"] = {"seconds": time.perf_counter() - t, "returncode": proc.returncode,
                                 "tail": (proc.stdout + proc.stderr)[-1500:]}
        print(f"quickstart CLI: {out['quickstart']['seconds']:.1f} s (rc {proc.returncode})",
              flush=True)
    else:
        out["quickstart"] = None
        print("quickstart CLI not available: skipped", flush=True)

    p = mlp_problem(64, 32)
    rows = []
    for b in (1, 4, 16, 64):
        thetas = p.theta0 + 0.1 * jr.normal(jr.key(b), (b, p.num_params))
        # the seeds of a vmapped solve step in lockstep: the slowest seed sets the step count
        tr = fl.simulate(p, fl.AdaptedFlow(), thetas, t1=400.0, cost_target_relative=1e-8,
                         num_saves=21, diagnostics=False, max_steps=2000)
        rows.append({"seeds": b, "seconds": tr.wall_time, "compile_seconds": tr.compile_time,
                     "max_steps_taken": int(np.max(np.asarray(tr.num_steps))),
                     "per_seed": tr.wall_time / b,
                     "reached": int(np.sum(np.asarray(tr.stop_code) == 1))})
        print(f"seeds {b:3d}: {tr.wall_time:.2f} s ({tr.wall_time / b * 1e3:.0f} ms/seed), "
              f"compile {tr.compile_time:.1f} s, steps {rows[-1]['max_steps_taken']}", flush=True)
    out["seeds"] = {"rows": rows, "width": 64, "N": 32, "K": p.num_params,
                    "devices": jax.device_count()}
    return out


# ---------------------------------------------------------------- report

def markdown(res) -> str:
    m = res["machine"]
    lines = [(f"Machine: {m['cpu']}, {m['cores']} cores, {m['backend']} backend, jax {m['jax']}; "
             f"{m['date_utc']}; load average at start {m['loadavg_start'][0]:.1f}, "
             f"at end {m['loadavg_end'][0]:.1f} (machine shared with other jobs)."), ""]
    if "field" in res:
        f = res["field"]
        lines += [(f"### One adapted vector-field evaluation ({res.get('dtype', 'float64')}, "
                   "tanh, 2 hidden layers, "
                  f"M = {FIELD_IN_SIZE} inputs, Q = 1)"),
                  "", f"Plain 1024×1024 matmul in the same run: {f['matmul_rate'] / 1e9:.1f} GFLOP/s.",
                  "", ("| N | width | K | strategy | time (ms) | compile (s) | peak mem (MiB) | "
                  "GFLOP/s (XLA count) | % of matmul | rel. diff vs layerwise |"),
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in f["rows"]:
            rate = r["flop_rate"]
            gf = "–" if not rate else f"{rate / 1e9:.2f}"
            pct = "–" if not rate else f"{100 * rate / r['matmul_rate']:.0f}"
            rd = r["rel_diff_vs_layerwise"]
            rd = "–" if rd is None else f"{rd:.1e}"
            rd = rd if r.get("finite", True) else "not finite"
            lines.append(
                f"| {r['N']} | {r['width']} | {r['K']} | {r['strategy']} | {r['seconds'] * 1e3:.2f} | "
                f"{r['compile_seconds']:.1f} | {fmt_bytes(r['peak_bytes'])} | {gf} | {pct} | {rd} |")
        if f["skipped"]:
            lines += ["", f"Skipped (estimated > {GRID.get('max_seconds', MAX_SECONDS):.0f} s or > 4 GiB): " + "; ".join(
                f"{s['strategy']} N={s['N']} width={s['width']}" for s in f["skipped"])]
        lines.append("")
    if "fit" in res:
        fit = res["fit"]
        lines += [(f"### Time to C ≤ 1e-10·C(0): width {fit.get('width', 256)}, N = {fit['N']}, "
                   f"K = {fit['K']}, same θ0" + ("" if res.get("dtype", "float64") == "float64"
                                                 else f", {res['dtype']}")),
                  "", "| method | time (s) | evaluations / steps | C_final/C(0) | reached | compile (s) | notes |",
                  "|---|---:|---:|---:|---|---:|---|"]
        for r in fit["rows"]:
            cs = "–" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
            lines.append(f"| {r['method']} | {r['seconds']:.3f} | {r['evals']} | {r['cost_ratio']:.1e} | "
                         f"{'yes' if r['reached'] else 'no'} | {cs} | {r['note']} |")
        lines.append("")
    if "study" in res:
        s = res["study"]
        q = s["quickstart"]
        lines += ["### Study", "", ("`flowlab run configs/quickstart.toml --no-plot --quiet`: "
                                    f"{q['seconds']:.1f} s end to end (exit code {q['returncode']})"
                                    if q else "quickstart CLI not available at benchmark time: skipped"),
                  "", (f"Seeds scaling (adapted flow, width {s['seeds']['width']}, N = {s['seeds']['N']}, "
                  f"K = {s['seeds']['K']}, one vmapped solve, {s['seeds']['devices']} device(s)):"), "",
                  "| seeds | wall (s) | per seed (ms) | compile (s) | reached target |",
                  "|---:|---:|---:|---:|---:|"]
        for r in s["seeds"]["rows"]:
            lines.append(f"| {r['seeds']} | {r['seconds']:.2f} | {r['per_seed'] * 1e3:.0f} | "
                         f"{r['compile_seconds']:.1f} | {r['reached']}/{r['seeds']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids and caps")
    ap.add_argument("--only", default="field,fit,study", help="comma list of field,fit,study")
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--fit-methods", default=",".join(FIT_METHODS),
                    help="comma list of " + ",".join(FIT_METHODS))
    ap.add_argument("--widths", help="field benchmark widths, e.g. 64,1024")
    ap.add_argument("--ns", help="field benchmark N values, e.g. 64,256")
    ap.add_argument("--no-cli", action="store_true", help="study: skip the quickstart CLI run")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                    help="float32 turns jax_enable_x64 off for the whole run")
    ap.add_argument("--strategies", help="field strategies, comma list of "
                    + ",".join([*STRATEGIES, *EXTRA_STRATEGIES]) + " (default: "
                    + ",".join(STRATEGIES) + ")")
    ap.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                    help="field: skip a combination estimated to take longer")
    ap.add_argument("--fit-n", type=int, help="fit: number of examples N (default 64)")
    ap.add_argument("--fit-width", type=int, help="fit: hidden width (default 256)")
    ap.add_argument("--fit-repeats", type=int, help="fit: best of this many runs (default 3)")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    args = ap.parse_args(argv)
    # float64 unless --dtype float32: set here, before any array is built (importing this
    # module changes no JAX setting)
    jax.config.update("jax_enable_x64", args.dtype == "float64")
    GRID["max_seconds"] = args.max_seconds
    if args.strategies:
        names = [s.strip() for s in args.strategies.split(",") if s.strip()]
        bad = set(names) - set(STRATEGIES) - set(EXTRA_STRATEGIES)
        if bad:
            raise SystemExit(f"unknown field strategies {sorted(bad)}")
        GRID["strategies"] = names
    for key in ("fit_n", "fit_width", "fit_repeats"):
        if getattr(args, key) is not None:
            GRID[key] = getattr(args, key)
    GRID["no_cli"] = args.no_cli
    if args.widths:
        GRID["widths"] = [int(w) for w in args.widths.split(",")]
    if args.ns:
        GRID["ns"] = [int(n) for n in args.ns.split(",")]
    parts = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = set(parts) - {"field", "fit", "study"}
    if bad:
        raise SystemExit(f"unknown benchmark part(s) {sorted(bad)}; expected field, fit, study")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"machine": machine(), "quick": args.quick, "dtype": args.dtype}
    tag = "_".join(parts) + ("_quick" if args.quick else "")
    if "fit" in parts and args.fit_methods != ",".join(FIT_METHODS):
        tag += "_" + args.fit_methods.replace(",", "-")
    if args.tag:
        tag += "_" + args.tag
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "fit":
            res[part] = bench_fit(args.quick, tuple(args.fit_methods.split(",")))
        else:
            res[part] = {"field": bench_field, "study": bench_study}[part](args.quick)
        # written after each part, so that a run stopped by a timeout keeps the finished parts
        res["machine"]["loadavg_end"] = list(os.getloadavg())
        (out / f"{tag}.json").write_text(json.dumps(res, indent=1, default=float))
        (out / f"{tag}.md").write_text(markdown(res))
    print(f"wrote {out / tag}.json and .md")


if __name__ == "__main__":
    main()
