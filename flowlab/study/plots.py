"""Figures of a run folder (matplotlib, Agg backend), each written as PNG and PDF.

- decay: log10 (C(s) − C_min)/(C(0) − C_min) against s, one panel per flow, one colour per cell,
  thin lines per seed, dashed the flow's own predicted curve from θ0 (`predicted_cost`: e^{−2κs}
  for the adapted flow, the NTK curve (κ/2)|e^{−κΘs}r0|² for the standard flow);
- rates: the fitted rate / 2κ against the swept axis (width by default), per flow, with the
  prediction (2κ for the adapted flow, 2κ·λ_min(Θ) at start and end for the standard flow);
- stopping_time: measured T_ε against predicted, with the diagonal;
- rank_map (when two data axes are swept, e.g. N × M): min λ_min(Θ) along the run per cell,
  annotated with K, QN and how the runs ended.
"""

import math
import os
from collections import defaultdict

import numpy as np

from .store import RunStore, StoreError, read_summary

__all__ = ["plot_run"]

_X_AXES = ("width", "N", "M", "depth", "Q")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder, name, dpi) -> list[str]:
    paths = []
    for ext in ("png", "pdf"):
        p = os.path.join(folder, f"{name}.{ext}")
        tmp = os.path.join(folder, f".{name}.tmp.{ext}")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, p)
        paths.append(p)
    return paths


def _varying(rows, keys):
    return [k for k in keys if len({str(r[k]) for r in rows}) > 1]


def _label(row, keys):
    return ", ".join(f"{k}={row[k]}" for k in keys) or row["cell"]


_MARKERS = "osD^v<>ph*"


#: seconds a run waits for another one drawing the same figures
FIGURES_TIMEOUT = 600.0


def plot_run(run_dir: str, out_dir: str | None = None, dpi: int = 110) -> list[str]:
    """Write the run's figures into RUN/figures (or out_dir), from every cell finished so far;
    returns the file paths.

    Runs that end at once (parts of one sweep) draw one after the other, under a lock in the
    figure folder, each reading the folder once it holds it: the last one draws every cell."""
    from filelock import FileLock, Timeout

    out_dir = out_dir or os.path.join(os.path.abspath(run_dir), "figures")
    os.makedirs(out_dir, exist_ok=True)
    lock = FileLock(os.path.join(out_dir, ".figures.lock"), thread_local=False)
    try:
        lock.acquire(timeout=FIGURES_TIMEOUT)
    except Timeout:
        raise StoreError(f"{out_dir} is in use: another run has drawn its figures for over "
                         f"{FIGURES_TIMEOUT:g} s; run `flowlab plot {run_dir}` later") from None
    try:
        return _draw(run_dir, out_dir, dpi)
    finally:
        lock.release()


def _draw(run_dir, out_dir, dpi) -> list[str]:
    plt = _plt()
    store = RunStore(run_dir)
    rows = read_summary(run_dir)
    paths = []
    for name, draw in (("decay", _decay), ("rates", _rates), ("rank_map", _rank_map),
                       ("stopping_time", _stopping_time)):
        fig = draw(plt, store, rows)
        if fig is None:  # not drawn for this run (rank_map needs two swept data axes)
            continue
        paths += _save(fig, out_dir, name, dpi)
        plt.close(fig)
    return paths


