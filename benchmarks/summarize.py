"""Condense benchmark JSON files (from run.py) into the README's Markdown tables.

    python benchmarks/summarize.py benchmarks/results/*.json
"""

import json
import sys
from pathlib import Path

ORDER = ["layerwise+cholesky", "jacrev+cholesky", "jacfwd+cholesky", "cg (matrix-free)"]


def field_table(field) -> list[str]:
    cells = {}
    for r in field["rows"]:
        cells[(r["N"], r["width"], r["K"])] = cells.get((r["N"], r["width"], r["K"]), {})
        cells[(r["N"], r["width"], r["K"])][r["strategy"]] = r
    skipped = {(s["N"], s["width"], s["strategy"]) for s in field["skipped"]}
    head = "| N | width | K | " + " | ".join(f"{s} ms (MiB)" for s in ORDER)
    head += " | layerwise GFLOP/s | jacrev / layerwise | jacrev rel. diff | CG rel. diff |"
    lines = [head, "|" + "---:|" * (3 + len(ORDER) + 4)]
    for (n, w, k), row in sorted(cells.items()):
        parts = []
        for s in ORDER:
            if s in row:
                r = row[s]
                mem = "–" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
                fin = "" if r.get("finite", True) else " (not finite)"
                parts.append(f"{r['seconds'] * 1e3:.2f} ({mem}){fin}")
            else:
                parts.append("skipped" if (n, w, s) in skipped else "–")
        lw = row.get("layerwise+cholesky")
        rate = f"{lw['flop_rate'] / 1e9:.1f}" if lw and lw["flop_rate"] else "–"
        jr = row.get("jacrev+cholesky")
        ratio = f"{jr['seconds'] / lw['seconds']:.0f}×" if lw and jr else "–"
        diffs = []
        for s in ("jacrev+cholesky", "cg (matrix-free)"):
            r = row.get(s)
            ok = r and r["rel_diff_vs_layerwise"] is not None
            diffs.append(f"{r['rel_diff_vs_layerwise']:.1e}" if ok else "–")
        lines.append(f"| {n} | {w} | {k} | " + " | ".join(parts)
                     + f" | {rate} | {ratio} | {diffs[0]} | {diffs[1]} |")
    return lines


def fit_table(rows) -> list[str]:
    lines = [("| method | time to target (s) | evaluations / steps | C_final / C(0) | reached | "
             "compile (s) | notes |"), "|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        cs = "–" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        secs = "–" if r["seconds"] != r["seconds"] else f"{r['seconds']:.3f}"
        ratio = "–" if r["cost_ratio"] != r["cost_ratio"] else f"{r['cost_ratio']:.1e}"
        lines.append(f"| {r['method']} | {secs} | {r['evals']} | {ratio} | "
                     f"{'yes' if r['reached'] else 'no'} | {cs} | {r['note']} |")
    return lines


def main(paths):
    fit_rows, out = [], []
    for path in paths:
        res = json.loads(Path(path).read_text())
        m = res["machine"]
        out.append(f"<!-- {Path(path).name}: {m['cpu']}, {m['cores']} cores, {m['backend']}, "
                   f"{m['date_utc']}, load {m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f} -->")
        if "field" in res:
            out += ["", f"matmul reference: {res['field']['matmul_rate'] / 1e9:.1f} GFLOP/s", ""]
            out += field_table(res["field"])
        if "fit" in res:
            fit_rows += res["fit"]["rows"]
        if "study" in res:
            s = res["study"]
            q = s["quickstart"]
            out += ["", f"quickstart: {q['seconds']:.1f} s, rc {q['returncode']}" if q else
                    "quickstart: skipped", "", "| seeds | wall (s) | per seed (ms) | compile (s) |",
                    "|---:|---:|---:|---:|"]
            out += [f"| {r['seeds']} | {r['seconds']:.2f} | {r['per_seed'] * 1e3:.0f} | "
                    f"{r['compile_seconds']:.1f} |" for r in s["seeds"]["rows"]]
    if fit_rows:
        out += [""] + fit_table(fit_rows)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
