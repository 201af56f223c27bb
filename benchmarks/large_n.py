"""Large N (issue #11.3): the layerwise Gram's FLOP rate, full adapted steps and the adapted ODE at
N = 4096, and sketch-and-project (adapted steps on row blocks) up to N = 65 536.

    python benchmarks/large_n.py [--quick] [--big-n 65536] [--big-block 2048] [--big-epochs 3]

Problem: tanh MLP 16 → 512 → 512 → 1 (K = 271 873), `smooth_regression` data (part (e): teacher
data by default, `--nystrom-data`), float64, κ = 1/N.
(a) one layerwise Gram Θ (`LayerwiseGram`) at N = 4096: time after warm-up, XLA's flop count,
    FLOP/s against a same-size matmul (N × 512 by 512 × N) and a 1024³ matmul timed in the same
    process, peak memory (compiled memory_analysis);
(b) `euler_steps` (h = 1/κ, the Gauss–Newton step) to C ≤ 1e-10·C(0), and `simulate` (tsit5)
    to the same target, compile and run times separately (diagnostics off); part 'full_lm' the
    same steps with Levenberg–Marquardt damping;
(c) sketch-and-project at N = 256 (b = 32): the mean C_k/C_0 of 4 runs against the linear
    theory's exact E|r_k|²/|r_0|², and the bound 1 − λ_min⁺(E Z);
(d) sketch-and-project at N = --big-n (b = --big-block) for --big-epochs passes over the blocks:
    time per step, C after each pass, the fitted contraction and the extrapolated steps and
    time to 1e-6·C(0);
(e) adapted steps with the matrix-free Nyström route (`NystromSolver`: conjugate residuals on
    Θw = r to --nystrom-rtol, rank --nystrom-rank preconditioner) at N = --big-n to
    C ≤ 1e-6·C(0), globalised by --nystrom-search (default Levenberg–Marquardt damping; results
    key 'nystrom', the others 'nystrom_<search>'); at θ0 also the time of one product by Θ, of the preconditioner, and the
    Krylov steps of one solve with and without the preconditioner.
Results: benchmarks/results/large_n.{json,md}. The machine is shared: the load average is
recorded before and after each part.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import compile_fn, machine, matmul_rate, memory_bytes, timeit, xla_flops

import flowlab as fl
from flowlab.linalg import LayerwiseGram, NystromSolver, jacobian_products

ROOT = Path(__file__).resolve().parent


def problem(n, in_size=16, width=512, seed=0, data="smooth"):
    data = (fl.teacher(jr.key(seed), n, in_size) if data == "teacher"
            else fl.smooth_regression(jr.key(seed), n, in_size))
    return fl.LeastSquaresProblem(fl.MLP(in_size, 1, (width, width), "tanh",
                                         key=jr.key(seed + 1)), data)


def load():
    return [round(v, 2) for v in os.getloadavg()]


def bench_gram(n):
    p = problem(n)
    a = jr.normal(jr.key(0), (n, 512))
    mm, _ = compile_fn(lambda x: x @ x.T, a)
    mm_s, _ = timeit(mm, a, max_reps=5)
    same_rate = 2 * n * n * 512 / mm_s
    rate1024 = matmul_rate()
    g, c = compile_fn(lambda prob, th: LayerwiseGram()(prob, th)[0], p, p.theta0)
    best, med = timeit(g, p, p.theta0, max_reps=5)
    flops = xla_flops(g)
    return {"N": n, "K": p.num_params, "gram_seconds": best, "gram_median_seconds": med,
            "gram_compile_seconds": c, "gram_xla_flops": flops, "gram_rate": flops / best,
            "matmul_same_size_rate": same_rate, "matmul_1024_rate": rate1024,
            "rate_vs_same_size_matmul": flops / best / same_rate,
            "gram_peak_bytes": memory_bytes(g), "theta_bytes": n * n * 8, "load": load()}


def bench_full(n, ode=True):
    p = problem(n)
    flow = fl.AdaptedFlow()
    out = {"N": n, "load_start": load()}
    tr = fl.euler_steps(p, flow, num_steps=30, cost_target_relative=1e-10, diagnostics=False)
    out["discrete"] = {"compile_seconds": tr.compile_time, "seconds": tr.wall_time,
                       "steps": int(tr.num_steps), "stop": tr.stop_reason,
                       "cost_ratio": float(tr.cost_final / tr.cost0),
                       "cost_ratios": [float(v) for v in np.asarray(tr.cost / tr.cost0)
                                       if np.isfinite(v)]}
    print("discrete", out["discrete"], load(), flush=True)
    if ode:
        t1 = 1.2 * math.log(1e10) / (2 * p.kappa)
        tr = fl.simulate(p, flow, t1=t1, cost_target_relative=1e-10, max_condition=None,
                         check_finite=False, diagnostics=False, num_saves=4)
        out["ode"] = {"compile_seconds": tr.compile_time, "seconds": tr.wall_time,
                      "stop": tr.stop_reason, "cost_ratio": float(tr.cost_final / tr.cost0),
                      "field_evals": int(tr.num_field_evals), "steps": int(tr.num_steps)}
        print("ode", out["ode"], load(), flush=True)
        tr = fl.simulate(p, flow, t1=t1, cost_target_relative=1e-10, max_condition=None,
                         check_finite=False, diagnostics=False, num_saves=4,
                         ode_solver="output_path")
        out["ode_path"] = {"compile_seconds": tr.compile_time, "seconds": tr.wall_time,
                           "stop": tr.stop_reason, "cost_ratio": float(tr.cost_final / tr.cost0),
                           "field_evals": int(tr.num_field_evals), "steps": int(tr.num_steps)}
        print("ode (output path)", out["ode_path"], load(), flush=True)
    out["load_end"] = load()
    return out


def bench_full_lm(n):
    """(b') Levenberg–Marquardt adapted steps on the problem of (b), dense Θ (the 'auto' solver)."""
    p = problem(n)
    out = {"N": n, "load_start": load()}
    tr = fl.euler_steps(p, fl.AdaptedFlow(), num_steps=60, cost_target_relative=1e-10,
                        diagnostics=False, levenberg_marquardt=True)
    valid = np.asarray(tr.valid)
    out.update({"compile_seconds": tr.compile_time, "seconds": tr.wall_time,
                "steps": int(tr.num_steps), "accepted": int(tr.num_accepted_steps),
                "stop": tr.stop_reason, "cost_ratio": float(tr.cost_final / tr.cost0),
                "cost_ratios": [float(v) for v in np.asarray(tr.cost / tr.cost0)[valid]],
                "damping": [float(v) for v in np.asarray(tr.extras["damping"])[valid]],
                "load_end": load()})
    print("full_lm", out, flush=True)
    return out


def bench_contraction(n=256, block=32, steps=600, runs=4):
    data = fl.teacher(jr.key(0), n, 16)
    p = fl.LeastSquaresProblem(fl.MLP(16, 1, (64, 64), "tanh", key=jr.key(1)), data)
    keys = [jr.fold_in(jr.key(5), i) for i in range(runs)]
    t = time.perf_counter()
    preds = [fl.predicted_contraction(p, block_size=block, key=k, num_steps=steps) for k in keys]
    pred_s = time.perf_counter() - t
    trs = [fl.sketch_project(p, block_size=block, num_steps=steps, check_every=1, key=k)
           for k in keys]
    mean = np.mean([np.asarray(tr.cost / tr.cost0) for tr in trs], axis=0)
    res = np.mean([np.asarray(q.residual) for q in preds], axis=0)
    ks = list(range(0, steps + 1, steps // 6))
    bound = float(np.mean([float(q.bound) for q in preds]))
    fit = lambda c: float(np.exp(np.polyfit(np.arange(steps + 1)[50:], np.log(c[50:]), 1)[0]))  # noqa: E731
    return {"N": n, "K": p.num_params, "block": block, "blocks": trs[0].num_blocks, "runs": runs,
            "data": "teacher (Gaussian inputs, M = 16), MLP 16 → 64 → 64 → 1",
            "bound_e2": bound, "steps": ks,
            "predicted_cost_ratio": [float(res[k]) for k in ks],
            "measured_mean_cost_ratio": [float(mean[k]) for k in ks],
            "fitted_q_predicted": fit(res), "fitted_q_measured": fit(mean),
            "prediction_seconds": pred_s, "run_seconds": [tr.wall_time for tr in trs],
            "load": load()}


def bench_big(n, block, epochs):
    p = problem(n)
    m = math.ceil(n / block)
    tr = fl.sketch_project(p, block_size=block, num_steps=epochs * m, key=jr.key(5),
                           cost_target_relative=1e-6)
    ratios = [float(v) for v in np.asarray(tr.cost / tr.cost0) if np.isfinite(v)]
    steps = int(tr.num_steps)
    per_step = tr.wall_time / steps
    # per-pass factor from the last two passes (the first pass falls fastest); an
    # extrapolation only where C fell monotonically over the passes (else it means nothing)
    q_pass = (ratios[-1] / ratios[-3]) ** 0.5 if len(ratios) >= 3 else ratios[-1] / ratios[0]
    falling = all(b < a for a, b in zip(ratios, ratios[1:]))
    passes_left = (math.log(1e-6 / ratios[-1]) / math.log(q_pass) if falling and q_pass < 1
                   else math.nan)
    return {"N": n, "K": p.num_params, "block": block, "blocks": m, "passes": epochs,
            "steps": steps, "compile_seconds": tr.compile_time, "seconds": tr.wall_time,
            "seconds_per_step": per_step, "cost_ratio_per_pass": ratios, "stop": tr.stop_reason,
            "q_per_pass_last": q_pass, "extrapolated_passes_to_1e-6": epochs + passes_left,
            "extrapolated_seconds_to_1e-6": (epochs + passes_left) * m * per_step,
            "load": load()}


SEARCHES = ("levenberg_marquardt", "backtracking", "full")


def bench_nystrom(n, rank, rtol, data, search="levenberg_marquardt", max_krylov=200,
                  max_steps=None):
    p = problem(n, data=data)
    solver = NystromSolver(rank=rank, rtol=rtol, max_steps=max_krylov)
    max_steps = max_steps or (60 if search == "levenberg_marquardt" else 30)
    out = {"N": n, "K": p.num_params, "rank": rank, "rtol": rtol, "max_krylov_steps": max_krylov,
           "data": data, "search": search, "load_start": load()}
    g = p.residual(p.theta0)

    def products(prob, th, w, count):  # the forward/backward signals once, then count Θw
        pr = jacobian_products(prob, th)

        def step(_, v):
            v = pr.jvp(pr.vjp(v))
            return v / jnp.linalg.norm(v)

        return jax.lax.fori_loop(0, count, step, w)

    one, _ = compile_fn(lambda prob, th, w: products(prob, th, w, 1), p, p.theta0, g)
    eleven, _ = compile_fn(lambda prob, th, w: products(prob, th, w, 11), p, p.theta0, g)
    t_one = timeit(one, p, p.theta0, g, max_reps=3)[0]
    t_eleven = timeit(eleven, p, p.theta0, g, max_reps=2)[0]
    out["signals_seconds"] = t_one - (t_eleven - t_one) / 10
    out["product_seconds"] = (t_eleven - t_one) / 10
    pre, _ = compile_fn(lambda prob, th: solver.preconditioner(prob, th).basis, p, p.theta0)
    out["preconditioner_seconds"] = timeit(pre, p, p.theta0, max_reps=1)[0]
    for name, s in (("preconditioned", solver),
                    ("rank_1", NystromSolver(rank=1, rtol=rtol, max_steps=100))):
        t = time.perf_counter()
        _, stats = jax.jit(lambda prob, th, r, s=s: s.solve_with_stats(prob, th, r))(
            p, p.theta0, g)
        out[f"solve_{name}"] = {"krylov_steps": int(stats.num_steps),
                                "relative_residual": float(stats.relative_residual),
                                "seconds_with_compile": time.perf_counter() - t}
        print("nystrom solve", name, out[f"solve_{name}"], load(), flush=True)
    # a full Gauss–Newton step (h = 1/κ) that follows a long Krylov solve can overshoot (measured
    # at N = 65 536 without a line search: C/C(0) cycling between 8e-5 and 1.5e-2): damp it
    # (Levenberg–Marquardt) or halve it
    tr = fl.euler_steps(p, fl.AdaptedFlow(solver=solver), num_steps=max_steps,
                        cost_target_relative=1e-6, diagnostics=False,
                        backtracking=search == "backtracking",
                        levenberg_marquardt=search == "levenberg_marquardt")
    valid = np.asarray(tr.valid)
    out["steps"] = {"compile_seconds": tr.compile_time, "seconds": tr.wall_time,
                    "steps": int(tr.num_steps), "accepted": int(tr.num_accepted_steps),
                    "stop": tr.stop_reason, "rejected": int(tr.num_rejected_steps),
                    "cost_ratios": [float(v) for v in np.asarray(tr.cost / tr.cost0)[valid]]}
    if search == "levenberg_marquardt":
        out["steps"]["damping"] = [float(v) for v in np.asarray(tr.extras["damping"])[valid]]
    out["load_end"] = load()
    print("nystrom steps", out["steps"], load(), flush=True)
    return out


def _nystrom_lines(y) -> list[str]:
    st, sp, s1 = y["steps"], y["solve_preconditioned"], y["solve_rank_1"]
    search = y.get("search", "backtracking")
    rejected = st.get("rejected", st.get("halvings"))
    how = {"levenberg_marquardt": f"Levenberg–Marquardt: {st.get('accepted')} accepted steps "
                                  f"of {st['steps']} trials, {rejected} rejected",
           "backtracking": f"Armijo backtracking: {st['steps']} steps, {rejected} halvings",
           "full": f"full steps h = 1/κ: {st['steps']} steps"}[search]
    lines = [f"**Matrix-free adapted steps at N = {y['N']}**, {y['data']} data "
             f"(`NystromSolver`: rank {y['rank']}, conjugate residuals to |r − Θw| ≤ "
             f"{y['rtol']}·|r|, at most {y['max_krylov_steps']} Krylov steps; load "
             f"{y['load_start']} → {y['load_end']}"
             + (f"; {y['provenance']}" if "provenance" in y else "") + f"): {how}, "
             f"in {st['seconds']:.0f} s (compile {st['compile_seconds']:.1f} s), stop: "
             f"{st['stop']}, final C/C(0) = {st['cost_ratios'][-1]:.3g}; C/C(0) per accepted "
             "step: " + ", ".join(f"{v:.2g}" for v in st["cost_ratios"]) + "."]
    if "damping" in st:
        lines += ["", "λ per accepted step: " + ", ".join(f"{v:.2g}" for v in st["damping"])
                  + "."]
    lines += ["", f"At θ0: the layers' forward and backward signals {y['signals_seconds']:.2f} s, "
              f"one product by Θ (D(Dᵀw)) {y['product_seconds']:.2f} s; preconditioner "
              f"{y['preconditioner_seconds']:.1f} s; one solve {sp['krylov_steps']} Krylov "
              f"steps to {sp['relative_residual']:.2g} ({sp['seconds_with_compile']:.0f} s "
              f"with compile), against {s1['krylov_steps']} steps to "
              f"{s1['relative_residual']:.2g} ({s1['seconds_with_compile']:.0f} s) with a "
              "rank-1 preconditioner."]
    return lines


def markdown(res) -> str:
    mc = res["machine"]
    g, f = res["gram"], res["full"]
    lines = [f"Machine: {mc['cpu']}, {mc['cores']} cores, jax {mc['jax']}, {mc['date_utc']}; "
             f"load average before {mc['loadavg_start']}, after {mc['loadavg_end']} (shared "
             "machine: times are upper bounds).", "",
             f"**Gram** (layerwise, N = {g['N']}, K = {g['K']}): {g['gram_seconds']:.2f} s, "
             f"{g['gram_xla_flops']:.3g} flops (XLA), {g['gram_rate'] / 1e9:.1f} GFLOP/s = "
             f"{100 * g['rate_vs_same_size_matmul']:.0f} % of a same-size matmul "
             f"({g['matmul_same_size_rate'] / 1e9:.1f} GFLOP/s; 1024³: "
             f"{g['matmul_1024_rate'] / 1e9:.1f}); peak memory "
             f"{g['gram_peak_bytes'] / 2**20:.0f} MiB (Θ itself {g['theta_bytes'] / 2**20:.0f} "
             "MiB).", "",
             "| N = 4096 to C ≤ 1e-10·C(0) | compile (s) | run (s) | steps | C/C(0) | stop |",
             "|---|---:|---:|---:|---:|---|"]
    d = f["discrete"]
    lines.append(f"| adapted steps h = 1/κ | {d['compile_seconds']:.1f} | {d['seconds']:.1f} | "
                 f"{d['steps']} | {d['cost_ratio']:.1e} | {d['stop']} |")
    if "full_lm" in res:
        o = res["full_lm"]
        lines.append(f"| adapted steps, Levenberg–Marquardt | {o['compile_seconds']:.1f} | "
                     f"{o['seconds']:.1f} | {o['accepted']} ({o['steps']} trials) | "
                     f"{o['cost_ratio']:.1e} | {o['stop']} |")
    if "ode" in f:
        o = f["ode"]
        lines.append(f"| adapted ODE (tsit5) | {o['compile_seconds']:.1f} | {o['seconds']:.1f} | "
                     f"{o['steps']} ({o['field_evals']} field evals) | {o['cost_ratio']:.1e} | "
                     f"{o['stop']} |")
    if "ode_path" in f:
        o = f["ode_path"]
        lines.append(f"| adapted ODE (output path) | {o['compile_seconds']:.1f} | "
                     f"{o['seconds']:.1f} | {o['steps']} ({o['field_evals']} Gauss–Newton "
                     f"solves) | {o['cost_ratio']:.1e} | {o['stop']} |")
    c = res["contraction"]
    lines += ["", f"**Sketch-and-project contraction** (N = {c['N']}, K = {c['K']}, b = "
              f"{c['block']}, m = {c['blocks']}, mean of {c['runs']} runs; {c['data']}): bound "
              f"1 − λ_min⁺(E Z) = {c['bound_e2']:.6f} per step on |e|²; fitted per-step factor "
              f"of C: predicted {c['fitted_q_predicted']:.5f}, measured "
              f"{c['fitted_q_measured']:.5f}.", "",
              "| step | " + " | ".join(str(k) for k in c["steps"]) + " |",
              "|---|" + "---:|" * len(c["steps"]),
              "| predicted E C_k/C_0 | " + " | ".join(f"{v:.2e}" for v in
                                                     c["predicted_cost_ratio"]) + " |",
              "| measured mean | " + " | ".join(f"{v:.2e}" for v in
                                               c["measured_mean_cost_ratio"]) + " |"]
    b = res["big"]
    lines += ["", f"**Sketch-and-project at N = {b['N']}** (b = {b['block']}, m = {b['blocks']}, "
              f"{b['passes']} passes, {b['steps']} steps): compile {b['compile_seconds']:.1f} s, "
              f"run {b['seconds']:.1f} s ({b['seconds_per_step']:.2f} s/step); C/C(0) after "
              "each pass: " + ", ".join(f"{v:.3g}" for v in b["cost_ratio_per_pass"]) +
              (f"; last per-pass factor {b['q_per_pass_last']:.3f}; extrapolated to 1e-6·C(0): "
               f"{b['extrapolated_passes_to_1e-6']:.3g} passes, "
               f"{b['extrapolated_seconds_to_1e-6']:.3g} s"
               if math.isfinite(b["extrapolated_passes_to_1e-6"] or math.nan) else
               "; C did not fall monotonically over the passes: no extrapolation") +
              f"; stop: {b['stop']}."]
    for key in ("nystrom", "nystrom_backtracking"):
        if key in res:
            lines += ["", *_nystrom_lines(res[key])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1024 for (a, b), N = 8192 for (d)")
    ap.add_argument("--big-n", type=int, default=None)
    ap.add_argument("--big-block", type=int, default=2048)
    ap.add_argument("--big-epochs", type=int, default=3)
    ap.add_argument("--no-ode", action="store_true")
    ap.add_argument("--nystrom-rank", type=int, default=2048)
    ap.add_argument("--nystrom-rtol", type=float, default=0.1)
    ap.add_argument("--nystrom-search", choices=SEARCHES, default="levenberg_marquardt",
                    help="(e): Levenberg–Marquardt damping, Armijo halving of h = 1/κ, or full "
                         "steps h = 1/κ")
    ap.add_argument("--nystrom-data", choices=("smooth", "teacher"), default="teacher",
                    help="targets for (e): smooth_regression or a random tanh teacher network")
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--update", default=None, metavar="PARTS",
                    help="rerun only these parts (gram,full,full_lm,contraction,big,nystrom) and "
                         "merge them "
                         "into the existing results file")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # before any array is built
    n = 1024 if args.quick else 4096
    big_n = args.big_n or (8192 if args.quick else 65536)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "large_n_quick" if args.quick else "large_n"
    parts = ("gram", "full", "full_lm", "contraction", "big", "nystrom")
    res = {}
    if args.update:
        parts = tuple(args.update.split(","))
        res = json.loads((out / f"{stem}.json").read_text())
    res["machine"] = machine()
    if "gram" in parts:
        res["gram"] = bench_gram(n)
        print("gram", res["gram"], flush=True)
    if "full" in parts:
        res["full"] = bench_full(n, ode=not args.no_ode)
    if "full_lm" in parts:
        res["full_lm"] = bench_full_lm(n)
    if "contraction" in parts:
        res["contraction"] = bench_contraction()
        print("contraction", res["contraction"], flush=True)
    if "big" in parts:
        res["big"] = bench_big(big_n, min(args.big_block, big_n), args.big_epochs)
        print("big", res["big"], flush=True)
    if "nystrom" in parts:
        key = "nystrom" if args.nystrom_search == "levenberg_marquardt" else \
            f"nystrom_{args.nystrom_search}"
        res[key] = bench_nystrom(big_n, args.nystrom_rank, args.nystrom_rtol, args.nystrom_data,
                                 args.nystrom_search)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
