"""A cell's peak memory, estimated before it runs, so that a cell too large for the machine is
refused with what to change instead of crashing inside XLA."""

import os

#: copies of θ a solve keeps per seed (θ, the velocity, Runge–Kutta stages, the saved final θ,
#: gradients of the line search): a deliberate over-count
THETA_COPIES = 12
#: margin on the available memory
USABLE_FRACTION = 0.9


def available_bytes() -> int | None:
    """The memory this process may use: the device's bytes_limit on a GPU/TPU, else physical
    RAM, capped by an address-space limit (RLIMIT_AS) where one is set."""
    limits = []
    try:
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    except Exception:  # a backend that reports nothing
        pass
    if not limits:
        try:
            limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            limits.append(int(soft))
    except (ImportError, ValueError, OSError):
        pass
    return min(limits) if limits else None


def mlp_num_params(in_size: int, widths, out_size: int, bias: bool = True) -> int:
    """K of an MLP: Σ_l (fan_in + bias)·fan_out."""
    sizes = [in_size, *widths, out_size]
    return sum((a + int(bias)) * b for a, b in zip(sizes[:-1], sizes[1:]))


def estimate_cell_bytes(study, values: dict) -> int | None:
    """Peak bytes of one cell of an MLP data fit: THETA_COPIES·K per seed in flight, the Gram
    (QN)² (and its factor) and the layerwise signals N·Q·Σ widths; None where the config is not
    an MLP data fit (a PDE, a file: sizes known only once built)."""
    from .build import hidden_widths

    config = study.config
    if config.get("pde", {}).get("problem") or config["data"].get("file"):
        return None
    n, m, q = values.get("num_points"), values.get("in_size"), values.get("out_size")
    if not all(isinstance(v, int) for v in (n, m, q)):
        return None
    widths = hidden_widths(study, values)
    k = mlp_num_params(m, widths, q, config["model"]["use_bias"])
    item = 4 if config["precision"] == "float32" else 8
    qn = q * n
    seeds_in_flight = 1  # seeds run one after another on a CPU ('map'); a GPU batch is vmapped
    return item * (THETA_COPIES * k * seeds_in_flight + 2 * qn * qn + 2 * n * q * sum(widths))


def too_large(study, cells) -> str | None:
    """A message for the first cell whose estimate exceeds the available memory, else None."""
    available = available_bytes()
    if available is None:
        return None
    for cell in cells:
        need = estimate_cell_bytes(study, cell.values)
        if need is not None and need > USABLE_FRACTION * available:
            return (f"cell {cell.id} needs about {need / 2**30:.1f} GiB (θ and its copies, the "
                    f"Gram), more than the {available / 2**30:.1f} GiB this process may use; "
                    "make the model or N smaller, run fewer seeds at once, use the matrix-free "
                    "route (flows.*.solver = 'nystrom'), or spread the rows over more devices "
                    "or processes (ShardedGram)")
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is XLA running out of memory."""
    text = f"{type(error).__name__}: {error}"
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text