def _decay(plt, store, rows):
    """log10 of the relative excess cost against s, a panel per flow, a colour per architecture,
    dashed each seed's predicted curve."""
    flows = list(dict.fromkeys(r["flow"] for r in rows))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    by_cell = defaultdict(list)
    for r in rows:
        by_cell[r["cell"]].append(r)
    arch_keys = _varying(rows, ("width", "depth", "N", "M", "Q", "activation"))
    fig, axes = plt.subplots(1, len(flows), figsize=(4.2 * len(flows), 3.4), squeeze=False,
                             sharey=True)
    arch = list(dict.fromkeys(_label(by_cell[c][0], arch_keys) for c in cells))
    cmap = plt.get_cmap("viridis")
    colour = {a: cmap(i / max(1, len(arch) - 1) * 0.9) for i, a in enumerate(arch)}
    first_cell = {}
    for cid in cells:
        first_cell.setdefault(by_cell[cid][0]["flow"], cid)
    for ax, flow in zip(axes[0], flows):
        for cid in cells:
            first = by_cell[cid][0]
            if first["flow"] == flow:
                _decay_curves(ax, store.load_arrays(cid), colour[_label(first, arch_keys)],
                              _label(first, arch_keys), cid == first_cell[flow])
        ax.set_title(f"{flow} (dashed: theory)")
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("log10 (C(s) − C_min)/(C(0) − C_min)")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def _decay_curves(ax, a, col, label, first_of_flow):
    """One cell's seeds on the decay panel: the measured curve (saves and end point) and the
    flow's prediction from θ0 (NTK curve, e^{−2κs}, …), labelled once per cell and flow."""
    c_min = float(a["cost_min"]) if "cost_min" in a else 0.0
    for i in range(a["cost"].shape[0]):
        ok = a["valid"][i] & np.isfinite(a["cost"][i])
        t = np.append(a["ts"][i][ok], a["t_final"][i])
        scale = a["cost0"][i] - c_min
        c = (np.append(a["cost"][i][ok], a["cost_final"][i]) - c_min) / scale
        ax.plot(t, np.log10(np.maximum(c, 1e-300)), color=col, lw=0.8, alpha=0.7,
                label=label if i == 0 else None)
        if "predicted_cost" in a:
            p = a["predicted_cost"][i][ok] / scale
            shown = np.isfinite(p) & (p > 0)
            if np.any(shown):
                ax.plot(a["ts"][i][ok][shown], np.log10(p[shown]), "--", color="k",
                        lw=0.9, alpha=0.6, zorder=3,
                        label="theory (linearised at θ0)" if first_of_flow and i == 0 else None)


def _rates(plt, store, rows):
    """The fitted decay rate / 2κ against the swept axis, per flow (and other swept axes), with
    the predicted rate at the start and at the end (median over seeds)."""
    xs = _varying(rows, _X_AXES)
    xkey = xs[0] if xs else "width"
    group_keys = ["flow"] + [k for k in _varying(rows, ("depth", "N", "M", "Q", "activation"))
                             if k != xkey]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in group_keys)].append(r)
    for gi, (g, rs) in enumerate(groups.items()):
        col = plt.get_cmap("tab10")(gi % 10)
        name = ", ".join(f"{k}={v}" if k != "flow" else str(v) for k, v in zip(group_keys, g))
        x = np.array([float(r[xkey]) for r in rs])
        two_kappa = np.array([2 * r["kappa"] for r in rs])
        y = np.array([r["measured_rate"] for r in rs]) / two_kappa
        ax.scatter(x, y, s=14, color=col, marker=_MARKERS[gi % len(_MARKERS)],
                   label=f"{name}: measured")
        ux = np.unique(x)
        for col_name, style in (("predicted_rate_start", "--"), ("predicted_rate_end", ":")):
            p = np.array([r[col_name] for r in rs]) / two_kappa
            med = [np.nanmedian(p[x == u]) if np.any(np.isfinite(p[x == u])) else np.nan for u in ux]
            if np.any(np.isfinite(med)):
                ax.plot(ux, med, style, color=col, lw=1.2,
                        label=f"{name}: theory ({'start' if 'start' in col_name else 'end'})")
    ax.set_xscale("log" if xkey in ("width", "N", "M") else "linear")
    ax.set_yscale("log")
    lo_y, hi_y = ax.get_ylim()
    if hi_y < 10 * lo_y:  # all rates equal: show a decade around them, not round-off
        mid = math.sqrt(lo_y * hi_y)
        ax.set_ylim(mid / 5, mid * 5)
    ax.set_xlabel(xkey)
    ax.set_ylabel("decay rate of C / 2κ")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    return fig


