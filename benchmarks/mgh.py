"""The Moré–Garbow–Hillstrom problems from x0, 10·x0 and 100·x0: digits of the minimum per
contender, against the high-precision references (issue 20's test set).

    python benchmarks/mgh.py [--problems a,b] [--scales 1,10,100] [--contenders a,b]
                             [--num-steps 500] [--fresh] [--markdown-only]

Problems: the 35 of `flowlab.mgh.PROBLEMS` (MGH 1981, standard sizes), each posed by
`flowlab.mgh.residual_problem(name, scale)` (θ = x, C = |F|²/2, float64) from θ0 = scale·x0.
Every contender gets the same problem and returns its final x; the harness evaluates
f = |F(x)|² itself (float64, `MGHProblem.value`), so every contender is scored the same way.

**Success ("6 correct digits")**, against the reference f* of
benchmarks/results/mgh_reference.json (mpmath, `benchmarks/mgh_reference.py`):
- f* > 0: the log relative error LRE = −log10(|f − f*|/f*) ≥ 6 (LRE clipped to [0, 16];
  0 for a non-finite f);
- f* = 0: f ≤ 1e-24 (|F| ≤ 1e-12; MGH's zero-residual problems reach 1e-30 and below in
  float64 when solved, e.g. Rosenbrock 0, Powell badly scaled ~1e-32).
A run that ends at another local minimum (or a limit at infinity) fails unless its value is
the reference's; the harness names the local minimum it matched (`local_min`: an LRE ≥ 6
against a value in the reference's `local_minima` refined to a minimum, or the paper's
`other_values`).

**Contenders** (`CONTENDERS`: name → function(problem) returning the final x, or (x, info)
with info keys among iterations, nfev, njev, stop_reason):
- `scipy_lm`: `scipy.optimize.least_squares(method='lm')` (MINPACK lmder), Jacobian by
  jax.jacfwd, xtol = ftol = gtol = 1e-15, max_nfev = 20 000;
- `gn_backtracking`: `euler_steps(problem, AdaptedFlow(), num_steps=N, backtracking=True)`
  (today's Gauss–Newton steps h = 1/κ with step halving);
- `gn_plain`: `euler_steps(problem, AdaptedFlow(), num_steps=N)` (no line search).
N = `--num-steps` (500). To add a contender (e.g. the new LM route), add one entry:

    CONTENDERS["lm"] = lambda problem: fl.euler_steps(problem, fl.AdaptedFlow(), ...).theta_final

and run `python benchmarks/mgh.py --contenders lm`: runs are merged into the existing
benchmarks/results/mgh.json (same problem, scale and contender replaced; `--fresh` starts
over) and the markdown table benchmarks/results/mgh.md is rewritten from all of them.
Seconds are wall time per run including compilation on a problem's first scale: indicative.
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from _common import machine

from flowlab import baselines as bl

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = RESULTS / "mgh_reference.json"

#: success: at least this many correct digits of f* (LRE) where f* > 0 ...
SUCCESS_DIGITS = 6.0
#: ... and f at most this where f* = 0
ZERO_FLOOR = 1e-24
#: LRE is clipped to [0, MAX_DIGITS]
MAX_DIGITS = 16.0
SCIPY_MAX_NFEV = 20_000
NUM_STEPS = 500

SUCCESS_DEFINITION = (
    f"success = f* > 0: LRE = −log10(|f − f*|/f*) ≥ {SUCCESS_DIGITS:g} (f = |F(x)|² in float64 "
    f"at the contender's final x, f* the mpmath reference); f* = 0: f ≤ {ZERO_FLOOR:g}. "
    "A run that ends at another local minimum fails unless its value is the reference's.")


# --- scoring ----------------------------------------------------------------------------------


def log_relative_error(f: float, f_star: float) -> float:
    """LRE = −log10(|f − f*|/|f*|) clipped to [0, MAX_DIGITS] (0 for a non-finite f)."""
    if not math.isfinite(f):
        return 0.0
    err = abs(f - f_star)
    if err == 0:
        return MAX_DIGITS
    return float(min(MAX_DIGITS, max(0.0, -math.log10(err / abs(f_star)))))


def score(f: float, ref: dict) -> dict:
    """success, digits (LRE; None where f* = 0) and log10 f of a final value f against the
    reference entry `ref` of mgh_reference.json; `local_min` names the other local minimum
    (refined in mpmath by the reference) or value the paper states, that f matches to
    SUCCESS_DIGITS, if any."""
    f_star = ref["f_star_float"]
    log10_f = (math.log10(f) if f > 0 else -math.inf) if math.isfinite(f) else math.inf
    if ref["is_zero"]:
        success, digits = bool(math.isfinite(f) and f <= ZERO_FLOOR), None
    else:
        digits = log_relative_error(f, f_star)
        success = digits >= SUCCESS_DIGITS
    local = None
    if not success and math.isfinite(f):
        others = [m["value_float"] for m in ref.get("local_minima", []) if m.get("is_minimum")]
        others += list(ref.get("paper_other_values", []))
        for v in others:
            if v > 0 and log_relative_error(f, v) >= SUCCESS_DIGITS:
                local = v
                break
    return {"success": success, "digits": digits, "log10_f": log10_f, "local_min": local}


# --- contenders -------------------------------------------------------------------------------


def scipy_lm(problem):
    """MINPACK's lmder through scipy.optimize.least_squares(method='lm')
    (`flowlab.baselines.scipy_least_squares`), Jacobian by jax.jacfwd, tolerances 1e-15,
    max_nfev 20 000."""
    import numpy as np

    x0 = np.asarray(problem.theta0, np.float64)
    try:
        with np.errstate(all="ignore"):
            run = bl.scipy_least_squares(problem, method="lm", jac_mode="fwd", xtol=1e-15,
                                         ftol=1e-15, gtol=1e-15, max_nfev=SCIPY_MAX_NFEV)
    except Exception as e:
        return x0, {"stop_reason": f"error: {type(e).__name__}: {e}"[:120], "nfev": 0}
    info = run.info
    return run.thetas[-1], {"iterations": int(info["njev"] or 0), "nfev": info["nfev"],
                            "njev": int(info["njev"] or 0), "stop_reason": f"status "
                            f"{info['status']}: {info['message']}"[:120]}


def _euler(problem, **settings):
    import numpy as np

    import flowlab as fl

    tr = fl.euler_steps(problem, fl.AdaptedFlow(), num_steps=NUM_STEPS, diagnostics=False,
                        **settings)
    steps, rejected = int(tr.num_steps), int(tr.num_rejected_steps)
    return np.asarray(tr.theta_final), {
        "iterations": steps, "njev": steps, "nfev": steps + rejected + 1,
        "rejected": rejected, "stop_reason": tr.stop_reason}


def gn_backtracking(problem):
    """Gauss–Newton steps with step halving."""
    return _euler(problem, backtracking=True)


def gn_plain(problem):
    """Gauss–Newton steps h = 1/κ, no line search."""
    return _euler(problem, grid_search=None)


def flowlab_lm(problem):
    """Levenberg–Marquardt steps (`levenberg_marquardt=True`: gain-ratio damping, through the
    SVD of D for K < QN)."""
    return _euler(problem, levenberg_marquardt=True, max_backtracks=60)


def flowlab_default(problem):
    """`euler_steps(problem, AdaptedFlow())` with no settings (for a ResidualProblem: the
    truncated SVD and the grid line search)."""
    return _euler(problem)


#: name -> function(problem) returning the final x, or (x, info)
CONTENDERS: dict[str, Callable] = {
    "scipy_lm": scipy_lm,
    "gn_backtracking": gn_backtracking,
    "gn_plain": gn_plain,
    "flowlab_lm": flowlab_lm,
    "flowlab_default": flowlab_default,
}
LABELS = {"scipy_lm": "lm", "gn_backtracking": "GN+bt", "gn_plain": "GN", "flowlab_lm": "fl LM",
          "flowlab_default": "fl default"}


# --- running ----------------------------------------------------------------------------------


def run_one(spec, scale, name, fn, ref) -> dict:
    import numpy as np

    from flowlab import mgh

    problem = mgh.residual_problem(spec, scale)
    t = time.perf_counter()
    out = fn(problem)
    seconds = time.perf_counter() - t
    x, info = (out if isinstance(out, tuple) else (out, {}))
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        f = spec.value(x) if np.all(np.isfinite(x)) else math.nan
    if not math.isfinite(f):
        f = math.inf
    row = {"problem": spec.name, "number": spec.number, "scale": scale, "contender": name,
           "f": f, "f_star": ref["f_star_float"], **score(f, ref),
           "iterations": info.get("iterations"), "nfev": info.get("nfev"),
           "njev": info.get("njev"), "stop_reason": info.get("stop_reason"),
           "seconds": round(seconds, 3), "x": x.tolist()}
    return row


def _cell(row) -> str:
    if row is None:
        return ""
    if row["digits"] is not None:
        text = f"{row['digits']:.1f}"
    elif not math.isfinite(row["f"]):
        text = "inf"
    elif row["f"] == 0:
        text = "f=0"
    else:
        text = f"f=1e{math.floor(row['log10_f'])}"
    if row["success"]:
        return f"**{text}**"
    return text + ("°" if row.get("local_min") is not None else "")


def targets(runs, win="scipy_lm", lose="gn_backtracking"):
    """(problem, scale) pairs where `win` succeeds and `lose` fails."""
    by = {(r["problem"], r["scale"], r["contender"]): r for r in runs}
    return [(p, s) for (p, s, c), r in by.items() if c == win and r["success"]
            and (p, s, lose) in by and not by[(p, s, lose)]["success"]]


def markdown(data) -> str:
    from flowlab import mgh

    runs, meta = data["runs"], data["meta"]
    present = list(dict.fromkeys(r["contender"] for r in runs))
    contenders = [c for c in CONTENDERS if c in present] + [c for c in present
                                                             if c not in CONTENDERS]
    scales = sorted({r["scale"] for r in runs})
    by = {(r["problem"], r["scale"], r["contender"]): r for r in runs}
    names = [n for n in mgh.PROBLEMS if any(r["problem"] == n for r in runs)]
    pairs = [(n, s) for n in names for s in scales]
    lines = [
        "# Moré–Garbow–Hillstrom problems: digits of the minimum from x0, 10·x0, 100·x0", "",
        f"- date: {meta['date_utc']}; machine: {meta.get('cores', meta.get('nproc'))} cores, "
        f"{meta['cpu']} "
        f"({meta['platform']}); python {meta['python']}, jax {meta['jax']}, scipy "
        f"{meta['scipy']}",
        f"- git commit of the worktree: `{meta['git_commit']}`"
        + (" (with uncommitted changes)" if meta.get("git_dirty") else ""),
        f"- command: `{meta['command']}`",
        f"- {SUCCESS_DEFINITION}",
        f"- euler_steps runs: num_steps = {meta.get('num_steps')}; scipy lm: xtol = ftol = gtol "
        f"= 1e-15, max_nfev = {SCIPY_MAX_NFEV}. Times in mgh.json are indicative only.",
        "", "## Successes over all (problem, start) pairs", "",
        "| contender | successes | of |", "|---|---|---|"]
    for c in contenders:
        got = [by[(n, s, c)] for n, s in pairs if (n, s, c) in by]
        lines.append(f"| {c} | {sum(r['success'] for r in got)} | {len(got)} |")
    tg = targets(runs)
    back = targets(runs, "gn_backtracking", "scipy_lm")
    lines += ["", "Pairs where scipy lm succeeds and GN+backtracking fails (targets for LM): "
              + (", ".join(f"{p} ({s:g}·x0)" for p, s in tg) or "none"), "",
              "Pairs where GN+backtracking succeeds and scipy lm fails (an LM route must keep "
              "these: 'nowhere worse than today's Gauss–Newton steps'): "
              + (", ".join(f"{p} ({s:g}·x0)" for p, s in back) or "none"), "",
              "## Digits per problem, start and contender", "",
              "LRE of f where f* > 0 (bold: ≥ 6, a success); where f* = 0 the order of f (bold: "
              f"≤ {ZERO_FLOOR:g}); ° ended at another local minimum of the reference (or a value "
              "the paper states). Contenders: " + ", ".join(
                  f"{LABELS.get(c, c)} = {c}" for c in contenders), ""]
    head = ["#", "problem", "n", "m", "f*"]
    for s in scales:
        head += [f"{s:g}·x0 {LABELS.get(c, c)}" for c in contenders]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = {p["name"]: p for p in data["reference"]}
    for n in names:
        spec = mgh.PROBLEMS[n]
        fs = ref[n]["f_star_float"]
        cells = [str(spec.number), n, str(spec.n), str(spec.m), "0" if fs == 0 else f"{fs:.6g}"]
        for s in scales:
            cells += [_cell(by.get((n, s, c))) for c in contenders]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Stop reasons of the failures", ""]
    for n, s in pairs:
        fails = [by[(n, s, c)] for c in contenders if (n, s, c) in by
                 and not by[(n, s, c)]["success"]]
        if fails:
            lines.append(f"- {n} {s:g}·x0: " + "; ".join(
                f"{LABELS.get(r['contender'], r['contender'])}: f = {r['f']:.4g}, "
                f"{r['stop_reason']}" for r in fails))
    lines += ["", "## Notes", "",
              "- watson: x0 = 0, so its three starts coincide (MINPACK's own driver uses 10·1 "
              "and 100·1 there); they are counted as given.",
              "- gulf 10·x0 = (50, 25, 1.5) is the minimiser; at 100·x0 every residual "
              "exp(−|y_i − x2|^{x3}/x1) underflows, J = 0 there (ResidualProblem check off).",
              "- jennrich_sampson 100·x0: |F| ≈ 5e173, so f = |F|² overflows float64: "
              "C(θ0) = inf for flowlab (non_finite_start), while MINPACK works with |F| "
              "(its overflow-safe enorm) and runs.",
              "- euler_steps stop reason t1_reached = the step budget ran out.",
              "- linear_rank_1_zero: f1 = f_m = −1 are constant rows (check off).", ""]
    return "\n".join(lines)


def main(argv=None, contenders: dict[str, Callable] | None = None):
    global NUM_STEPS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--scales", default="1,10,100")
    ap.add_argument("--contenders", default=None, help="comma-separated (default: all)")
    ap.add_argument("--num-steps", type=int, default=NUM_STEPS)
    ap.add_argument("--out", default=str(RESULTS / "mgh"), help="path prefix of .json/.md")
    ap.add_argument("--fresh", action="store_true", help="do not merge into an existing json")
    ap.add_argument("--reference", default=str(REFERENCE), help="the mgh_reference.json")
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite the .md from the existing .json, run nothing")
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from flowlab import mgh

    NUM_STEPS = args.num_steps
    contenders = CONTENDERS if contenders is None else contenders
    chosen = list(contenders) if args.contenders is None else args.contenders.split(",")
    unknown = [c for c in chosen if c not in contenders]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {list(contenders)}")
    names = list(mgh.PROBLEMS) if args.problems is None else args.problems.split(",")
    scales = [float(s) for s in args.scales.split(",")]
    ref_path = Path(args.reference)
    if not ref_path.exists():
        raise SystemExit(f"{ref_path} is missing: run benchmarks/mgh_reference.py first")
    reference = json.loads(ref_path.read_text())
    ref = {p["name"]: p for p in reference["problems"]}
    missing = [n for n in names if n not in ref]
    if missing:
        raise SystemExit(f"no reference for {missing}: run benchmarks/mgh_reference.py "
                         f"--problems {','.join(missing)}")

    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    if args.markdown_only:
        out_md.write_text(markdown(json.loads(out_json.read_text())))
        print(f"wrote {out_md}")
        return
    runs = []
    if out_json.exists() and not args.fresh:
        runs = json.loads(out_json.read_text())["runs"]
    new = {}
    for n in names:
        spec = mgh.PROBLEMS[n]
        for s in scales:
            for c in chosen:
                row = run_one(spec, s, c, contenders[c], ref[n])
                new[(n, s, c)] = row
                digits = "—" if row["digits"] is None else f"{row['digits']:.1f}"
                print(f"{spec.number:2d} {n:27s} {s:5g}·x0 {c:16s} f = {row['f']:.6e} "
                      f"digits {digits:>4s} {'ok ' if row['success'] else 'NO '} "
                      f"{row['stop_reason']} ({row['seconds']:.1f} s, indicative)", flush=True)
    runs = [r for r in runs if (r["problem"], r["scale"], r["contender"]) not in new]
    runs += list(new.values())
    order = {n: i for i, n in enumerate(mgh.PROBLEMS)}
    runs.sort(key=lambda r: (order.get(r["problem"], 99), r["scale"], r["contender"]))
    meta = {**machine(provenance=True), "command": "python benchmarks/mgh.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "num_steps": NUM_STEPS}
    counts = {}
    for r in runs:
        counts.setdefault(r["contender"], [0, 0])
        counts[r["contender"]][0] += r["success"]
        counts[r["contender"]][1] += 1
    data = {"meta": meta, "success_definition": SUCCESS_DEFINITION,
            "counts": {c: {"successes": k, "runs": t} for c, (k, t) in counts.items()},
            "targets_scipy_succeeds_gn_backtracking_fails": [
                {"problem": p, "scale": s} for p, s in targets(runs)],
            "gn_backtracking_succeeds_scipy_fails": [
                {"problem": p, "scale": s} for p, s in targets(runs, "gn_backtracking",
                                                                "scipy_lm")],
            "reference": [{k: ref[n][k] for k in ("name", "number", "f_star", "f_star_float",
                                                 "is_zero")} for n in ref],
            "runs": runs}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    out_md.write_text(markdown(data))
    for c, v in data["counts"].items():
        print(f"{c}: {v['successes']} of {v['runs']}")
    print(f"wrote {out_json} and {out_md}")


if __name__ == "__main__":
    main()
