"""Shared by the study scripts: write a list of row dicts as results.csv and table.md."""

import csv
import os


def write_results(here: str, rows: list[dict], fmt) -> str:
    """Write rows to here/results.csv and as a Markdown table (cells through `fmt`) to
    here/table.md; return the table."""
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
