"""The sweep grid of a Study: every combination of the swept axes is a Cell."""

import dataclasses
import itertools

#: grid axes in nesting order (the flow innermost: flows of one architecture run side by side)
#: and the config entry each one sets.
AXES = {
    "num_points": ("data", "num_points"),
    "in_size": ("data", "in_size"),
    "out_size": ("data", "out_size"),
    "depth": ("model", "depth"),
    "width": ("model", "width"),
    "activation": ("model", "activation"),
    "step_size": ("integrator", "step_size"),
    "seeds": None,
    "flow": None,
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: `values` holds every axis, `id` names the swept ones."""

    id: str
    values: dict


def _base_values(config: dict) -> dict:
    seeds = config["sweep"]["seeds"]
    values = {a: config[s][k] for a, (s, k) in
              ((a, p) for a, p in AXES.items() if p is not None)}
    values["seeds"] = seeds if isinstance(seeds, int) else seeds[0]
    return values


def expand_grid(study) -> list[Cell]:
    """The cells of the sweep, in a fixed order."""
    sweep = study.config["sweep"]
    axes = {}
    for a in AXES:
        v = sweep.get(a)
        if a == "seeds":
            v = v if isinstance(v, list) else None
        if v is not None:
            axes[a] = list(dict.fromkeys(v))
    base = _base_values(study.config)
    cells = []
    for combo in itertools.product(*axes.values()):
        values = {**base, **dict(zip(axes, combo))}
        parts = [f"{a}-{values[a]}" for a in axes if a != "flow" and len(axes[a]) > 1]
        parts.append(f"flow-{values['flow']}")
        cells.append(Cell("__".join(parts), values))
    return cells
