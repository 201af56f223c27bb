"""Study: gradient flow as linear interpolation in output space (MATH §5): dθ/dt = D⁺(Y − X(0))
on t in [0, 1]. Writes results.csv, table.md, figure.png.  Run: python experiments/interpolation/run.py"""

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
ds = fl.smooth_regression(jr.PRNGKey(10), 16, 2)
rows, runs = [], {}
for width in (16, 32):
    for seed in range(3):
        pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (width, width), key=jr.PRNGKey(seed)), ds)
        tr = fl.interpolate(pb, num_saves=101, rtol=1e-10, atol=1e-10)
        dist, tau = fl.segment_distance(tr.outputs, tr.outputs0, tr.targets)
        runs[(width, seed)] = (tr, dist)
        rows.append({
            "width": width, "K": pb.num_params, "QN": pb.num_outputs, "seed": seed,
            "stop": tr.stop_reason, "max dist(X(t), segment)": float(dist.max()),
            "max |tau − t|": float(np.abs(tau - np.asarray(tr.ts)).max()),
            "C(1)/C(0)": float(tr.cost_final / tr.cost0),
            "min sigma_min": float(np.min(tr.sigma_min)), "steps": int(tr.num_steps),
        })
        print(rows[-1], flush=True)

sys.path.insert(0, os.path.dirname(HERE))
from _results import write_results  # noqa: E402

print(write_results(HERE, rows, digits=3))

fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for (width, seed), (tr, dist) in runs.items():
    t = np.asarray(tr.ts)
    ax[0].semilogy(t, np.asarray(tr.cost) / float(tr.cost0) + 1e-30, label=f"w={width} s{seed}")
    ax[1].semilogy(t, dist + 1e-17, label=f"w={width} s{seed}")
t = np.linspace(0, 1, 101)
ax[0].semilogy(t[:-1], (1 - t[:-1]) ** 2, "k:", label="(1 − t)²")
ax[0].set(xlabel="t", ylabel="C(t)/C(0)", title="cost reaches 0 at t = 1")
ax[0].legend(fontsize=6)
ax[1].set(xlabel="t", ylabel="distance to [X(0), Y]", title="outputs stay on the segment")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "figure.png"), dpi=90)
