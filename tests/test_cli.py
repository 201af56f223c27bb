"""`flowlab run|plot|report|info` end to end on a tiny study; resuming; refusing a changed config.

One module-scoped run (2 cells: adapted and standard flow, width 8, 2 seeds) is shared: the
compiled solves are cached in-process, so the resumed runs below compile nothing new."""

import json
import math
import os

import numpy as np
import pytest

from flowlab.cli import main
from flowlab.study import runner as sweep
from flowlab.study.store import read_summary

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
[flows.standard]
[integrator]
cost_target_relative = 1e-6
t1 = "auto"
num_saves = 21
check_finite = false
max_condition = "off"
[sweep]
seeds = 2
"""
TIMING = ("wall_time", "compile_time")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    p.write_text(TINY)
    return str(p)


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("FLOWLAB_COMPILATION_CACHE", "off")


@pytest.fixture(scope="module")
def run_dir(config, tmp_path_factory):
    os.environ["FLOWLAB_COMPILATION_CACHE"] = "off"
    out = str(tmp_path_factory.mktemp("runs") / "full")
    assert main(["run", config, "--out", out, "--quiet", "--jobs", "1"]) == 0
    return out


def _text(path):
    with open(path) as f:
        return f.read()


def _json(run):
    return json.loads(_text(os.path.join(run, "manifest.json")))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _same_rows(a, b):
    a, b = _strip(a), _strip(b)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert (math.isnan(ra[k]) and math.isnan(rb[k])) or ra[k] == pytest.approx(
                    rb[k], rel=1e-9, abs=1e-300), k
            else:
                assert ra[k] == rb[k], k


def test_run_writes_summary_arrays_figures(run_dir):
    rows = read_summary(run_dir)
    assert len(rows) == 4 and {r["flow"] for r in rows} == {"adapted", "standard"}
    for r in rows:
        assert r["K"] == 8 * 3 + 9 and r["QN"] == 6 and r["kappa"] == pytest.approx(1 / 6)
        assert r["min_lambda_min"] == pytest.approx(r["min_sigma_min"] ** 2)
    for r in (r for r in rows if r["flow"] == "adapted"):
        two_kappa = 2 * r["kappa"]
        assert abs(r["measured_rate"] - two_kappa) < 0.01 * two_kappa
        assert r["predicted_rate_start"] == r["predicted_rate_end"] == pytest.approx(two_kappa)
        assert r["stop_reason"] == "cost_target"
        # C(T_ε) = ε·C(0) at the a priori time T_ε = ln(1/ε)/(2κ)
        assert r["T_eps_measured"] == pytest.approx(math.log(1e6) / two_kappa, rel=1e-3)
        assert r["C_final"] == pytest.approx(1e-6 * r["C0"], rel=1e-3)
    with np.load(os.path.join(run_dir, "cells", "flow-standard.npz"), allow_pickle=False) as f:
        lam0, lam1 = f["sigma_min_start"] ** 2, f["sigma_min_end"] ** 2
        assert np.allclose(f["sigma_min"][:, 0], f["sigma_min_start"], rtol=1e-6)
    for i, r in enumerate(r for r in rows if r["flow"] == "standard"):
        # the standard flow's predicted tail rate is 2κ·λ_min(Θ) at the start and the end
        assert r["predicted_rate_start"] == pytest.approx(2 * r["kappa"] * lam0[i])
        assert r["predicted_rate_end"] == pytest.approx(2 * r["kappa"] * lam1[i])
        assert r["min_lambda_min"] <= min(lam0[i], lam1[i]) * (1 + 1e-9)
        assert r["stop_reason"] in ("t1_reached", "cost_target")
    manifest = _json(run_dir)
    assert manifest["status"] == "complete"
    assert manifest["sessions"][0]["x64"] is True
    assert all(c["status"] == "done" for c in manifest["cells"].values())
    with np.load(os.path.join(run_dir, "cells", "flow-adapted.npz"), allow_pickle=False) as f:
        assert f["cost"].shape == (2, 21) and f["outputs"].shape == (2, 21, 6)
        # the saved outputs follow the straight segment X(s) = Y + e^{−κs}(X(0) − Y)
        ok = f["valid"][0]
        pred = f["targets"] + np.exp(-f["kappa"] * f["ts"][0][ok])[:, None] * (f["outputs0"][0] - f["targets"])
        assert np.max(np.abs(f["outputs"][0][ok] - pred)) < 1e-5
    for name in ("decay", "rates", "stopping_time"):
        for ext in ("png", "pdf"):
            assert os.path.getsize(os.path.join(run_dir, "figures", f"{name}.{ext}")) > 1000


def test_report_plot_info(run_dir, capsys):
    assert main(["report", run_dir]) == 0
    out = capsys.readouterr().out
    assert "adapted" in out and "standard" in out and "T_ε pred (med)" in out and "rel err (max)" in out
    md = _text(os.path.join(run_dir, "report.md"))
    assert md.count("\n| ") >= 3 and "![decay]" in md
    assert main(["plot", run_dir]) == 0
    assert main(["info"]) == 0
    assert "float64" in capsys.readouterr().out


def test_resume_after_interrupt(config, run_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "resumed")
    calls = []
    real = sweep.run_cell

    def interrupt_second(study, cell):
        calls.append(cell.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(study, cell)

    monkeypatch.setattr(sweep, "run_cell", interrupt_second)
    assert main(["run", config, "--out", out, "--quiet", "--jobs", "1"]) == 130
    manifest = _json(out)
    assert [c["status"] for c in manifest["cells"].values()] == ["done", "running"]
    assert manifest["status"] == "interrupted"
    assert len(read_summary(out)) == 2

    calls.clear()
    monkeypatch.setattr(sweep, "run_cell", lambda s, c: (calls.append(c.id), real(s, c))[1])
    assert main(["run", config, "--out", out, "--quiet", "--no-plot", "--jobs", "1"]) == 0
    assert calls == ["flow-standard"]  # the finished cell was skipped
    _same_rows(read_summary(out), read_summary(run_dir))
    manifest = _json(out)
    assert manifest["status"] == "complete" and len(manifest["sessions"]) == 2
    # nothing left half-written
    assert not [f for f in os.listdir(os.path.join(out, "cells")) if ".tmp" in f]

    # a rerun of a finished folder does nothing
    calls.clear()
    assert main(["run", config, "--out", out, "--quiet", "--no-plot", "--jobs", "1"]) == 0
    assert calls == []


def test_changed_config_is_refused(config, run_dir, capsys):
    before = _text(os.path.join(run_dir, "manifest.json"))
    assert main(["run", config, "integrator.rtol=1e-6", "--out", run_dir, "--quiet", "--jobs", "1"]) != 0
    err = capsys.readouterr().err
    assert "different config" in err and "integrator.rtol" in err
    assert _text(os.path.join(run_dir, "manifest.json")) == before


def test_two_jobs_give_the_same_rows(config, run_dir, tmp_path):
    out = str(tmp_path / "parallel")
    assert main(["run", config, "--out", out, "--quiet", "--no-plot", "--jobs", "2"]) == 0
    _same_rows(read_summary(out), read_summary(run_dir))
