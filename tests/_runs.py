"""Shared helpers of the run-folder tests (test_store.py, test_fuzz.py): a tiny study whose cells
share one compiled solve, running the CLI in-process and in a subprocess, comparing summaries,
damaging files and making a folder read-only."""

import contextlib
import math
import os
import shutil
import subprocess
import sys

import pytest

#: two flows of one kind under two labels: two cells, one compiled solve
TINY = """
name = "tiny"
[data]
generator = "teacher"
num_points = 6
in_size = 2
[model]
depth = 1
width = 8
[flows.adapted]
[flows.again]
kind = "adapted"
[integrator]
cost_target_relative = 1e-6
t1 = "auto"
num_saves = 21
check_finite = false
max_condition = "off"
[sweep]
seeds = 2
"""

#: the same study on a data file (N = 6, M = 2, Q = 1)
TINY_FILE = TINY.replace('generator = "teacher"\nnum_points = 6\nin_size = 2\n', 'file = "{file}"\n')

TIMING = ("wall_time", "compile_time")


def write(path, text) -> str:
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def same_rows(a, b) -> bool:
    """Two summaries equal in every column but the timings (NaN equal to NaN)."""
    a, b = strip(a), strip(b)
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if ra.keys() != rb.keys():
            return False
        for k in ra:
            x, y = ra[k], rb[k]
            if isinstance(x, float) and isinstance(y, float):
                if not ((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9, abs=1e-300)):
                    return False
            elif x != y:
                return False
    return True


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`flowlab ARGS` in a fresh Python process."""
    return subprocess.run([sys.executable, "-m", "flowlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def subprocess_env(cache: str | None = None) -> dict:
    env = dict(os.environ)
    env["FLOWLAB_COMPILATION_CACHE"] = cache or "off"
    env.pop("EQX_ON_ERROR", None)
    return env


def one_line_error(err: str, *names: str) -> bool:
    """stderr is one 'flowlab: error:' line (warnings aside) naming every one of `names`,
    and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith("flowlab: error:")]
    return ("Traceback" not in err and len(lines) == 1
            and all(n in lines[0] for n in names))


def copy_run(src, dst) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".flowlab.lock"))
    return str(dst)


@contextlib.contextmanager
def read_only(path):
    """`path` read-only for this process: a read-only bind mount when running as root (root
    ignores permissions), else permissions; skips the test where neither is possible."""
    path = str(path)
    if os.geteuid() != 0:
        modes = {}
        for root, dirs, files in os.walk(path):
            for n in [root] + [os.path.join(root, f) for f in files]:
                modes[n] = os.stat(n).st_mode
                os.chmod(n, modes[n] & ~0o222)
        try:
            yield
        finally:
            for n, m in modes.items():
                os.chmod(n, m)
        return
    mount = lambda *a: subprocess.run(a, capture_output=True, check=False).returncode == 0
    ok = mount("mount", "--bind", path, path)
    if ok and not mount("mount", "-o", "remount,ro,bind", path):
        mount("umount", path)
        ok = False
    if not ok:
        pytest.skip("cannot make a read-only folder here (root without mount rights)")
    try:
        yield
    finally:
        subprocess.run(["umount", path], capture_output=True, check=True)
