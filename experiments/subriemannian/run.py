"""Study: sub-Riemannian lengths of the adapted and the standard flow across widths (MATH §3.5).
Writes results.csv, table.md and figure.png here.  Run: python experiments/subriemannian/run.py"""

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import flowlab as fl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T1 = 10.0
# geometric save grid: resolves the standard flow's fast early modes for the trapezoid rule
TS = np.concatenate([[0.0], np.geomspace(1e-4, T1, 600)])
ds = fl.teacher(jr.PRNGKey(0), 8, 2)
rows, curves = [], {}
for width in (8, 16, 32):
    pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (width,), key=jr.PRNGKey(width)), ds, kappa=1.0)
    for name, flow in (("adapted", fl.AdaptedFlow()), ("standard", fl.GradientFlow())):
        tr = fl.simulate(pb, flow, t1=T1, ts=TS, rtol=1e-10, atol=1e-10,
                         extras=fl.SUBRIEMANNIAN_EXTRAS, save_theta=True)
        L = fl.path_lengths(tr)
        curves[(width, name)] = tr
        pred = L["output_distance"] * (1 - np.exp(-pb.kappa * T1)) if name == "adapted" else np.nan
        rows.append({
            "width": width, "K": pb.num_params, "flow": name, "stop": tr.stop_reason,
            "C(T)/C(0)": float(tr.cost_final / tr.cost0),
            "g_length": L["g_length"], "g_length_err_est": L["g_length_error"],
            "predicted_g_length": pred, "output_chord": L["output_chord"],
            "g/chord": L["g_ratio"], "|X0-Y|": L["output_distance"],
            "euclid_length": L["euclidean_length"], "theta_chord": L["parameter_chord"],
            "bound |X0-Y|/min sigma_min": L["output_distance"] / float(np.min(tr.sigma_min)),
            "max_vertical_fraction": L["max_vertical_fraction"],
        })
        print(rows[-1], flush=True)

sys.path.insert(0, os.path.dirname(HERE))
from _results import write_results  # noqa: E402

print(write_results(HERE, rows, digits=4))

fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for (width, name), tr in curves.items():
    ls = "-" if name == "adapted" else "--"
    x = np.asarray(tr.outputs)
    done = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
    ax[0].plot(done, np.linalg.norm(x - np.asarray(tr.targets), axis=1), ls,
               label=f"{name} w={width}")
    ax[1].loglog(TS[1:], np.asarray(tr.extras["vertical_fraction"])[1:] + 1e-17, ls,
                 label=f"{name} w={width}")
ax[0].set(xlabel="output path length so far", ylabel="|X − Y|",
          title="adapted: slope −1 (straight, g-geodesic)")
ax[0].legend(fontsize=7)
ax[1].set(xlabel="s", ylabel="|P_ker D θ'| / |θ'|", title="horizontality (round-off level)")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "figure.png"), dpi=90)
