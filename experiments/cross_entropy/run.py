"""Study: softmax cross-entropy under the adapted and the standard flow (MATH §5).
Writes results.csv, table.md, figure.png.  Run: python experiments/cross_entropy/run.py"""

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
T1 = 1200.0
clusters = fl.gaussian_clusters(jr.PRNGKey(0), 4, 2, num_classes=3)
ds = fl.Dataset(clusters.inputs, fl.smooth_labels(clusters.targets, 0.3))
pb = fl.LeastSquaresProblem(fl.MLP(2, 3, (16,), key=jr.PRNGKey(1)), ds,
                            loss=fl.SoftmaxCrossEntropy())
loss = pb.loss
H = float(loss.minimum(pb.targets))
rows, runs = [], {}
for name, flow in (("adapted", fl.AdaptedFlow()), ("standard", fl.GradientFlow())):
    tr = fl.simulate(pb, flow, t1=T1, num_saves=121, rtol=1e-11, atol=1e-11)
    runs[name] = tr
    v = np.asarray(tr.valid)
    sums = np.asarray(loss.output_sums(tr.outputs))[v]
    xs = loss.minimiser(tr.outputs0, pb.targets)
    rows.append({
        "flow": name, "stop": tr.stop_reason, "K": pb.num_params, "QN": pb.num_outputs,
        "max |c_j(s) − c_j(0)|": float(np.max(np.abs(sums - sums[0]))),
        "max |X(T) − x*|": float(np.max(np.abs(np.asarray(pb.outputs(tr.theta_final)) - xs))),
        "C(T) − H": float(tr.cost_final) - H, "H (mean label entropy)": H,
        "C(0)": float(tr.cost0), "steps": int(tr.num_steps),
    })
    print(rows[-1], flush=True)

sys.path.insert(0, os.path.dirname(HERE))
from _results import write_results  # noqa: E402

print(write_results(HERE, rows, digits=3))

fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for name, tr in runs.items():
    v = np.asarray(tr.valid)
    ax[0].semilogy(np.asarray(tr.ts)[v], np.asarray(tr.cost)[v] - H + 1e-17, label=name)
    sums = np.asarray(loss.output_sums(tr.outputs))[v]
    ax[1].plot(np.asarray(tr.ts)[v], sums - sums[0], label=[f"{name} c_{j}" for j in range(4)])
ax[0].set(xlabel="s", ylabel="C(s) − H", title="cost above the mean label entropy")
ax[0].legend(fontsize=7)
ax[1].set(xlabel="s", ylabel="c_j(s) − c_j(0)", title="output sums: conserved by the adapted flow")
ax[1].legend(fontsize=6)
fig.tight_layout()
fig.savefig(os.path.join(HERE, "figure.png"), dpi=90)
