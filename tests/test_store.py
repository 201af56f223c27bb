"""Run folders that cannot lie (issue #12): data fingerprints, cell checksums, damaged files named
and recomputed, the folder's lock, file-system and data-file errors as exit code 2 with one line
naming the path, no traceback without --debug, a resume hint that can be pasted.

The CLI runs in-process on a tiny study (two cells, one compiled solve, compiled once per test
session); damaged folders are copies of one clean run."""

import json
import os
import shlex

import numpy as np
import pytest
from _runs import TINY, TINY_FILE, copy_run, one_line_error, read_only, same_rows, write
from filelock import FileLock

from flowlab.cli import main
from flowlab.study import runner
from flowlab.study import store as store_module
from flowlab.study.config import ConfigError, load_config
from flowlab.study.store import RunStore, StoreError, read_summary

LOCK_NAME = ".flowlab.lock"  # the run folder's manifest lock file


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("FLOWLAB_COMPILATION_CACHE", "off")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write(tmp_path_factory.mktemp("cfg") / "tiny.toml", TINY)


def run(config, out, *extra) -> int:
    return main(["run", config, *extra, "--out", str(out), "--quiet", "--no-plot", "--jobs", "1"])


@pytest.fixture(scope="module")
def clean(config, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWLAB_COMPILATION_CACHE", "off")
        out = str(tmp_path_factory.mktemp("runs") / "clean")
        assert run(config, out) == 0
    return out


@pytest.fixture
def calls(monkeypatch):
    """The ids of the cells computed from here on."""
    seen = []
    real = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda s, c: (seen.append(c.id), real(s, c))[1])
    return seen


def _text(path):
    with open(path, "rb") as f:
        return f.read()


def _manifest(run_dir):
    return json.loads(_text(os.path.join(run_dir, "manifest.json")))


# --- 1. data fingerprints ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "npz"])
def test_changed_data_is_refused_naming_the_file(tmp_path, capsys, calls, kind):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 1))
    data = tmp_path / f"d.{kind}"

    def save(x, y):
        if kind == "csv":
            np.savetxt(data, np.hstack([x, y]), delimiter=",", header="a,b,y", comments="")
        else:
            np.savez(data, inputs=x, targets=y)

    save(x, y)
    cfg = write(tmp_path / "c.toml", TINY_FILE.format(file=data.name))
    out = tmp_path / "run"
    assert run(cfg, out) == 0
    before, manifest = read_summary(out), _text(out / "manifest.json")
    assert len(_manifest(out)["cells"]) == 2 and json.loads(_text(out / "config.json"))["data"]["sha256"]

    save(x, 3 * y)  # other targets, same shapes
    calls.clear()
    capsys.readouterr()
    assert run(cfg, out) == 2
    err = capsys.readouterr().err
    assert one_line_error(err, str(data), "differs from the data these results were computed from")
    assert calls == [] and _text(out / "manifest.json") == manifest
    # a fresh folder holds the new data's results
    assert run(cfg, tmp_path / "fresh") == 0
    assert not same_rows(read_summary(tmp_path / "fresh"), before)

    # the same numbers saved again (new bytes: timestamps, formatting) still resume
    if kind == "csv":
        np.savetxt(data, np.hstack([x, y]), delimiter=",", fmt="%.17g")
    else:
        np.savez_compressed(data, targets=y, inputs=x)
    calls.clear()
    assert run(cfg, out) == 0 and calls == []


