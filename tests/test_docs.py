"""Every Python example of README.md and docs/ runs, and prints what its page shows.

A page's ```python blocks run in order as one script, in a fresh process (a page may turn on
float64 as its first lines do); the ```text block right after a python block is what that block
prints. Numbers are compared to the digits the page shows, the rest word for word. A page with
`<!-- docs-test: slow -->` runs only with `-m slow`. The documentation of every setting is
checked here too: a setting added to IntegratorOptions or the config schema without a meaning
fails."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def examples(page: pathlib.Path) -> tuple[str, str]:
    """(the page's python code, what it prints) from its fenced blocks."""
    code, printed, previous = [], [], None
    for match in FENCE.finditer(page.read_text()):
        lang, body = match[1], match[2]
        if lang == "python":
            code.append(body)
        elif lang == "text" and previous == "python":
            printed.append(body)
        previous = lang
    return "\n".join(code), "".join(printed)


def _shown_tolerance(token: str) -> float:
    """Half a unit in the last digit the page shows."""
    mantissa = token.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(token.lower().split("e")[1]) if "e" in token.lower() else 0
    return 0.5 * 10.0 ** (exponent - decimals)


def same_output(shown: str, got: str) -> bool:
    shown_lines = [line.rstrip() for line in shown.strip().splitlines()]
    got_lines = [line.rstrip() for line in got.strip().splitlines()]
    if len(shown_lines) != len(got_lines):
        return False
    for a, b in zip(shown_lines, got_lines):
        if NUMBER.sub("#", a) != NUMBER.sub("#", b):
            return False
        for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
            if not math.isclose(float(x), float(y), rel_tol=0, abs_tol=_shown_tolerance(x)):
                return False
    return True


def _pages_with_code():
    out = []
    for page in PAGES:
        code, _ = examples(page)
        if code.strip():
            slow = "<!-- docs-test: slow -->" in page.read_text()
            marks = [pytest.mark.slow] if slow else []
            out.append(pytest.param(page, marks=marks, id=str(page.relative_to(ROOT))))
    return out


@pytest.mark.parametrize("page", _pages_with_code())
def test_page_examples_run_and_print_what_the_page_shows(page, tmp_path):
    code, shown = examples(page)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWLAB_COMPILATION_CACHE": "off"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    if shown:
        assert same_output(shown, done.stdout), (shown, done.stdout)


def test_output_comparison_reads_the_digits_shown():
    assert same_output("rate 1.00, T 147.37", "rate 1.004, T 147.365")
    assert not same_output("rate 1.00", "rate 1.01")
    assert not same_output("stop: cost_target", "stop: t1_reached")
    assert same_output("C = 6e-20", "C = 6.3e-20")


def test_every_setting_is_documented():
    from flowlab.integrate import IntegratorOptions
    from flowlab.study.config import SCHEMA, SCHEMA_DOCS

    for name, f in IntegratorOptions.fields().items():
        assert f.metadata.get("doc", "").strip(), f"IntegratorOptions.{name} has no doc"
    for section, spec in SCHEMA.items():
        if section == "integrator":
            continue
        for key in spec:
            assert SCHEMA_DOCS.get(section, {}).get(key, "").strip(), (
                f"config key {section}.{key} has no entry in SCHEMA_DOCS")
