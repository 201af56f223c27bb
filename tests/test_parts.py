"""Sweeps over many jobs (issue #22 item 2): `flowlab run CONFIG --part I/N` computes the cells
whose index is I − 1 mod N into a shared run folder, any number of parts at once (a lock per
cell, one for the manifest and the summary); afterwards the summary and the figures equal those
of one whole run.

Subprocess tests share one persistent compilation cache, filled by the whole reference run, so
that each part loads the compiled solve instead of compiling it; in-process runs share the
compiled solve of the test session."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from _runs import TINY, cli, one_line_error, same_rows, subprocess_env, write
from filelock import FileLock

from flowlab.cli import main
from flowlab.study import runner
from flowlab.study.grid import expand_grid
from flowlab.study.runner import part_cells
from flowlab.study.store import RunStore, read_summary

#: six cells of one shape (six labels of the adapted flow): one compiled solve
SIX = TINY + "".join(f'[flows.f{k}]\nkind = "adapted"\n' for k in range(3, 7))
CELLS = ["flow-adapted", "flow-again", "flow-f3", "flow-f4", "flow-f5", "flow-f6"]


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("FLOWLAB_COMPILATION_CACHE", "off")  # in-process runs


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """(config, reference run folder, environment with a warm compilation cache)."""
    tmp = tmp_path_factory.mktemp("parts")
    cfg = write(tmp / "six.toml", SIX)
    env = subprocess_env(str(tmp / "xla"))
    ref = str(tmp / "ref")
    p = cli("run", cfg, "--out", ref, "--quiet", "--jobs", "1", env=env)
    assert p.returncode == 0, p.stderr
    return cfg, ref, env


def _argv(cfg, out, *extra):
    return [sys.executable, "-m", "flowlab.cli", "run", cfg, "--out", out, "--quiet", "--jobs",
            "1", *extra]


def _manifest(out) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def _done(out) -> list[str]:
    try:
        cells = _manifest(out)["cells"]
    except (OSError, ValueError, KeyError):
        return []
    return [k for k, c in cells.items() if c["status"] == "done"]


def _sums(out) -> dict:
    return {k: c["sha256"] for k, c in _manifest(out)["cells"].items() if c["status"] == "done"}


def _same_as_whole_run(out, ref):
    """The summary equals the whole run's in every column but the timings, one row per cell
    and seed, every cell done and intact, the summary verified."""
    rows = read_summary(out)
    keys = [(r["cell"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row twice"
    assert {r["cell"] for r in rows} == set(CELLS)
    assert same_rows(rows, read_summary(ref))
    store = RunStore(out)
    assert store.damaged() == [] and store.check() == []
    assert all(store.is_done(c) for c in CELLS)


def test_part_assignment(tmp_path):
    from flowlab.study.config import load_config

    cells = expand_grid(load_config(write(tmp_path / "six.toml", SIX), []))
    parts = [[c.id for c in part_cells(cells, (i, 3))] for i in (1, 2, 3)]
    assert parts == [CELLS[0::3], CELLS[1::3], CELLS[2::3]]
    assert [c.id for c in part_cells(cells, (8, 8))] == []  # more parts than cells: idle
    for bad in [(0, 3), (4, 3), (1, 0), (1.0, 2), (True, 2), "1/2"]:
        with pytest.raises(ValueError, match="1 <= i <= n"):
            part_cells(cells, bad)


def test_three_parts_at_once_equal_one_whole_run(six, tmp_path):
    cfg, ref, env = six
    out = str(tmp_path / "run")
    procs = [subprocess.Popen(_argv(cfg, out, "--part", f"{k}/3"), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in (1, 2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    _same_as_whole_run(out, ref)
    m = _manifest(out)
    assert m["status"] == "complete"  # the last part to end saw every cell done
    assert sorted(s["part"] for s in m["sessions"]) == ["1/3", "2/3", "3/3"]
    # each cell was computed by the part it belongs to, once
    part_of = {s["id"]: int(s["part"][0]) for s in m["sessions"]}
    assert [part_of[m["cells"][c]["session"]] for c in CELLS] == [1, 2, 3, 1, 2, 3]
    # the figures: drawn by each part in turn from every cell finished then, so the last one
    # drew all six, as the whole run did
    for name in ("decay", "rates", "stopping_time"):
        with open(os.path.join(out, "figures", f"{name}.png"), "rb") as a, \
                open(os.path.join(ref, "figures", f"{name}.png"), "rb") as b:
            assert a.read() == b.read(), name
    names = os.listdir(os.path.join(out, "cells"))
    assert not [n for n in names if ".tmp" in n]
    assert sorted(n for n in names if not n.startswith(".")) == sorted(
        f"{c}.{e}" for c in CELLS for e in ("npz", "json"))


def test_killed_part_is_redone_by_its_rerun(six, tmp_path, capsys):
    """`--part 1/2` (cells 0, 2, 4) killed with SIGKILL once its first cell is stored, then
    rerun: the cells it finished are kept (not recomputed), the others computed; with part 2/2
    the folder equals a whole run, nothing twice, nothing lost, no damaged cell."""
    cfg, ref, env = six
    mine = CELLS[0::2]
    for attempt in range(5):  # a part that finished before the kill landed: start over
        out = str(tmp_path / f"run{attempt}")
        proc = subprocess.Popen(_argv(cfg, out, "--part", "1/2", "--no-plot"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and not _done(out):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and len(_done(out)) < len(mine):
            break
    else:
        pytest.skip("the part finished before every kill")
    kept = _sums(out)
    assert kept and set(kept) <= set(mine)
    print(f"\nkilled at attempt {attempt + 1} with {len(kept)} of its {len(mine)} cells done")
    p = subprocess.run(_argv(cfg, out, "--part", "1/2", "--no-plot"), env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr
    assert "damaged" not in p.stderr
    after = _sums(out)
    assert sorted(after) == sorted(mine)  # its cells, and only those
    assert {k: after[k] for k in kept} == kept  # the finished ones not computed again
    calls = []
    real = runner.run_cell
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_cell", lambda s, c: (calls.append(c.id), real(s, c))[1])
        assert main(["run", cfg, "--out", out, "--part", "2/2", "--quiet", "--no-plot",
                     "--jobs", "1"]) == 0
    assert calls == CELLS[1::2]
    _same_as_whole_run(out, ref)
    assert not [n for n in os.listdir(os.path.join(out, "cells")) if ".tmp" in n]


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x", "1/0", "1/", "-1/3", "2.0/3"])
def test_bad_part_is_exit_2_naming_the_flag(bad, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "no-such.toml", f"--part={bad}", "--out", str(out)]) == 2
    assert one_line_error(capsys.readouterr().err, "--part", "I/N", "1 <= I <= N", repr(bad))
    assert not out.exists()


def test_whole_run_finishes_what_a_part_left(tmp_path, capsys):
    cfg = write(tmp_path / "six.toml", SIX)
    out = str(tmp_path / "run")
    calls = []
    real = runner.run_cell
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_cell", lambda s, c: (calls.append(c.id), real(s, c))[1])
        assert main(["run", cfg, "--out", out, "--part", "7/7", "--quiet", "--no-plot"]) == 0
        assert calls == [] and "part 7/7 has no cells (the sweep has 6)" in capsys.readouterr().err
        assert main(["run", cfg, "--out", out, "--part", "1/3", "--quiet", "--no-plot",
                     "--jobs", "1"]) == 0
        assert calls == CELLS[0::3] and _manifest(out)["status"] == "partial"
        assert "(2/6 cells done)" in capsys.readouterr().out
        calls.clear()
        assert main(["run", cfg, "--out", out, "--quiet", "--no-plot", "--jobs", "2"]) == 0
    assert sorted(calls) == sorted(CELLS[1::3] + CELLS[2::3])
    assert _manifest(out)["status"] == "complete"
    assert [r["cell"] for r in read_summary(out)] == [c for c in CELLS for _ in range(2)]


def test_a_cell_another_run_holds_is_left_to_it(tmp_path):
    """A cell whose lock another run holds is skipped, then waited for; once that run lets
    go without finishing it (it died), this run computes it."""
    cfg = write(tmp_path / "six.toml", SIX)
    out = tmp_path / "run"
    (out / "cells").mkdir(parents=True)
    held = FileLock(str(out / "cells" / ".flow-again.lock"), thread_local=False)
    held.acquire()
    calls = []
    real = runner.run_cell

    def record(study, cell):
        calls.append(cell.id)
        if len(calls) == len(CELLS) - 1:  # every other cell done: the holder dies soon
            threading.Timer(1.0, held.release).start()
        return real(study, cell)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_cell", record)
        assert main(["run", cfg, "--out", str(out), "--quiet", "--no-plot", "--jobs", "1"]) == 0
    assert calls == [c for c in CELLS if c != "flow-again"] + ["flow-again"]
    assert _manifest(str(out))["status"] == "complete"