def test_data_changed_after_the_config_was_read_is_refused(tmp_path):
    data = tmp_path / "d.csv"
    np.savetxt(data, np.arange(18.0).reshape(6, 3), delimiter=",")
    study = load_config(write(tmp_path / "c.toml", TINY_FILE.format(file=data.name)))
    np.savetxt(data, np.arange(18.0).reshape(6, 3) + 1, delimiter=",")
    with pytest.raises(ConfigError, match="d.csv changed since the config was read"):
        runner.run_study(study, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


# --- 2. checksums: damaged files are named, and recomputed ---------------------------------


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_digit(path):
    """Change one digit of a JSON file: still valid JSON, other numbers."""
    text = _text(path)
    i = next(i for i in range(len(text) // 2, len(text)) if chr(text[i]).isdigit())
    with open(path, "wb") as f:
        f.write(text[:i] + (b"1" if text[i:i + 1] != b"1" else b"2") + text[i + 1:])


@pytest.mark.parametrize("damage, name", [
    (_truncate, "again.npz"), (_truncate, "again.json"), (os.remove, "again.npz"),
    (_flip_digit, "again.json"),
])
def test_damaged_cell_is_named_then_recomputed(config, clean, tmp_path, capsys, calls, damage, name):
    out = copy_run(clean, tmp_path / "run")
    path = os.path.join(out, "cells", f"flow-{name}")
    damage(path)
    capsys.readouterr()
    for command in (["report", out], ["plot", out]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert one_line_error(captured.err, path), captured.err
        assert captured.out == ""
    assert run(config, out) == 0  # --no-plot: repaired all the same
    err = capsys.readouterr().err
    assert path in err and "recomputing cell flow-again" in err
    assert calls == ["flow-again"]
    assert same_rows(read_summary(out), read_summary(clean))
    entry = _manifest(out)["cells"]["flow-again"]
    assert entry["status"] == "done" and set(entry["sha256"]) == {"npz", "json"}
    assert main(["report", out]) == 0 and main(["plot", out]) == 0


def test_damaged_manifest_is_named_then_rebuilt(config, clean, tmp_path, capsys, calls):
    out = copy_run(clean, tmp_path / "run")
    manifest = os.path.join(out, "manifest.json")
    _truncate(manifest)
    capsys.readouterr()
    for command in (["report", out], ["plot", out]):
        assert main(command) == 2
        assert one_line_error(capsys.readouterr().err, manifest, "damaged")
    assert run(config, out) == 0
    assert "rebuilt it: 2 of 2 cells kept" in capsys.readouterr().err
    assert calls == []  # both cells verified from their files, nothing recomputed
    assert same_rows(read_summary(out), read_summary(clean))
    assert all(c["status"] == "done" and "sha256" in c for c in _manifest(out)["cells"].values())


def test_damaged_config_and_summary(config, clean, tmp_path, capsys, calls):
    out = copy_run(clean, tmp_path / "run")
    summary = os.path.join(out, "summary.csv")
    _truncate(summary)  # derived from the cells: rewritten by report
    capsys.readouterr()
    assert main(["report", out]) == 0
    captured = capsys.readouterr()
    assert f"{summary} did not match the finished cells" in captured.err
    assert same_rows(read_summary(out), read_summary(clean))
    assert main(["report", copy_run(clean, tmp_path / "b")]) == 0
    assert capsys.readouterr().out.replace(str(tmp_path / "b"), str(tmp_path / "run")) == captured.out

    cfg = os.path.join(out, "config.json")
    _truncate(cfg)
    assert main(["report", out]) == 2
    assert one_line_error(capsys.readouterr().err, cfg, "damaged")
    assert run(config, out) == 0 and calls == []  # the same config: config.json rewritten
    assert main(["report", out]) == 0

    # neither manifest nor config.json: nothing says whose the cells are
    for name in ("manifest.json", "config.json"):
        _truncate(os.path.join(out, name))
    capsys.readouterr()
    assert run(config, out) == 2
    assert one_line_error(capsys.readouterr().err, "manifest.json", "config.json")
    assert calls == []


# --- 3. the lock -----------------------------------------------------------------------------


def test_a_folder_in_use_is_refused(config, clean, tmp_path, capsys, calls, monkeypatch):
    """A run whose manifest lock another run holds past LOCK_TIMEOUT (held only while writing
    the manifest: that run is stuck) is refused, and writes nothing."""
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT", 0.5)
    out = copy_run(clean, tmp_path / "run")
    before = {n: _text(os.path.join(out, n)) for n in ("manifest.json", "summary.csv")}
    with FileLock(os.path.join(out, LOCK_NAME), timeout=0):  # another run holds it
        assert run(config, out) == 2
        assert one_line_error(capsys.readouterr().err, out, "in use by another flowlab run")
        # a new folder is refused the same way once a run holds it
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with FileLock(str(fresh / LOCK_NAME), timeout=0):
            assert run(config, fresh) == 2
        assert not (fresh / "manifest.json").exists()
    assert calls == []
    assert {n: _text(os.path.join(out, n)) for n in before} == before
    assert run(config, out) == 0 and calls == []  # released: resumes (nothing to do)


# --- 4. file-system errors: exit 2, one line naming the path ---------------------------------


def test_out_naming_a_file_or_below_one(config, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert run(config, f) == 2
    assert one_line_error(capsys.readouterr().err, str(f), "is a file")
    assert run(config, f / "sub") == 2
    assert one_line_error(capsys.readouterr().err, str(f / "sub"), "is a file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run(config, other) == 2
    assert one_line_error(capsys.readouterr().err, str(other), "not a flowlab run folder")
    assert sorted(os.listdir(other)) == ["notes.txt"]


def test_read_only_folders(config, clean, tmp_path, capsys):
    out = copy_run(clean, tmp_path / "run")
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        assert run(config, ro / "new") == 2
        assert one_line_error(capsys.readouterr().err, str(ro / "new"), "not writable")
        assert not (ro / "new").exists()
    with read_only(out):
        assert run(config, out) == 2  # resuming needs to write
        assert one_line_error(capsys.readouterr().err, out, "not writable")
        assert main(["report", out]) == 2
        captured = capsys.readouterr()
        assert one_line_error(captured.err, os.path.join(out, "report.md"), "--markdown FILE")
        assert captured.out == ""  # no half report
        md = tmp_path / "report.md"
        assert main(["report", out, "--markdown", str(md)]) == 0 and md.is_file()
        capsys.readouterr()
        assert main(["plot", out]) == 2
        assert one_line_error(capsys.readouterr().err, os.path.join(out, "figures"), "--out DIR")
        assert main(["plot", out, "--out", str(tmp_path / "figs")]) == 0
        assert (tmp_path / "figs" / "decay.png").is_file()


# --- 5. data files checked before anything is written ----------------------------------------


def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


def _text_file(text: bytes):
    return lambda p: open(p, "wb").write(text)


def _truncated_npz(p):
    np.savez(p, inputs=np.ones((6, 2)), targets=np.ones(6))
    _truncate(p)


BAD_DATA = {
    "nan.csv": (_text_file(b"a,b,y\n1,2,3\n4,nan,5\n"), "line 3 has a non-finite entry 'nan' in column 2"),
    "inf.csv": (_text_file(b"1,2,3\n4,5,-inf\n"), "line 2 has a non-finite entry '-inf' in column 3"),
    "text.csv": (_text_file(b"a,b,y\n1,2,3\n4,x,5\n"), "line 3 has a non-numeric entry 'x' in column 2"),
    "mixed_header.csv": (_text_file(b"1,b,3\n1,2,3\n"), "line 1 has a non-numeric entry 'b'"),
    "empty_cell.csv": (_text_file(b"1,2,3\n4,,5\n"), "line 2 has an empty entry in column 2"),
    "ragged.csv": (_text_file(b"1,2,3\n4,5\n"), "line 2 has 2 columns, expected 3"),
    "one_column.csv": (_text_file(b"1\n2\n"), "leaves no inputs"),
    "header_only.csv": (_text_file(b"a,b,y\n"), "no data rows"),
    "empty.csv": (_text_file(b""), "no rows"),
    "latin1.csv": (_text_file(b"a,b,\xe9\n1,2,3\n"), "not a UTF-8 text file"),
    "pickled.npz": (_npz(inputs=np.array([{"a": 1}], dtype=object), targets=np.ones(1)),
                    "array 'inputs' holds pickled Python objects"),
    "missing.npz": (_npz(x=np.ones((6, 2)), targets=np.ones(6)), "missing arrays ['inputs']"),
    "complex.npz": (_npz(inputs=np.ones((6, 2)) * 1j, targets=np.ones(6)), "complex numbers"),
    "3d.npz": (_npz(inputs=np.ones((6, 2, 1)), targets=np.ones(6)), "shape (6, 2, 1)"),
    "n.npz": (_npz(inputs=np.ones((6, 2)), targets=np.ones(5)), "disagree on N: 6 and 5"),
    "nan.npz": (_npz(inputs=np.ones((6, 2)), targets=np.array([0, 1, np.nan, 0, 0, 0])),
                "row 2, column 0"),
    "empty.npz": (_npz(inputs=np.ones((0, 2)), targets=np.ones(0)), "is empty"),
    "text.npz": (_text_file(b"inputs,targets\n"), "not a readable .npz archive"),
    "truncated.npz": (_truncated_npz, "not a readable .npz archive"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_file_is_refused_before_anything_is_written(tmp_path, capsys, name):
    make, words = BAD_DATA[name]
    data = tmp_path / name
    make(str(data))
    cfg = write(tmp_path / "c.toml", TINY_FILE.format(file=name))
    out = tmp_path / "run"
    assert run(cfg, out) == 2
    err = capsys.readouterr().err
    assert one_line_error(err, cfg, "data.file", str(data), words), err
    assert not out.exists()


# --- 6. no traceback without --debug; friction -------------------------------------------------


def test_unexpected_errors_are_one_line_without_debug(config, tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner, "run_study", boom)
    assert run(config, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert one_line_error(err, "internal error: ZeroDivisionError: a bug", "--debug")
    with pytest.raises(ZeroDivisionError):
        main(["run", config, "--out", str(tmp_path / "run"), "--debug"])
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "run", config, "--out", str(tmp_path / "run")])
    # a config that cannot be read: exit 2, one line
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"name = \"\xff\"\n")
    assert main(["run", str(bad)]) == 2
    assert one_line_error(capsys.readouterr().err, str(bad), "UTF-8")


def test_resume_hint_can_be_pasted(config, clean, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "a folder's run")
    overrides = ["description=it's a \"quoted\" study", "model.activation=tanh"]
    real = runner.run_cell
    seen = []

    def interrupt_second(study, cell):
        seen.append(cell.id)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(study, cell)

    monkeypatch.setattr(runner, "run_cell", interrupt_second)
    assert run(config, out, *overrides) == 130
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    argv = shlex.split(hint)
    assert argv == ["flowlab", "run", config, *overrides, "--out", out]
    monkeypatch.setattr(runner, "run_cell", real)
    assert main(argv[1:] + ["--quiet", "--no-plot"]) == 0
    assert same_rows(read_summary(out), read_summary(clean))
    # overrides may also follow the options
    assert main(["run", config, "--out", out, "--quiet", "--no-plot", *overrides]) == 0


def test_bare_names_in_list_overrides(tmp_path, capsys):
    cfg = write(tmp_path / "c.toml", TINY)
    study = load_config(cfg, ["sweep.flow=[again, adapted]"])
    assert study.config["sweep"]["flow"] == ["again", "adapted"]
    assert load_config(cfg, ["sweep.flow=['again']"]).config["sweep"]["flow"] == ["again"]
    with pytest.raises(ConfigError, match=r"found 'adaptd'; did you mean 'adapted'\?"):
        load_config(cfg, ["sweep.flow=[adaptd]"])
    with pytest.raises(ConfigError, match="cannot read .* as a TOML value; lists may hold bare names"):
        load_config(cfg, ["sweep.flow=[adapted, 'again]"])
    assert main(["run", cfg, "sweep.flow=[adaptd]", "--out", str(tmp_path / "r")]) == 2
    assert one_line_error(capsys.readouterr().err, "sweep.flow", "did you mean 'adapted'")
    assert not (tmp_path / "r").exists()


def test_store_api_verifies_before_reading(clean, tmp_path):
    out = copy_run(clean, tmp_path / "run")
    store = RunStore(out)
    assert store.check() == [] and store.damaged() == []
    assert same_rows(store.summary_rows(), read_summary(clean))
    _truncate(store.cell_file("flow-adapted", "npz"))
    store = RunStore(out)
    assert not store.is_done("flow-adapted") and store.is_done("flow-again")
    with pytest.raises(StoreError, match="flow-adapted.npz is damaged"):
        store.load_arrays("flow-adapted")
    assert [r["cell"] for r in store.rows()] == ["flow-again"] * 2


def test_every_cell_failing_leaves_a_summary_that_exists(config, tmp_path, capsys, monkeypatch):
    def fail(study, cell):
        raise ValueError("no luck")

    monkeypatch.setattr(runner, "run_cell", fail)
    out = tmp_path / "run"
    assert run(config, out) == 1
    captured = capsys.readouterr()
    summary = next(ln.split()[-1] for ln in captured.out.splitlines() if ln.startswith("summary:"))
    assert os.path.isfile(summary) and read_summary(summary) == []
    assert "cell flow-adapted failed: ValueError: no luck" in captured.err
    for command in (["report", str(out)], ["plot", str(out)]):
        assert main(command) == 2
        assert one_line_error(capsys.readouterr().err, str(out), "no finished cell")