def _rank_map(plt, store, rows):
    """Over two swept data axes (e.g. N × M), where the rank condition holds: min λ_min(Θ)
    along the run per cell, annotated with K, QN and how the runs ended; None with fewer."""
    data_axes = _varying(rows, ("N", "M", "width", "depth", "Q"))
    if len(data_axes) < 2:
        return None
    xa, ya = data_axes[0], data_axes[1]
    xv = sorted({r[xa] for r in rows})
    yv = sorted({r[ya] for r in rows})
    grid = np.full((len(yv), len(xv)), np.nan)
    notes = {}
    for (x, y) in {(r[xa], r[ya]) for r in rows}:
        rs = [r for r in rows if r[xa] == x and r[ya] == y]
        lam = [max(float(r["min_lambda_min"]), 1e-30) for r in rs if np.isfinite(r["min_lambda_min"])]
        i, j = yv.index(y), xv.index(x)
        grid[i, j] = np.log10(min(lam)) if lam else np.nan
        reasons = sorted({r["stop_reason"] for r in rs})
        notes[i, j] = f"K={rs[0]['K']}\nQN={rs[0]['QN']}\n" + "/".join(
            {"cost_target": "2κ ok", "rank_loss": "rank loss"}.get(x, x) for x in reasons)
    fig, ax = plt.subplots(figsize=(1.3 * len(xv) + 1.6, 1.0 * len(yv) + 1.2))
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for (i, j), t in notes.items():
        ax.text(j, i, t, ha="center", va="center", fontsize=6.5, color="w",
                bbox={"facecolor": "k", "alpha": 0.35, "lw": 0, "pad": 1})
    ax.set_xticks(range(len(xv)), [str(v) for v in xv])
    ax.set_yticks(range(len(yv)), [str(v) for v in yv])
    ax.set_xlabel(xa)
    ax.set_ylabel(ya)
    fig.colorbar(im, ax=ax, label="log10 min λ_min(Θ) along the run")
    fig.tight_layout()
    return fig


def _stopping_time(plt, store, rows):
    """Measured T_ε against predicted, per flow, with the diagonal; a run that never reached
    ε·C(0) drawn at its final s (a lower bound on its T_ε)."""
    flows = list(dict.fromkeys(r["flow"] for r in rows))
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    lo, hi, missing = math.inf, 0.0, 0
    for gi, flow in enumerate(flows):
        rs = [r for r in rows if r["flow"] == flow]
        p = np.array([r["T_eps_predicted"] for r in rs], float)
        m = np.array([r["T_eps_measured"] for r in rs], float)
        tf = np.array([r["t_final"] for r in rs], float)
        ok = np.isfinite(p) & np.isfinite(m) & (p > 0) & (m > 0)
        # not reached: the measured T_ε exceeds the simulated time (a lower bound)
        lower = np.isfinite(p) & (p > 0) & ~np.isfinite(m) & (tf > 0)
        missing += int(np.sum(~ok & ~lower))
        col = plt.get_cmap("tab10")(gi % 10)
        if np.any(ok):
            ax.scatter(p[ok], m[ok], s=16, marker=_MARKERS[gi % len(_MARKERS)], color=col,
                       label=flow)
            lo, hi = min(lo, p[ok].min(), m[ok].min()), max(hi, p[ok].max(), m[ok].max())
        if np.any(lower):
            ax.scatter(p[lower], tf[lower], s=22, marker="^", facecolors="none", edgecolors=col,
                       label=f"{flow}: not reached, T_ε > s_final")
            lo, hi = min(lo, p[lower].min(), tf[lower].min()), max(hi, p[lower].max(), tf[lower].max())
    if hi > 0:
        d = np.array([lo / 1.5, hi * 1.5])
        ax.plot(d, d, "k--", lw=1, label="measured = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
    eps = rows[0]["epsilon"]
    ax.set_xlabel(f"predicted T_ε = ln(1/ε)/rate, ε = {eps:g}")
    ax.set_ylabel("measured first s with C ≤ ε C(0)")
    if missing:
        ax.set_title(f"{missing} runs without a prediction or crossing (not shown)", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
