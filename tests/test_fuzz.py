"""Fuzzing (issue #12). Property-based tests (hypothesis, derandomised: the same inputs on every
run) over command-line overrides, configs, CSV and NPZ data files and damaged run folders: no
generated input gives a traceback, or a zero exit with wrong results. And a fault test that
kills `flowlab run` at random points (SIGKILL, in a subprocess) and checks that the resumed
summary equals a clean run's, with the compiled solve served by the persistent cache.

FLOWLAB_FUZZ_SCALE=k multiplies the number of examples (the README's counts: k = 1); the
`slow` tests (`-m slow`) kill the run several times and race two runs on one folder."""

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from types import SimpleNamespace

import hypothesis.configuration
import numpy as np
import pytest
from _runs import TINY, cli, copy_run, one_line_error, same_rows, subprocess_env, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowlab.cli import main
from flowlab.data import DataFileError, read_csv, read_npz
from flowlab.study import build
from flowlab.study.config import SCHEMA, ConfigError, load_config, parse_config
from flowlab.study.grid import expand_grid
from flowlab.study.store import read_summary

SCALE = float(os.environ.get("FLOWLAB_FUZZ_SCALE", "1"))
# hypothesis keeps files (constants it collects) in a folder of its own: not in the checkout
hypothesis.configuration.set_hypothesis_home_dir(
    os.path.join(tempfile.gettempdir(), "flowlab-hypothesis"))
#: examples tried per property (printed at the end of the module with -s)
TRIED = collections.Counter()


def fuzz(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("FLOWLAB_COMPILATION_CACHE", "off")


@pytest.fixture(scope="module", autouse=True)
def _counts():
    yield
    print("\nfuzzed inputs per property: " + ", ".join(f"{k} {v}" for k, v in TRIED.items()))


# --- overrides and configs -------------------------------------------------------------------

_KEYS = sorted(f"{s}.{k}" if s else k for s, spec in SCHEMA.items() for k in spec) + [
    "flows.adapted.solver", "flows.again.kind", "flows.lm.kind", "flows.lm.damping",
    "flows.h.alpha", "data.params.noise", "data.params.hidden", "loss.params.x", "sweep.nope",
    "model", "flows", "sweep", "a.b", "integrator.ts", "data.file", "data.params", "flows.adapted"]
_WORDS = ["adapted", "again", "standard", "adaptd", "tanh", "relu", "auto", "off", "1/N", "x y",
          "cholesky", "float32", "teacher", "d.csv", "euler", "ode", "kvaerno5", ""]
_SCALARS = st.one_of(
    st.integers(-10, 10**4).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", "1e400",
                     "-0.0", "0x10", "1_000", "'quoted'", '"double"', "{a = 1}", "{}", "[]"]),
    st.sampled_from(_WORDS),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)


