"""MkDocs hook: the configuration reference, generated from the config schema and the metadata of
`flowlab.IntegratorOptions` at build time (so it cannot drift from the code)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def config_reference() -> str:
    """The markdown of docs/reference/config.md's generated part."""
    from flowlab.integrate import IntegratorOptions
    from flowlab.study.config import SCHEMA, SCHEMA_DOCS

    lines = ["## [integrator]: IntegratorOptions", "",
             "Every field of `flowlab.IntegratorOptions` that a config may set, with its default and "
             "the values it takes; the same names are keywords of `simulate` and `euler_steps`.", "",
             "| key | default | expected | meaning |", "|---|---|---|---|"]
    for name, f in IntegratorOptions.fields().items():
        if not f.metadata["config"]:
            continue
        lines.append(f"| `{name}` | `{f.default!r}` | {f.metadata['check'].expected} | "
                     f"{f.metadata['doc'].replace('|', '/')} |")
    lines += ["", "In a config, t1 defaults to 'auto' (t1_factor·T_ε) when a cost target is set, and to 10 otherwise. "
              "Also in [integrator]: `method` ('ode' or 'euler', default 'ode') and `t1_factor` "
              "(t1 = 'auto' runs to t1_factor·T_ε, default 1.5).", ""]
    for section, spec in SCHEMA.items():
        if section == "integrator" or not isinstance(spec, dict):
            continue
        title = f"[{section}]" if section else "top level"
        lines += [f"## {title}", "", "| key | default | expected | meaning |", "|---|---|---|---|"]
        for key, (check, default) in spec.items():
            expected = (getattr(check, "expected", "") or "a table").replace("|", "/")
            meaning = SCHEMA_DOCS[section][key].replace("|", "/")
            lines.append(f"| `{key}` | `{default!r}` | {expected} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def stop_reasons() -> str:
    """The table of stop reasons, from flowlab.RESULTS (one enumeration for both integrators)."""
    from flowlab.integrate import FAILURES, STOP_REASONS, stop_message

    lines = ["| stop reason | a failure (exit 3) | meaning |", "|---|---|---|"]
    for name in STOP_REASONS:
        lines.append(f"| `{name}` | {'yes' if name in FAILURES else ''} | "
                     f"{stop_message(name).replace('|', '/')} |")
    return "\n".join(lines)


#: where a public name lives -> the API page's section
_GROUPS = (("problem", "Problems"), ("losses", "Losses"), ("flows", "Flows"),
           ("integrate", "Integrating"), ("linalg", "Pseudo-inverse solvers, Gram matrices, spectra"),
           ("nets", "Models"), ("data", "Data"), ("theory", "Theory"), ("geometry", "Geometry"),
           ("equilibria", "Equilibria"), ("interpolation", "Interpolation"),
           ("devices", "Devices"), ("_cache", "Compilation cache"), ("_checks", "Settings"))


def api_reference() -> str:
    """`::: flowlab.NAME` for every public name of flowlab, grouped by the subpackage that
    defines it, then each public module."""
    import types

    import flowlab

    names = sorted(n for n in dir(flowlab) if not n.startswith("_"))
    modules = [n for n in names if isinstance(getattr(flowlab, n), types.ModuleType)]
    groups = {title: [] for _, title in _GROUPS}
    other = []
    for name in names:
        if name in modules:
            continue
        owner = getattr(getattr(flowlab, name), "__module__", None) or ""
        part = owner.split(".")[1] if owner.startswith("flowlab.") else ""
        title = dict(_GROUPS).get(part)
        (groups[title] if title else other).append(name)
    lines = []
    for title, members in [*groups.items(), ("Constants and tables", other)]:
        if members:
            lines += [f"## {title}", ""] + [f"::: flowlab.{m}" for m in members] + [""]
    lines += ["## Modules", ""] + [f"::: flowlab.{m}\n    options:\n      members: false"
                                   for m in modules]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "reference/api.md":
        return markdown.replace("<!-- generated: api -->", api_reference())
    if page.file.src_uri == "reference/config.md":
        return markdown.replace("<!-- generated: config reference -->", config_reference())
    if page.file.src_uri == "howto/exit-codes.md":
        return markdown.replace("<!-- generated: stop reasons -->", stop_reasons())
    return markdown
