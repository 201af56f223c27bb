"""Real data: the adapted flow, its discrete steps and Adam to interpolation, with test error at
equal training cost and the a priori stopping time T_ε.

    python benchmarks/real_data.py [--datasets diabetes,digits] [--adam-seconds 60]

Data (scikit-learn's bundled sets, `flowlab.data`): diabetes regression (N = 442, M = 10,
squared loss, κ = 1/N) and digits classification (a subset, Q = 10, softmax cross-entropy with
label smoothing 0.1), each split 75/25 into train and test by a fixed key. One tanh MLP and one
θ0 per data set. Contenders (float64, one process, compile time excluded):
- adapted flow (diffrax Tsit5, rtol = atol = 1e-8), stopped a priori at T_ε for the deepest ε;
- discrete adapted steps h = 1/κ with backtracking (`euler_steps`);
- optax Adam, best final training cost over a learning-rate grid, within a time budget.
For each training level ε·C(0) (squared loss: C; cross-entropy: C − C_min) the table gives the
first time each method gets there and its test loss there.
Writes benchmarks/results/real_data.json and benchmarks/results/real_data/ (README table, table.md).
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.random as jr
import numpy as np
from _common import first_at_levels, machine, train_test_losses

import flowlab as fl
from flowlab import baselines as bl
from flowlab.data import train_test_split

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1e-1, 1e-2, 1e-4, 1e-6, 1e-8)
ADAM_LRS = (1e-2, 3e-3, 1e-3)


def setup(name):
    if name == "diabetes":
        full = fl.data.diabetes(jr.key(0), 442)
        hidden, loss = [64, 64], None
    else:
        full = fl.data.digits(jr.key(0), 200, num_classes=10, label_smoothing=0.1)
        hidden, loss = [32], fl.SoftmaxCrossEntropy()
    train, test = train_test_split(full, 0.25, jr.key(1))
    net = fl.MLP(full.in_size, full.out_size, hidden, "tanh", key=jr.key(2))
    kw = {} if loss is None else {"loss": loss}
    return (fl.LeastSquaresProblem(net, train, **kw), fl.LeastSquaresProblem(net, test, **kw),
            hidden)


def at_levels(seconds, train, test_loss, c0, c_min):
    return first_at_levels(LEVELS, seconds, train, test_loss, c0, c_min)


def run(name, adam_seconds):
    p, test, hidden = setup(name)
    c0 = float(p.cost(p.theta0))
    c_min = float(p.loss.minimum(p.targets))
    info = {"data": name, "N_train": p.num_points, "N_test": test.num_points, "Q": p.out_size,
            "K": p.num_params, "QN": p.num_outputs, "hidden": hidden, "kappa": p.kappa,
            "C0": c0, "C_min": c_min, "loadavg_start": os.getloadavg()}
    print(f"== {name}: {info}", flush=True)
    out = {}
    # adapted flow, stopped a priori at T_ε (ε the deepest level)
    eps = LEVELS[-1]
    t_eps = fl.theory.stopping_time(c0 - c_min, eps * (c0 - c_min), p.kappa)
    squared = isinstance(p.loss, fl.SquaredLoss)  # T_ε is a theorem for the squared loss only
    tr = fl.simulate(p, fl.AdaptedFlow(), t1=(1.05 if squared else 20.0) * t_eps,
                     num_saves=201, save_theta=True, diagnostics=False,
                     cost_target=c_min + eps * (c0 - c_min))
    ok = np.asarray(tr.valid)
    thetas = np.concatenate([np.asarray(tr.theta)[ok], np.asarray(tr.theta_final)[None]])
    ss = np.append(np.asarray(tr.ts)[ok], float(tr.t_final))  # the stop itself, last
    train, tl = train_test_losses(p, test, thetas)
    secs = ss / float(tr.t_final) * float(tr.wall_time)  # s ∝ steps
    out["adapted flow"] = {"levels": at_levels(secs, train, tl, c0, c_min),
                           "seconds": float(tr.wall_time), "compile": float(tr.compile_time),
                           "steps": int(tr.num_steps), "T_eps": t_eps,
                           "s_stop": float(tr.t_final), "stop": tr.stop_reason,
                           "C_end_over_C0": (float(tr.cost_final) - c_min) / (c0 - c_min),
                           "final_test": float(tl[-1])}
    print(f"  adapted flow: {out['adapted flow']}", flush=True)
    # discrete steps
    tr = fl.euler_steps(p, fl.AdaptedFlow(), num_steps=60, backtracking=True, save_theta=True,
                        diagnostics=False, cost_target=c_min + 1e-10 * (c0 - c_min))
    n = int(tr.num_accepted_steps)
    train, tl = train_test_losses(p, test, np.asarray(tr.theta)[: n + 1])
    secs = np.arange(n + 1) / max(n, 1) * float(tr.wall_time)  # steps cost alike
    out["discrete steps"] = {"levels": at_levels(secs, train, tl, c0, c_min),
                             "seconds": float(tr.wall_time), "compile": float(tr.compile_time),
                             "steps": n, "final_test": float(tl[-1])}
    print(f"  discrete: {out['discrete steps']}", flush=True)
    # Adam, best of a learning-rate grid
    best = None
    for lr in ADAM_LRS:
        r = bl.run(bl.adam(lr), p, max_steps=10**7, chunk=200, max_seconds=adam_seconds)
        train, tl = train_test_losses(p, test, r.thetas)
        row = {"lr": lr, "levels": at_levels(r.seconds, train, tl, c0, c_min),
               "seconds": float(r.seconds[-1]), "compile": r.compile_seconds,
               "steps": int(r.iterations[-1]),
               "C_end_over_C0": (float(train[-1]) - c_min) / (c0 - c_min),
               "final_test": float(tl[-1])}
        print(f"  adam {lr}: {row}", flush=True)
        if best is None or row["C_end_over_C0"] < best["C_end_over_C0"]:
            best = row
    out[f"Adam (lr = {best['lr']:g})"] = best
    info["loadavg_end"] = os.getloadavg()
    return info, out


def table(info, out) -> str:
    lines = [f"`{info['data']}`: N = {info['N_train']} train / {info['N_test']} test, Q = "
             f"{info['Q']}, tanh MLP {info['hidden']} (K = {info['K']} ≥ QN = {info['QN']}), "
             f"κ = {info['kappa']:.3g}, C(0) = {info['C0']:.3g}, C_min = {info['C_min']:.3g}.", "",
             "| method | " + " | ".join(f"ε = {e:g}: time (s) / test loss" for e in LEVELS)
             + " | steps | compile (s) |",
             "|---|" + "---:|" * (len(LEVELS) + 2)]
    for name, row in out.items():
        cells = []
        for eps in LEVELS:
            s, t = row["levels"][eps]
            cells.append("–" if s != s else f"{s:.2f} / {t:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {row['steps']} | {row['compile']:.1f} |")
    a = out["adapted flow"]
    lines += ["", f"Adapted flow: a priori T_ε = ln(1/ε)/(2κ) = {a['T_eps']:.4g} for ε = "
              f"{LEVELS[-1]:g}; the run stopped ({a['stop']}) at s = {a['s_stop']:.4g} with "
              f"(C − C_min)/(C(0) − C_min) = {a['C_end_over_C0']:.3g}. ODE times at each level "
              "are the wall time prorated by s (steps of near-constant size).",
              f"Load average {info['loadavg_start'][0]:.1f} → {info['loadavg_end'][0]:.1f} "
              "(2 shared cores)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="diabetes,digits")
    ap.add_argument("--adam-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # before any array is built
    res, text = {"machine": machine()}, []
    for name in args.datasets.split(","):
        start = time.perf_counter()
        info, out = run(name, args.adam_seconds)
        info["total_seconds"] = time.perf_counter() - start
        res[name] = {"info": info, "results": out}
        text.append(table(info, out))
        print(text[-1], flush=True)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "real_data.json").write_text(
        json.dumps(res, indent=1, default=float))
    out_dir = ROOT / "benchmarks" / "results" / "real_data"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