def _plausible(key):
    """Values a user might mean for `key` (most valid, some at the edges)."""
    from flowlab.data import GENERATORS
    from flowlab.flows import FLOWS
    from flowlab.nets import ACTIVATIONS
    from flowlab.study.records import columns

    small = st.integers(1, 12)
    special = {
        "sweep.flow": st.lists(st.sampled_from(["adapted", "again"]), min_size=1, max_size=2),
        "sweep.activation": st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=1, max_size=2),
        "sweep.step_size": st.lists(st.floats(1e-3, 3.0), min_size=1, max_size=2),
        "sweep.seeds": st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=1, max_size=2)),
        "model.widths": st.lists(small, min_size=1, max_size=3),
        "model.activation": st.sampled_from(sorted(ACTIVATIONS)),
        "data.generator": st.sampled_from(sorted(GENERATORS)),
        "loss.kappa": st.one_of(st.just("1/N"), st.floats(1e-3, 10.0)),
        "integrator.t1": st.one_of(st.just("auto"), st.floats(0.1, 100.0)),
        "integrator.ts": st.lists(st.floats(0.0, 5.0), min_size=1, max_size=4).map(sorted),
        "integrator.method": st.sampled_from(["ode", "euler"]),
        "analysis.epsilon": st.floats(1e-12, 0.9),
        "output.columns": st.lists(st.sampled_from([n for n, _ in columns()][:40]), max_size=3),
        "flows.again.kind": st.sampled_from(sorted(FLOWS)),
        "flows.lm.kind": st.just("damped"),
        "flows.lm.damping": st.floats(1e-6, 1.0),
        "flows.h.kind": st.just("homotopy"),
        "flows.h.alpha": st.floats(0.0, 1.0),
        "data.params.noise": st.floats(0.0, 1.0),
    }
    if key in special:
        return special[key]
    if key.startswith("sweep."):
        return st.lists(small, min_size=1, max_size=2)
    section, _, name = key.rpartition(".")
    default = SCHEMA.get(section, {}).get(name, (None, None))[1]
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 3 * max(default, 4))
    if isinstance(default, float):
        return st.floats(default / 100, default * 100) if default > 0 else st.floats(0, 1)
    if isinstance(default, str):
        return st.sampled_from([default, default.upper(), "off", "auto"])
    return st.one_of(st.booleans(), st.integers(0, 10), st.floats(1e-9, 10.0), st.just("off"))


