"""Shared by the study scripts: write a list of row dicts as results.csv and table.md."""

import csv
import os


def write_results(here: str, rows: list[dict], digits: int = 3) -> str:
    """Write rows to here/results.csv and as a Markdown table (floats to `digits` significant
    digits) to here/table.md; return the table."""

    def fmt(v):
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    with open(os.path.join(here, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    keys = list(rows[0])

    def cells(values):
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |\n"

    table = cells(keys) + "|" + "---|" * len(keys) + "\n"
    table += "".join(cells([fmt(r[k]) for k in keys]) for r in rows)
    with open(os.path.join(here, "table.md"), "w") as f:
        f.write(table)
    return table
