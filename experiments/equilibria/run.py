"""Study: equilibria and rank loss (MATH §4). Writes results.csv, figure.png and README.md here.

Run: python experiments/equilibria/run.py   (float64, a few minutes on 2 CPU cores)"""

import csv
import os

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import flowlab as fl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
rows = []


def record(case, start, pb, tr_or_theta, flow, predicted_cost=float("nan"), note=""):
    theta = tr_or_theta.theta_final if hasattr(tr_or_theta, "theta_final") else tr_or_theta
    eq = fl.analyse_equilibrium(pb, theta)
    rows.append({
        "case": case, "start": start, "flow": flow,
        "stop": getattr(tr_or_theta, "stop_reason", "-"),
        "K": pb.num_params, "QN": pb.num_outputs, "cost": eq.cost,
        "predicted_cost": predicted_cost,
        "rel_stationarity": eq.stationarity_relative, "rank_D": eq.rank,
        "rank_cutoff": eq.rank_cutoff, "rank<QN": eq.rank_deficient,
        "hessian_zero_eigs": eq.hessian_null_count, "K-r": eq.expected_null_dim,
        "note": note,
    })
    return eq


# 1. toy model X_j = u v a_j (K = 2, r = 1)
a = jnp.array([1.0, 2.0, -0.5, 0.7])
y = jnp.array([0.3, 1.0, 0.2, -0.4])
w_star = float(a @ y / (a @ a))
toy = fl.LeastSquaresProblem(fl.ScalarProductModel(1.0, 1.0), fl.Dataset(a[:, None], y[:, None]),
                             kappa=1.0)
angles = np.linspace(0.1, 2 * np.pi, 8, endpoint=False)
starts = np.stack([1.3 * np.cos(angles), 1.3 * np.sin(angles) * 0.6], 1)
flow = fl.AdaptedFlow(solver=fl.SVDSolver(rcond=1e-10))
tr = fl.simulate(toy, flow, jnp.asarray(starts), t1=30.0, num_saves=301, rtol=1e-12, atol=1e-12,
                 max_condition=None, save_theta=True)
c_star_toy = float(0.5 * (y @ y - (a @ y) ** 2 / (a @ a)))
toy_err = []
for i, (u0, v0) in enumerate(starts):
    pred = fl.product_model_endpoint(u0, v0, a, y)
    end = np.asarray(tr.theta_final[i])
    toy_err.append(float(np.max(np.abs(end - pred))))
    record("toy u·v·a", f"({u0:+.2f},{v0:+.2f})", toy, tr.seed(i), "adapted (svd)", c_star_toy,
           f"|end − predicted| = {toy_err[-1]:.1e}, uv − w* = {end[0] * end[1] - w_star:.1e}")

# 2. linear bottleneck MLP 4 -> 2 -> 3 with biases (K = 19 < QN = 24): reduced-rank regression
ds = fl.random_labels(jr.PRNGKey(3), 8, 4, 3)
xc = np.asarray(ds.inputs) - np.asarray(ds.inputs).mean(0)
yc = np.asarray(ds.targets) - np.asarray(ds.targets).mean(0)
fit = xc @ np.linalg.lstsq(xc, yc, rcond=None)[0]
c_star_lin = 0.5 * (np.sum((yc - fit) ** 2) + np.sum(np.linalg.svd(fit, compute_uv=False)[2:] ** 2))
lin_runs = {}
for seed in range(3):
    lin = fl.LeastSquaresProblem(fl.MLP(4, 3, (2,), "identity", key=jr.PRNGKey(seed)), ds, kappa=1.0)
    tr_l = fl.simulate(lin, flow, t1=60.0, num_saves=121, rtol=1e-11, atol=1e-11,
                       max_condition=None)
    lin_runs[seed] = tr_l
    record("linear bottleneck MLP", f"seed {seed}", lin, tr_l, "adapted (svd)", c_star_lin)

# 3. tanh MLP 1 -> 2 -> 1 on a target it cannot fit (K = 7 < QN = 16)
x = jnp.linspace(-1, 1, 16)
ds_t = fl.Dataset(x, jnp.sin(2.5 * jnp.pi * x) + 0.5 * x)
tanh_runs = {}
for seed in range(3):
    pt = fl.LeastSquaresProblem(fl.MLP(1, 1, (2,), key=jr.PRNGKey(seed)), ds_t, kappa=1.0)
    tr_d = fl.simulate(pt, fl.DampedFlow(damping=1e-3), t1=200.0, num_saves=201, rtol=1e-11,
                       atol=1e-11, theta_norm_max=1e3)
    tanh_runs[seed] = tr_d
    record("tanh MLP 1-2-1", f"seed {seed}", pt, tr_d, "damped λ=1e-3",
           note=f"|θ| = {float(tr_d.theta_norm[-1]):.1f} at s = 200")
    tr_q = fl.simulate(pt, fl.AdaptedFlow(solver="qr"), t1=200.0, num_saves=201, rtol=1e-11,
                       atol=1e-11, theta_norm_max=1e3)
    record("tanh MLP 1-2-1", f"seed {seed}", pt, tr_q, "adapted (qr), guards",
           note=f"stopped at s = {float(tr_q.t_final):.3g}")

keys = list(rows[0])
with open(os.path.join(HERE, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    w.writerows(rows)

fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
th = np.asarray(tr.theta)
for i in range(len(starts)):
    ax[0].plot(th[i, :, 0], th[i, :, 1], lw=1)
    ax[0].plot(*th[i, -1], "k.", ms=7)
uu = np.linspace(0.05, 2.5, 200)
for sgn in (1, -1):
    ax[0].plot(sgn * uu, w_star / (sgn * uu), "r--", lw=0.8)
ax[0].set(xlim=(-2, 2), ylim=(-2, 2), xlabel="u", ylabel="v",
          title="toy u·v·a: orbits end on uv = <a,Y>/|a|²")
for seed, t in lin_runs.items():
    ax[1].semilogy(t.ts, np.asarray(t.cost) - c_star_lin + 1e-16, label=f"bottleneck seed {seed}")
ax[1].set(xlabel="s", ylabel="C(s) − C*", title="linear bottleneck: C → reduced-rank fit")
ax[1].legend(fontsize=7)
for seed, t in tanh_runs.items():
    ax[2].plot(t.ts, t.cost, label=f"damped, seed {seed}")
ax[2].set(xlabel="s", ylabel="C(s)", yscale="log", title="tanh 1-2-1: C(∞) > 0")
ax[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(HERE, "figure.png"), dpi=90)


def fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


show = ["case", "start", "flow", "stop", "K", "QN", "cost", "predicted_cost", "rel_stationarity",
        "rank_D", "rank<QN", "hessian_zero_eigs", "K-r", "note"]
table = "| " + " | ".join(k.replace("|", "\\|") for k in show) + " |\n|" + "---|" * len(show) + "\n" + "".join(
    "| " + " | ".join(fmt(r[k]).replace("|", "\\|") for k in show) + " |\n" for r in rows)
eq_rows = [r for r in rows if r["rel_stationarity"] < 1e-6 and r["cost"] > 1e-6]
with open(os.path.join(HERE, "table.md"), "w") as f:
    f.write(table)
print(table)
print("equilibria with C > 0 found:", len(eq_rows), "all rank D < QN:",
      all(r["rank<QN"] for r in eq_rows), "max toy end-point error:", max(toy_err))
