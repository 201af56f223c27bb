"""Every study is a config: the analyses a config can ask for (path lengths, equilibria, Euler
steps over h, the interpolation flow), a user's own flow joining a study without touching the
runner, and the typed records behind summary.csv."""

import dataclasses
import math

import jax.numpy as jnp
import pytest

import flowlab as fl
from flowlab.study.config import parse_config
from flowlab.study.records import RunRecord, columns, from_row
from flowlab.study.runner import run_study
from flowlab.study.store import read_summary

TEACHER = {"generator": "teacher", "num_points": 6, "in_size": 2, "seed": 0}


def run(tmp_path, raw: dict, name: str) -> list[dict]:
    study = parse_config({"name": name, **raw}, where=f"<{name}>")
    store = run_study(study, str(tmp_path / name), progress=False)
    assert store.manifest["status"] == "complete", store.manifest["cells"]
    return read_summary(store.path)


class ScaledAdaptedFlow(fl.AbstractFlow):
    """A user's flow: θ' = −c·D⁺∇_X C, so every output mode decays at cκ."""

    scale: float = 0.5

    def velocity(self, problem, theta):
        return self.scale * fl.AdaptedFlow().velocity(problem, theta)

    def mode_rates(self, problem, sigma):
        return jnp.full_like(sigma, self.scale * problem.kappa)


def test_user_flow_and_path_lengths(tmp_path, monkeypatch):
    monkeypatch.setitem(fl.FLOWS, "scaled", ScaledAdaptedFlow)
    rows = run(tmp_path, {
        "data": TEACHER, "model": {"depth": 1, "width": 8}, "loss": {"kappa": 1.0},
        "flows": {"adapted": {}, "slow": {"kind": "scaled", "scale": 0.25}},
        "integrator": {"t1": 4.0, "num_saves": 401, "rtol": 1e-10, "atol": 1e-10},
        "analysis": {"path_lengths": True}, "sweep": {"seeds": 1},
    }, "paths")
    adapted, slow = (next(r for r in rows if r["flow"] == f) for f in ("adapted", "slow"))
    # the runner asked the user's flow for its prediction: 2·(cκ)
    assert slow["predicted_rate_start"] == pytest.approx(0.5)
    assert abs(slow["measured_rate"] - 0.5) < 1e-3 * 0.5
    assert slow["rate_bound"] == 0.0  # it states no bound
    # the adapted output path is the straight segment: g-length = chord, horizontal velocity
    assert adapted["path.g_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert adapted["path.max_vertical_fraction"] < 1e-10
    assert adapted["path.euclidean_length"] <= adapted["path.length_bound"]
    assert adapted["segment_distance"] < 1e-6 and adapted["theory_log_error"] < 1e-5


def test_equilibria_of_the_bottleneck(tmp_path):
    """Reduced-rank regression: rank D = r < QN at the end, K − r zero Hessian eigenvalues, and
    scipy's least_squares reaches the same cost from the same start."""
    rows = run(tmp_path, {
        "data": {"generator": "random_labels", "num_points": 8, "in_size": 4, "out_size": 3},
        "model": {"depth": 1, "width": 2, "activation": "identity"}, "loss": {"kappa": 1.0},
        "flows": {"damped": {"damping": 1e-3}},
        "integrator": {"t1": 60.0, "rtol": 1e-10, "atol": 1e-10, "max_condition": "off"},
        "analysis": {"equilibrium": True}, "compare": {"least_squares": True},
        "sweep": {"seeds": 2},
    }, "equilibria")
    for r in rows:
        assert r["K"] == 19 and r["QN"] == 24
        assert r["equilibrium.rank_deficient"] is True
        assert r["equilibrium.expected_null_dim"] == r["K"] - r["equilibrium.rank"]
        assert r["equilibrium.hessian_zero_eigs"] == r["equilibrium.expected_null_dim"]
        assert r["equilibrium.stationarity"] < 1e-4
        assert r["lsq.cost_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_euler_steps_over_h_and_interpolation(tmp_path):
    rows = run(tmp_path, {
        "data": TEACHER, "model": {"depth": 1, "width": 8}, "loss": {"kappa": 1.0},
        "flows": {"adapted": {}}, "integrator": {"method": "euler", "num_steps": 30},
        "sweep": {"step_size": [0.25, 0.5], "seeds": 1},
    }, "discrete")
    for r in rows:
        h = r["step_size"]
        assert r["predicted_step_ratio"] == pytest.approx((1 - h) ** 2)
        assert abs(r["last_step_ratio"] - (1 - h) ** 2) < 1e-3
        assert abs(r["measured_rate"] - r["predicted_rate_start"]) < 0.05 * r["measured_rate"]
    rows = run(tmp_path, {
        "data": TEACHER, "model": {"depth": 1, "width": 8},
        "flows": {"interpolation": {}},
        "integrator": {"t1": 1.0, "num_saves": 51, "rtol": 1e-10, "atol": 1e-10},
        "sweep": {"seeds": 2},
    }, "interpolation")
    for r in rows:
        assert r["segment_distance"] < 1e-6
        assert r["theory_log_error"] < 1e-5
        assert r["C_final"] < 1e-12 * r["C0"]
        assert math.isnan(r["predicted_rate_start"])


def test_records_round_trip(tmp_path):
    """Every summary column is a RunRecord field, typed: a row parses back into a record."""
    rows = run(tmp_path, {
        "data": TEACHER, "model": {"depth": 1, "width": 4},
        "flows": {"adapted": {}},
        "integrator": {"t1": "auto", "cost_target_relative": 1e-6},
        "compare": {"least_squares": True}, "sweep": {"seeds": 1},
    }, "records")
    names = dict(columns())
    for r in rows:
        assert set(r) <= set(names)
        record = from_row(r)
        assert isinstance(record, RunRecord) and record.lsq is not None
        assert record.as_row().keys() == r.keys()
        assert isinstance(record.K, int) and isinstance(record.stop_reason, str)
    for f in dataclasses.fields(RunRecord):
        assert f.metadata["doc"], f.name
