"""`flowlab run|plot|report|info`: config-driven studies from the command line.

    flowlab run CONFIG [key.sub=value ...] [--out DIR] [--no-plot] [--quiet]
    flowlab plot RUN
    flowlab report RUN [--seeds] [--markdown FILE]
    flowlab info
"""

import argparse
import os
import sys

__all__ = ["main"]


def _fast_compile() -> None:
    """On CPU, compile with XLA's backend optimisation level 0 (FLOWLAB_XLA_OPT_LEVEL): a
    diffrax solve then compiles 3-4x faster, and the run time of these small problems is
    dominated by BLAS calls that the level does not touch. Must precede backend start-up."""
    import importlib.util

    level = os.environ.get("FLOWLAB_XLA_OPT_LEVEL", "0")
    flags = os.environ.get("XLA_FLAGS", "")
    gpu = any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                     "jax_rocm60_plugin"))
    if level not in ("", "default") and "xla_backend_optimization_level" not in flags and not gpu:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level={level}".strip()


def _set_precision(precision: str) -> None:
    # Must happen before any JAX array exists: x64 is a process-wide switch.
    _fast_compile()
    import jax

    jax.config.update("jax_enable_x64", precision == "float64")
    cache = os.environ.get("FLOWLAB_COMPILATION_CACHE", os.path.expanduser("~/.cache/flowlab/xla"))
    if cache and cache.lower() not in ("0", "off", "none"):
        try:
            os.makedirs(cache, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except (OSError, AttributeError):
            pass


def _err(msg: str) -> int:
    print(f"flowlab: error: {msg}", file=sys.stderr)
    return 2


def cmd_run(args) -> int:
    _fast_compile()  # XLA reads its flags when the backend starts: before anything else
    from .study.config import ConfigError, load_config

    try:
        study = load_config(args.config, args.overrides)
    except ConfigError as e:
        return _err(str(e))
    _set_precision(study.config["precision"])
    from .study.report import aggregate, table
    from .study.runner import run_study
    from .study.store import StoreError

    if args.jobs < 1:
        return _err(f"--jobs must be >= 1, got {args.jobs}")
    out = args.out or study.out_dir
    try:
        store = run_study(study, out, progress=not args.quiet, jobs=args.jobs)
    except StoreError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished cells are kept. Rerun the same command to resume:\n"
              f"  flowlab run {args.config} {' '.join(args.overrides)} --out {out}", file=sys.stderr)
        return 130
    cells = store.manifest["cells"]
    done = sum(c["status"] == "done" for c in cells.values())
    failed = {k: c.get("error", "") for k, c in cells.items() if c["status"] == "failed"}
    print(f"run folder: {store.path}  ({done}/{len(cells)} cells done)")
    print(f"summary:    {os.path.join(store.path, 'summary.csv')}")
    if done and not args.no_plot:
        from .study.plots import plot_run

        paths = plot_run(store.path)
        print("figures:    " + ", ".join(p for p in paths if p.endswith(".png")))
    if not args.quiet and done:
        print(table(aggregate(store.rows()), only=study.config["output"]["columns"]))
    for k, e in failed.items():
        print(f"cell {k} failed: {e}", file=sys.stderr)
    return 1 if failed else 0


def cmd_plot(args) -> int:
    from .study.plots import plot_run
    from .study.store import StoreError

    try:
        paths = plot_run(args.run, args.out)
    except StoreError as e:
        return _err(str(e))
    for p in paths:
        print(p)
    return 0


def cmd_report(args) -> int:
    from .study.report import aggregate, table
    from .study.store import RunStore, StoreError, atomic_write, read_summary

    try:
        store = RunStore(args.run)
        rows = read_summary(args.run)
    except StoreError as e:
        return _err(str(e))
    table_rows = rows if args.seeds else aggregate(rows)
    only = None if args.all_columns else store.config["output"].get("columns")
    print(table(table_rows, aggregated=not args.seeds, only=only))
    md_path = args.markdown or os.path.join(store.path, "report.md")
    cells = store.manifest["cells"]
    done = sum(c["status"] == "done" for c in cells.values())
    text = [f"# {store.manifest['name']}", "",
            f"Run folder `{store.path}`: {done}/{len(cells)} cells done, status "
            f"{store.manifest.get('status')}. "
            + ("One row per seed." if args.seeds else "One row per cell; each header says how "
               "its column combines the seeds (med, min, max; no label: equal for all seeds)."),
            "", table(table_rows, aggregated=not args.seeds, markdown=True, only=only), ""]
    fig_dir = os.path.join(store.path, "figures")
    for name in ("decay", "rates", "stopping_time"):
        p = os.path.join(fig_dir, f"{name}.png")
        if os.path.isfile(p):
            text.append(f"![{name}]({os.path.relpath(p, os.path.dirname(os.path.abspath(md_path)))})")
    atomic_write(md_path, "\n".join(text) + "\n")
    print(f"\nmarkdown: {md_path}")
    return 0


def cmd_info(args) -> int:
    _set_precision("float64" if not args.float32 else "float32")
    from .study.store import environment

    env = environment()
    for k, v in env["versions"].items():
        print(f"{k:>11}: {v}")
    print(f"{'platform':>11}: {env['platform']}")
    print(f"{'backend':>11}: {env['backend']}")
    print(f"{'devices':>11}: {', '.join(env['devices'])}")
    import jax.numpy as jnp

    print(f"{'float64':>11}: {'enabled' if env['x64'] else 'disabled'} (default float dtype "
          f"{jnp.zeros(()).dtype})")
    git = env["git"]
    print(f"{'git':>11}: {git['commit'] + (' (dirty)' if git['dirty'] else '') if git else 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowlab", description="Training as ODEs: config-driven studies "
                                "of the adapted gradient flow against the standard one.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) a study")
    r.add_argument("config", help="TOML config file")
    r.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="override config entries; values are TOML (strings may be bare)")
    r.add_argument("--out", help="run folder (default: output.dir, else runs/<config name>)")
    r.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="cells run at once (threads; default min(2, CPUs)): XLA compiles a "
                        "cell on one core, so two cores compile two cells at once")
    r.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    r.add_argument("--quiet", action="store_true", help="no progress bar or table")
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser("plot", help="draw a run's figures (PNG and PDF)")
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", help="figure folder (default RUN/figures)")
    pl.set_defaults(fn=cmd_plot)
    rep = sub.add_parser("report", help="print the summary table and write Markdown")
    rep.add_argument("run", help="run folder")
    rep.add_argument("--seeds", action="store_true", help="one row per seed, not per cell")
    rep.add_argument("--markdown", help="Markdown file (default RUN/report.md)")
    rep.add_argument("--all-columns", action="store_true",
                     help="every column, not only the config's output.columns")
    rep.set_defaults(fn=cmd_report)
    inf = sub.add_parser("info", help="versions, devices, float64 status")
    inf.add_argument("--float32", action="store_true", help=argparse.SUPPRESS)
    inf.set_defaults(fn=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
