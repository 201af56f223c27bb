"""Study: forward-Euler steps of the adapted flow (MATH §6): per-step cost ratio against
(1 − hκ)², and hκ = 1 (minimum-norm Gauss–Newton) converging quadratically.
Writes results.csv, table.md, figure.png.  Run: python experiments/discrete/run.py"""

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
pb = fl.LeastSquaresProblem(fl.MLP(2, 1, (16,), key=jr.PRNGKey(1)), fl.teacher(jr.PRNGKey(0), 8, 2),
                            kappa=1.0)
rows, runs = [], {}
for hk in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
    n = 40 if hk < 1 else 8
    tr = fl.euler_steps(pb, fl.AdaptedFlow(), step_size=hk / pb.kappa, num_steps=n,
                        diagnostics=False)
    c = np.asarray(tr.cost)
    c = c[np.isfinite(c)]
    runs[hk] = c
    ratio = c[1:] / c[:-1]
    live = c[1:] > 1e-24  # above the float64 floor
    r = np.sqrt(2 * c / pb.kappa)
    rows.append({
        "h*kappa": hk, "steps": len(c) - 1, "(1−hκ)²": (1 - hk) ** 2,
        "ratio step 1": float(ratio[0]),
        "ratio last live step": float(ratio[live][-1]),
        "|last − (1−hκ)²|": float(abs(ratio[live][-1] - (1 - hk) ** 2)),
        "|r_k| sequence (hκ=1)": " ".join(f"{v:.1e}" for v in r[:6]) if hk == 1 else "",
        "log|r_k+1|/log|r_k| (hκ=1)": " ".join(
            f"{np.log(r[k + 1]) / np.log(r[k]):.2f}" for k in range(1, 5) if r[k + 1] > 1e-14)
        if hk == 1 else "",
    })
    print(rows[-1], flush=True)

sys.path.insert(0, os.path.dirname(HERE))
from _results import write_results  # noqa: E402

print(write_results(HERE, rows, digits=4))

fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for hk, c in runs.items():
    ax[0].semilogy(np.arange(len(c)), c / c[0] + 1e-32, "o-", ms=3, label=f"hκ={hk}")
    if hk < 1:
        ax[1].plot(np.arange(1, len(c)), c[1:] / c[:-1], label=f"hκ={hk}")
        ax[1].axhline((1 - hk) ** 2, color="k", lw=0.5, ls=":")
ax[0].set(xlabel="step k", ylabel="C_k/C_0", ylim=(1e-32, 2), title="Euler steps of the adapted flow")
ax[0].legend(fontsize=7)
ax[1].set(xlabel="step k", ylabel="C_{k+1}/C_k", yscale="log",
          title="per-step ratio → (1 − hκ)² (dotted)")
ax[1].legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(HERE, "figure.png"), dpi=90)
