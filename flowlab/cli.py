"""`flowlab run|plot|report|info`: config-driven studies from the command line.

    flowlab run CONFIG [key.sub=value ...] [--out DIR] [--part I/N] [--no-plot] [--quiet]
    flowlab plot RUN
    flowlab report RUN [--seeds] [--markdown FILE]
    flowlab info
"""

import argparse
import os
import re
import shlex
import sys

__all__ = ["main"]


def _set_precision(precision: str) -> None:
    # Must happen before any JAX array exists: x64 is a process-wide switch.
    import jax

    jax.config.update("jax_enable_x64", precision == "float64")
    from ._cache import enable_compilation_cache

    # every executable, not only those over 1 s: a study compiles ~80 small functions
    # (diagnostics, θ0, statistics) per shape; cached, a warm tiny run takes half the time
    if enable_compilation_cache() is not None:
        _checks_without_callbacks()


_debug = False  # --debug: equinox keeps raising its checks


def _checks_without_callbacks() -> None:
    """Let the persistent cache hold the compiled solves. JAX never stores an executable with
    host callbacks, and every diffrax solve has two: `eqx.error_if` checks of the save times
    (increasing, within [t0, t1]), which raise through a callback because the times are traced.
    The config has checked them before any solve (IntegratorOptions), so this process makes
    equinox's failed checks NaN the result instead (EQX_ON_ERROR=nan semantics; no callback).
    What it saves: docs, Getting started (the compilation cache). An explicit
    EQX_ON_ERROR (or --debug) keeps equinox's own setting."""
    if "EQX_ON_ERROR" in os.environ or _debug:
        return
    try:
        import equinox._errors as eqx_errors
    except ImportError:
        return
    if getattr(eqx_errors, "EQX_ON_ERROR", None) == "raise":
        eqx_errors.EQX_ON_ERROR = "nan"


def _err(msg: str) -> int:
    print(f"flowlab: error: {' '.join(str(msg).splitlines())}", file=sys.stderr)  # one line
    return 2


def parse_part(text: str) -> tuple[int, int] | None:
    """`--part I/N` as (I, N), or None unless I and N are integers with 1 <= I <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not 1 <= int(m[1]) <= int(m[2]):
        return None
    return int(m[1]), int(m[2])


def cmd_run(args) -> int:
    part = None
    if args.part is not None and (part := parse_part(args.part)) is None:
        return _err(f"--part expects I/N, part I of N with integers 1 <= I <= N (e.g. --part "
                    f"2/8), got {args.part!r}")
    from .study.config import ConfigError, load_config

    try:
        study = load_config(args.config, args.overrides)
    except ConfigError as e:
        return _err(str(e))
    from .study.store import StoreError, check_run_folder

    if args.jobs < 1:
        return _err(f"--jobs must be >= 1, got {args.jobs}")
    out = args.out or study.out_dir
    try:
        check_run_folder(out)  # before the JAX backend starts or anything is written
    except StoreError as e:
        return _err(str(e))
    _set_precision(study.config["precision"])
    from .study.grid import expand_grid
    from .study.memory import too_large
    from .study.runner import part_cells, run_study

    cells = expand_grid(study)
    mine = part_cells(cells, part)
    refusal = too_large(study, mine)  # only this part's cells run here
    if refusal is not None:  # before a byte is allocated: exit 2, what to change
        return _err(f"{args.config}: {refusal}")
    if part is not None and not mine:
        print(f"flowlab: part {args.part} has no cells (the sweep has {len(cells)})",
              file=sys.stderr)
    try:
        store = run_study(study, out, progress=not args.quiet, jobs=args.jobs, part=part)
    except (StoreError, ConfigError) as e:
        return _err(str(e))
    except KeyboardInterrupt:
        command = shlex.join(["flowlab", "run", args.config, *args.overrides, "--out", out,
                              *(["--part", args.part] if part else [])])
        print(f"\ninterrupted; finished cells are kept. Rerun the same command to resume:\n"
              f"  {command}", file=sys.stderr)
        return 130
    return _run_outcome(args, study, store, {c.id for c in mine})


def _run_outcome(args, study, store, mine: set[str]) -> int:
    """Print where the results are (figures drawn from every finished cell, other parts'
    too), the table, and the failures of this run's cells; returns the exit code."""
    from .study.report import aggregate, table

    cells = store.manifest["cells"]
    done = sum(c["status"] == "done" for c in cells.values())
    failed = {k: c.get("error", "") for k, c in cells.items()
              if c["status"] == "failed" and k in mine}
    print(f"run folder: {store.path}  ({done}/{len(cells)} cells done)")
    print(f"summary:    {os.path.join(store.path, 'summary.csv')}")
    if done and not args.no_plot:
        from .study.plots import plot_run

        paths = plot_run(store.path)
        print("figures:    " + ", ".join(p for p in paths if p.endswith(".png"))
              + (f"  (from {done} of {len(cells)} cells; redrawn by each run that ends)"
                 if done < len(cells) else ""))
    if not args.quiet and done:
        from .study.report import terminal_columns

        print(table(aggregate(store.rows()),
                    only=study.config["output"]["columns"] or terminal_columns(study.config)))
    for k, e in failed.items():
        print(f"cell {k} failed: {e}", file=sys.stderr)
    runs_failed = [r for r in store.rows() if r.get("failure") and r["cell"] in mine]
    for r in runs_failed:
        print(f"run {r['cell']} seed {r['seed']} failed: {r['failure']}", file=sys.stderr)
    if runs_failed:
        print(f"{len(runs_failed)} of {sum(r['cell'] in mine for r in store.rows())} runs failed "
          "(exit code 3)",
              file=sys.stderr)
    return 1 if failed else 3 if runs_failed else 0