def _toml(v) -> str:
    """A value as an override's TOML text (strings bare, as users type them)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


_KEY = st.sampled_from(_KEYS)


@st.composite
def _override(draw):
    key = draw(_KEY)
    if draw(st.integers(0, 2)):  # mostly what a user might mean, else anything
        return key, _toml(draw(_plausible(key)))
    return key, draw(_VALUES)


def _check_study(study):
    """An accepted config is plain data with a fingerprint and cells the runner can build."""
    json.dumps(study.as_dict())
    assert len(study.fingerprint()) == 16
    cells = expand_grid(study)
    assert cells
    for cell in cells[:4]:
        flow = build.make_flow(study, cell.values["flow"])
        build.make_options(study, cell.values, SimpleNamespace(kappa=0.1), flow)


@fuzz(300)
@given(items=st.lists(_override(), min_size=1, max_size=3))
def test_fuzz_overrides(items):
    TRIED["overrides"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write(os.path.join(tmp, "c.toml"), TINY)
        overrides = [f"{k}={v}" for k, v in items]
        try:
            study = load_config(cfg, overrides)
        except ConfigError as e:
            TRIED["overrides refused"] += 1
            assert cfg in str(e)
            # the CLI: exit 2, one line, nothing written
            out = os.path.join(tmp, "out")
            err = _stderr_of(lambda: main(["run", cfg, *overrides, "--out", out, "--quiet"]), 2)
            assert one_line_error(err, cfg), err
            assert not os.path.exists(out)
            return
        _check_study(study)


def _stderr_of(fn, code):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        assert fn() == code
    return buf.getvalue()


_OBJECTS = st.recursive(
    st.one_of(st.booleans(), st.integers(-3, 5000), st.floats(allow_nan=True), st.text(max_size=6),
              st.sampled_from(_WORDS), st.dates()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(_WORDS + ["kind", "damping"]), inner,
                                            max_size=2)),
    max_leaves=4)

_DELETE = object()


@st.composite
def _mutation(draw):
    key = draw(_KEY)
    how = draw(st.integers(0, 5))
    if how == 0:
        return key, _DELETE
    return key, draw(_plausible(key) if how > 2 else _OBJECTS)


@fuzz(300)
@given(mutations=st.lists(_mutation(), min_size=1, max_size=4))
def test_fuzz_configs(mutations):
    """The tiny config with keys set (to plausible values or anything) or deleted."""
    import tomllib

    TRIED["configs"] += 1
    raw = tomllib.loads(TINY)
    for key, value in mutations:
        *path, last = key.split(".")
        node = raw
        for p in path:
            node = node.setdefault(p, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    try:
        study = parse_config(raw, where="<fuzz>")
    except ConfigError as e:
        TRIED["configs refused"] += 1
        assert "<fuzz>" in str(e)
        return
    _check_study(study)


# --- data files ------------------------------------------------------------------------------


@st.composite
def _csv_case(draw):
    n, m = draw(st.integers(1, 5)), draw(st.integers(2, 4))
    data = draw(hnp.arrays(np.float64, (n, m), elements=st.floats(-1e300, 1e300)))
    fmt = draw(st.sampled_from([repr, lambda v: f"{v:.17g}", lambda v: f" {v!r}\t"]))
    header = draw(st.booleans())
    lines = ([",".join(f"c{j}" for j in range(m))] if header else [])
    lines += [",".join(fmt(float(v)) for v in row) for row in data]
    shape_changes = ["drop", "extra"] if len(lines) > 1 else []  # one line: any width is valid
    corruption = draw(st.sampled_from([None, None, "junk", "empty", "nan", "inf", "huge", "nul",
                                       "latin1", "truncate"] + shape_changes))
    row = draw(st.integers(0, n - 1)) + (1 if header else 0)
    col = draw(st.integers(0, m - 1))
    cells = lines[row].split(",")
    if corruption in ("junk", "empty", "nan", "inf", "huge", "nul", "latin1"):
        cells[col] = {"junk": draw(st.sampled_from(["x", "1.2.3", "--1", "1e", "one"])),
                      "empty": "", "nan": "nan", "inf": "-inf", "huge": "1e999",
                      "nul": "1\x00", "latin1": "\udce9"}[corruption]
    elif corruption == "drop":
        del cells[col]
    elif corruption == "extra":
        cells.append("1")
    lines[row] = ",".join(cells)
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))
    blob = text.encode("utf-8", "surrogateescape")
    if draw(st.booleans()):
        blob = blob.replace(b"\n", b"\r\n")
    if corruption == "truncate":
        blob = blob[:draw(st.integers(0, len(blob)))]
    return blob, data, corruption, draw(st.integers(1, m - 1))


@fuzz(300)
@given(case=_csv_case())
def test_fuzz_csv(case):
    TRIED["csv files"] += 1
    blob, data, corruption, q = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.csv")
        with open(path, "wb") as f:
            f.write(blob)
        try:
            x, y = read_csv(path, q)
        except DataFileError as e:
            TRIED["csv files refused"] += 1
            assert str(e).startswith(path + ": ")
            assert corruption is not None, f"a clean file was refused: {e}"
            return
        assert corruption in (None, "truncate"), f"{corruption} accepted"
        got = np.hstack([x, y])
        assert got.shape[1] == data.shape[1] and np.all(np.isfinite(got))
        if corruption is None:  # exactly the numbers written
            np.testing.assert_array_equal(got, data)
        else:  # a truncated file: the complete rows are the first rows written
            np.testing.assert_array_equal(got[:-1], data[:len(got) - 1])


_DTYPES = ["f8", "f4", "f2", "i8", "u1", "?", "c16", "O", "U3", "M8[D]"]


@st.composite
def _npz_case(draw):
    plain = draw(st.booleans())  # half of them well-formed, so that acceptance is tried too

    def array(n):
        dtype = np.dtype(draw(st.sampled_from(_DTYPES[:6] if plain else _DTYPES[:6] * 3 + _DTYPES[6:])))
        extra = draw(st.sampled_from([(), (1,), (2,), (3,)] if plain else
                                     [(), (), (1,), (2,), (3,), (0,), (2, 1)]))
        shape = (n,) + extra if plain or draw(st.integers(0, 9)) else ()
        if dtype.kind == "O":
            a = np.empty(n if shape else (), dtype=object)
            a[...] = {"a": 1} if not shape else [{"a": i} for i in range(n)]
            return a
        odd = not plain and draw(st.booleans())
        elements = (st.floats(width=dtype.itemsize * 8, allow_nan=odd, allow_infinity=odd)
                    if dtype.kind == "f" else None)
        return draw(hnp.arrays(dtype, shape, elements=elements))

    n = draw(st.integers(1 if plain else 0, 4))
    x, y = array(n), array(n if plain else draw(st.sampled_from([n, n, n, n + 1])))
    names = draw(st.sampled_from([("inputs", "targets")] * (1 if plain else 4)
                                 + ([] if plain else [("x", "targets"), ("inputs", "y")])))
    arrays = {names[0]: x, names[1]: y}
    if draw(st.booleans()):
        arrays["extra"] = np.arange(3)
    damage = draw(st.sampled_from([None, None, None, "truncate", "flip", "append"]))
    return arrays, draw(st.booleans()), damage, draw(st.integers(0, 10**9)), draw(st.integers(0, 7))


def _expected(arrays):
    """What read_npz must return for these arrays, or None when it must refuse them."""
    if not {"inputs", "targets"} <= set(arrays):
        return None
    out = []
    for k in ("inputs", "targets"):
        a = arrays[k]
        if a.dtype.kind not in "biuf" or a.ndim not in (1, 2) or 0 in a.shape:
            return None
        a = (a[:, None] if a.ndim == 1 else a).astype(np.float64)
        if not np.all(np.isfinite(a)):
            return None
        out.append(a)
    return out if out[0].shape[0] == out[1].shape[0] else None


@fuzz(300)
@given(case=_npz_case())
def test_fuzz_npz(case):
    TRIED["npz files"] += 1
    arrays, compressed, damage, where, bit = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.npz")
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        with open(path, "rb") as f:
            blob = f.read()
        if damage == "truncate":
            blob = blob[:where % len(blob)]
        elif damage == "flip":
            i = where % len(blob)
            blob = blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:]
        elif damage == "append":
            blob = blob + b"\x00garbage"
        with open(path, "wb") as f:
            f.write(blob)
        want = _expected(arrays)
        try:
            x, y = read_npz(path)
        except DataFileError as e:
            TRIED["npz files refused"] += 1
            assert str(e).startswith(path + ": ")
            assert want is None or damage is not None, f"good arrays refused: {e}"
            return
        assert want is not None, "bad arrays accepted"
        # accepted, damaged or not: exactly the arrays saved
        np.testing.assert_array_equal(x, want[0])
        np.testing.assert_array_equal(y, want[1])


def test_pickled_npz_is_refused_naming_the_file(tmp_path):
    p = str(tmp_path / "p.npz")
    np.savez(p, inputs=np.array([{"a": 1}], dtype=object), targets=np.ones(1))
    with pytest.raises(DataFileError, match=f"^{p}: array 'inputs' holds pickled Python objects"):
        read_npz(p)
    with zipfile.ZipFile(p) as z:
        assert sorted(z.namelist()) == ["inputs.npy", "targets.npy"]


# --- damaged run folders -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A config, a clean run of it and its report's table."""
    import contextlib
    import io

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWLAB_COMPILATION_CACHE", "off")
        root = tmp_path_factory.mktemp("fuzzrun")
        cfg = write(root / "tiny.toml", TINY)
        out = str(root / "clean")
        assert main(["run", cfg, "--out", out, "--quiet", "--no-plot", "--jobs", "1"]) == 0
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["report", out, "--markdown", str(root / "r.md")]) == 0
    files = sorted(os.path.relpath(os.path.join(d, f), out)
                   for d, _, fs in os.walk(out) for f in fs if not f.startswith("."))
    return cfg, out, _table(buf.getvalue()), files


