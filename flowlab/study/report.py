"""Summary tables of a run folder, derived from the RunRecord fields: which columns appear, their
headers, and how each is aggregated over the seeds of a cell (the header says how)."""

import math
import statistics

from .records import _AGG_LABEL, columns


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per cell: each column combined over seeds as its field's `aggregate` says
    (median, min, max, the first seed's value, or the distinct values joined by '/'); 'seeds'
    counts them."""
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r)
    spec = dict(columns())
    out = []
    for rs in by_cell.values():
        agg = {"seeds": len(rs)}
        for key in rs[0]:
            how = spec[key].metadata["aggregate"] if key in spec else "first"
            vals = [r.get(key) for r in rs]
            if how == "first":
                agg[key] = vals[0]
            elif how == "join":
                names = sorted({str(v) for v in vals})
                agg[key] = names[0] if len(names) == 1 else "/".join(names)
            else:
                nums = [float(v) for v in vals if isinstance(v, (int, float))
                        and not isinstance(v, bool) and not math.isnan(float(v))]
                if not nums:
                    agg[key] = math.nan
                else:
                    agg[key] = {"median": statistics.median, "min": min, "max": max}[how](nums)
        out.append(agg)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


#: record fields of the swept axes (flowlab.study.grid.AXES) where the names differ
_AXIS_FIELDS = {"num_points": "N", "in_size": "M", "out_size": "Q"}


def terminal_columns(config: dict) -> list[str]:
    """The terminal summary's columns when the config names none (output.columns): the flow,
    the swept axes, the stop, the measured and predicted rate, T_ε measured and predicted, the
    rate's relative error (and a PDE's L2 error): one line of ≤ 120 characters per cell.
    `flowlab report --all-columns` shows every column."""
    sweep = config.get("sweep") or {}
    axes = [_AXIS_FIELDS.get(a, a) for a in sweep if a not in ("seeds", "flow")
            and isinstance(sweep.get(a), list)]
    pde = ["error"] if (config.get("pde") or {}).get("problem") else []
    return ["flow", *axes, "stop_reason", "measured_rate", "predicted_rate_start",
            "T_eps_measured", "T_eps_predicted", "relative_error", *pde]


def report_columns(rows: list[dict], aggregated: bool,
                   only: list[str] | None = None) -> list[tuple[str, str]]:
    """(key, header) of the report table: the fields named in `only` (a config's
    output.columns), else those with a header that the rows hold and that say something
    (all-NaN columns and constant size columns left out)."""
    cols = []
    fields = columns(rows[0].keys() if rows else ())
    if only is not None:
        by_name = dict(fields)
        fields = [(k, by_name[k]) for k in only if k in by_name]
    for key, f in fields:
        header = f.metadata["header"] or key
        if only is None and f.metadata["header"] is None:
            continue
        values = [r.get(key) for r in rows]
        if only is None and all((isinstance(v, float) and math.isnan(v)) or v == ""
                                for v in values):
            continue
        if only is None and key in ("M", "depth", "Q", "activation", "step_size") and len(
                {str(v) for v in values}) == 1:
            continue
        label = _AGG_LABEL.get(f.metadata["aggregate"]) if aggregated else None
        cols.append((key, f"{header} ({label})" if label else header))
    if aggregated and (only is None or "seeds" in only):
        cols.insert(min(1, len(cols)) if only is None else only.index("seeds"), ("seeds", "seeds"))
    return cols


def table(rows: list[dict], aggregated: bool = True, markdown: bool = False,
          only: list[str] | None = None) -> str:
    """The rows as an aligned text table, or a Markdown table (columns: `report_columns`)."""
    if not rows:
        return "(no finished cells)"
    cols = report_columns(rows, aggregated, only)
    cells = [[_fmt(r.get(k, "")) for k, _ in cols] for r in rows]
    heads = [h for _, h in cols]
    if markdown:
        esc = lambda x: x.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(esc, heads)) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        lines += ["| " + " | ".join(map(esc, c)) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])