def cmd_plot(args) -> int:
    from .study.plots import plot_run
    from .study.store import RunStore, StoreError

    try:
        store = RunStore(args.run)
        for note in store.check():  # damaged files are named, not plotted
            print(f"flowlab: {note}", file=sys.stderr)
        if not store.rows():
            return _err(f"{store.path} has no finished cell to plot")
        paths = plot_run(args.run, args.out)
    except StoreError as e:
        return _err(str(e))
    except OSError as e:
        where = e.filename or args.out or os.path.join(args.run, "figures")
        return _err(f"cannot write the figures to {where}: {e.strerror or e}; pass --out DIR "
                    "to write them elsewhere")
    for p in paths:
        print(p)
    return 0


def cmd_report(args) -> int:
    from .study.report import aggregate, table
    from .study.store import RunStore, StoreError, atomic_write

    try:
        store = RunStore(args.run)
        for note in store.check():  # damaged files are named, not reported
            print(f"flowlab: {note}", file=sys.stderr)
        rows = store.summary_rows()  # from the verified cells
        only = None if args.all_columns else (store.config.get("output") or {}).get("columns")
    except StoreError as e:
        return _err(str(e))
    if not rows:
        return _err(f"{store.path} has no finished cell to report")
    table_rows = rows if args.seeds else aggregate(rows)
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
    try:  # written before the table is printed: a failure is one message, not half a report
        atomic_write(md_path, "\n".join(text) + "\n")
    except StoreError as e:
        return _err(f"{e}; pass --markdown FILE to write the report elsewhere")
    print(table(table_rows, aggregated=not args.seeds, only=only))
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
    debug_help = "show the Python traceback of an error (and let equinox raise its checks)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) a study", parents=[common])
    r.add_argument("config", help="TOML config file")
    r.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="override config entries; values are TOML (strings may be bare)")
    r.add_argument("--out", help="run folder (default: output.dir, else runs/<config name>)")
    r.add_argument("--part", metavar="I/N",
                   help="compute part I of N of the sweep: the cells whose index in grid order "
                        "(from 0) is I-1 mod N; any number of parts (cluster jobs) may run at "
                        "once on one folder")
    r.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="cells run at once (threads; default min(2, CPUs)): XLA compiles a "
                        "cell on one core, so two cores compile two cells at once")
    r.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    r.add_argument("--quiet", action="store_true", help="no progress bar or table")
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser("plot", help="draw a run's figures (PNG and PDF)", parents=[common])
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", help="figure folder (default RUN/figures)")
    pl.set_defaults(fn=cmd_plot)
    rep = sub.add_parser("report", help="print the summary table and write Markdown", parents=[common])
    rep.add_argument("run", help="run folder")
    rep.add_argument("--seeds", action="store_true", help="one row per seed, not per cell")
    rep.add_argument("--markdown", help="Markdown file (default RUN/report.md)")
    rep.add_argument("--all-columns", action="store_true",
                     help="every column, not only the config's output.columns")
    rep.set_defaults(fn=cmd_report)
    inf = sub.add_parser("info", help="versions, devices, float64 status", parents=[common])
    inf.add_argument("--float32", action="store_true", help=argparse.SUPPRESS)
    inf.set_defaults(fn=cmd_info)
    return p


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 some cells failed (or an internal error), 2 bad input (config,
    data file, run folder, file system), 3 some runs failed (max_steps, a non-finite field or
    start, a solver failure, or an adapted run that missed the cost target its T_ε promised),
    130 interrupted. Errors are one line naming the path;
    `--debug` shows the traceback instead."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run" and not any(a.startswith("-") for a in extra):
        args.overrides += extra  # overrides after options: run CONFIG --out DIR key=value
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    global _debug
    _debug = args.debug
    if args.debug:
        return args.fn(args)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("\nflowlab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- no traceback reaches the user without --debug
        from .data import DataFileError
        from .study.config import ConfigError
        from .study.store import StoreError

        if isinstance(e, (ConfigError, DataFileError, StoreError)):
            return _err(str(e))
        if isinstance(e, OSError):
            where = f"{e.filename}: " if e.filename else ""
            return _err(f"{where}{e.strerror or e}")
        _err(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