def _table(stdout):
    return [ln for ln in stdout.splitlines() if not ln.startswith("markdown:")]


def _damage(path, op, where, byte):
    with open(path, "rb") as f:
        blob = f.read()
    if op == "delete":
        os.remove(path)
        return
    i = where % max(1, len(blob))
    blob = {"truncate": blob[:i], "empty": b"", "flip": blob[:i] + bytes([blob[i] ^ byte]) + blob[i + 1:],
            "garbage": blob[:i] + os.urandom(8) + blob[i + 8:], "append": blob + b"\n{}"}[op]
    with open(path, "wb") as f:
        f.write(blob)


@fuzz(20)
@given(data=st.data())
def test_fuzz_damaged_run_folder(tiny, data):
    """Damage one file of a finished folder: `report` prints the clean table or exits 2 naming
    a path; `run` then resumes to the clean summary (recomputing what is damaged) or exits 2
    with one line; never a traceback."""
    import contextlib
    import io

    cfg, clean, table, files = tiny
    name = data.draw(st.sampled_from(files))
    op = data.draw(st.sampled_from(["truncate", "flip", "flip", "delete", "empty", "garbage", "append"]))
    where, byte = data.draw(st.integers(0, 10**6)), data.draw(st.integers(1, 255))
    TRIED["damaged folders"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        out = copy_run(clean, os.path.join(tmp, "run"))
        _damage(os.path.join(out, name), op, where, byte)

        def cli_in_process(*argv):
            o, e = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
                code = main(list(argv))
            return code, o.getvalue(), e.getvalue()

        code, o, e = cli_in_process("report", out, "--markdown", os.path.join(tmp, "r.md"))
        assert code in (0, 2), e
        TRIED[f"damaged folders: report exit {code}"] += 1
        if code == 0:
            assert _table(o) == table, f"{name} {op}: report exits 0 with another table"
        else:
            assert one_line_error(e, out), e
        code, o, e = cli_in_process("run", cfg, "--out", out, "--quiet", "--no-plot", "--jobs", "1")
        assert code in (0, 2), e
        TRIED[f"damaged folders: run exit {code}"] += 1
        if code == 2:  # only a manifest that names another config is refused
            assert one_line_error(e, out, "different config"), e
            return
        assert same_rows(read_summary(out), read_summary(clean)), f"{name} {op}"
        code, o, e = cli_in_process("report", out, "--markdown", os.path.join(tmp, "r.md"))
        assert code == 0 and len(_table(o)) == len(table), e  # (recomputed: other wall times)


# --- killed at random points ---------------------------------------------------------------------

KILL_CONFIG = TINY  # two cells, one compiled solve


def _cache_files(cache):
    return {n: os.stat(os.path.join(cache, n)).st_mtime_ns for n in os.listdir(cache)
            if n.startswith("jit__solve_batch")}


def _progress(run_dir) -> tuple[int, int]:
    """(sessions begun, cells done) of a run folder, (0, 0) before it has a manifest."""
    try:
        with open(os.path.join(run_dir, "manifest.json")) as f:
            m = json.load(f)
        return len(m["sessions"]), sum(c["status"] == "done" for c in m["cells"].values())
    except (OSError, ValueError, KeyError):
        return 0, 0


#: where a kill lands: the wait for its event, then a random moment more (s)
_PHASES = {"start-up": (0.1, 2.5), "in a cell": (0.0, 1.5), "after a save": (0.0, 0.05)}


def _kill_and_resume(tmp_path, kills: int, rng: random.Random):
    """A clean run (cold persistent cache), then runs on another folder SIGKILLed at random
    points (in start-up; once the run holds the folder, during its next cell; just after a cell
    is saved) until `kills` of them died mid-run, then a resume: its summary must equal the
    clean one, and the compiled solve must come from the cache written by the clean run."""
    cfg = write(tmp_path / "kill.toml", KILL_CONFIG)
    cache = str(tmp_path / "xla")
    env = subprocess_env(cache)
    ref = str(tmp_path / "ref")
    start = time.perf_counter()
    p = cli("run", cfg, "--out", ref, "--quiet", "--no-plot", "--jobs", "1", env=env)
    cold = time.perf_counter() - start
    assert p.returncode == 0, p.stderr
    solves = _cache_files(cache)
    assert solves, "the persistent cache holds no compiled solve after a run"

    victim, killed, finished, where = str(tmp_path / "victim"), 0, 0, []
    order = ["in a cell", "after a save", "start-up"]  # every phase in turn, the first: mid-cell
    while killed < kills:
        sessions, done = _progress(victim)
        phase = order[(killed + finished) % len(order)]
        begun = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "flowlab.cli", "run", cfg, "--out", victim,
                                 "--quiet", "--no-plot", "--jobs", "1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if phase != "start-up":
            index = 0 if phase == "in a cell" else 1
            while proc.poll() is None and _progress(victim)[index] <= (sessions, done)[index]:
                time.sleep(0.01)
        try:
            proc.wait(timeout=rng.uniform(*_PHASES[phase]))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
            where.append((phase, round(time.perf_counter() - begun, 2), _progress(victim)[1]))
            continue
        assert proc.returncode == 0, proc.stderr.read()
        finished += 1
        shutil.rmtree(victim)  # it finished first: start over, kills must land in unfinished runs
    # at least one cell left to compute on resume, so that the solve is needed
    damaged = os.path.join(victim, "cells", "flow-again.npz")
    if os.path.exists(damaged):
        os.remove(damaged)
    start = time.perf_counter()
    p = cli("run", cfg, "--out", victim, "--quiet", "--no-plot", "--jobs", "1", env=env)
    warm = time.perf_counter() - start
    assert p.returncode == 0, p.stderr
    assert same_rows(read_summary(victim), read_summary(ref))
    assert _cache_files(cache) == solves, "the resume compiled the solve again"
    with open(os.path.join(victim, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["status"] == "complete"
    assert not [n for n in os.listdir(os.path.join(victim, "cells")) if ".tmp" in n]
    TRIED["kills survived"] += killed
    print(f"\nkilled {killed} runs ((where, s after start, cells done then): {where}), {finished} "
          f"finished first; clean cold run {cold:.1f} s, resume with the cached solve {warm:.1f} s")
    return killed


def test_killed_run_resumes_to_the_clean_summary(tmp_path):
    assert _kill_and_resume(tmp_path, kills=1, rng=random.Random(12)) == 1


@pytest.mark.slow
def test_killed_many_times_resumes_to_the_clean_summary(tmp_path):
    assert _kill_and_resume(tmp_path, kills=int(9 * SCALE), rng=random.Random(2024)) >= 9


@pytest.mark.slow
def test_two_runs_at_once_never_both_compute(tmp_path):
    """Two `flowlab run` on one folder at once: never both compute one cell (a lock per cell):
    the second computes the cells the first has not taken, or finds every cell done; both end
    with the clean summary. (Refused, exit 2 'in use', only if the manifest's lock stays held
    past LOCK_TIMEOUT.)"""
    cfg = write(tmp_path / "c.toml", TINY)
    env = subprocess_env(str(tmp_path / "xla"))
    out = str(tmp_path / "run")
    ref = cli("run", cfg, "--out", str(tmp_path / "ref"), "--quiet", "--no-plot", env=env)
    assert ref.returncode == 0
    argv = [sys.executable, "-m", "flowlab.cli", "run", cfg, "--out", out, "--quiet", "--no-plot"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while first.poll() is None and not os.path.exists(os.path.join(out, "manifest.json")):
        time.sleep(0.05)
    second = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    first.wait()
    assert first.returncode == 0, first.stderr.read()
    if second.returncode == 2:
        assert one_line_error(second.stderr, out, "in use by another flowlab run")
    else:
        assert second.returncode == 0
    print(f"\nthe second run: exit {second.returncode}")
    with open(os.path.join(out, "manifest.json")) as f:
        sessions = json.load(f)["sessions"]
    assert len(sessions) == (1 if second.returncode == 2 else 2)
    assert same_rows(read_summary(out), read_summary(str(tmp_path / "ref")))
    with open(os.path.join(out, "manifest.json")) as f:
        cells = json.load(f)["cells"]
    assert all(c["status"] == "done" for c in cells.values())
