"""Studies beyond synthetic regression: a [pde] study records the relative L2 error of u_θ, a
held-out test set (data.test_fraction) records the test loss along the run; scikit-learn's
bundled data sets as generators."""

import math

import jax.random as jr
import numpy as np
import pytest

from flowlab import data
from flowlab.study.config import ConfigError, load_config, parse_config
from flowlab.study.grid import expand_grid
from flowlab.study.runner import run_cell


@pytest.mark.slow  # ~15 s: one euler compile of a PDE cell through the runner
def test_pde_study_records_the_error():
    study = load_config("configs/pinn.toml", [
        "sweep.seeds=1", "integrator.num_steps=4", "model.width=8",
        "pde.params={num_interior=4, num_boundary=2}"])
    assert study.config["data"]["in_size"] == 2  # the PDE's dimension
    cells = expand_grid(study)
    arrays, records = run_cell(study, cells[0])
    r = records[0]
    assert (r.N, r.M, r.Q, r.QN) == (24, 2, 1, 24) and r.K == 33
    assert r.pde is not None and r.pde.problem == "poisson_2d"
    assert 0 < r.pde.best_error <= r.pde.error0 and math.isfinite(r.pde.error)
    err = arrays["extras.relative_l2_error"][0]
    assert err.shape == arrays["cost"][0].shape and np.isfinite(err[0])
    assert "pde.best_error" in r.as_row()


def _digits_config(**integrator):
    return {
        "name": "digits_test",
        "data": {"generator": "digits", "num_points": 40, "in_size": 64, "out_size": 3,
                 "test_fraction": 0.25, "params": {"label_smoothing": 0.1}},
        "model": {"depth": 1, "width": 8},
        "loss": {"kind": "softmax_cross_entropy"},
        "flows": {"adapted": {}},
        "integrator": {"method": "euler", "num_steps": 5, "diagnostics": False, **integrator},
    }


def test_test_set_recorded_along_the_run():
    study = parse_config(_digits_config())
    arrays, records = run_cell(study, expand_grid(study)[0])
    r = records[0]
    assert r.N == 30 and r.test.num_points == 10  # 40 images, a quarter held out
    assert 0.0 <= r.test.accuracy <= 1.0 and math.isfinite(r.test.loss)
    assert r.test.best_loss <= r.test.loss0
    assert arrays["extras.test_loss"].shape == arrays["cost"].shape
    assert "test.loss_at_eps" in r.as_row()


def test_test_loss_at_eps_is_read_at_the_cost_event():
    """A run stopped by its cost event ends between saves at C = ε·C(0): the test loss at ε is
    the one at that end point (no save before it reached ε)."""
    study = parse_config({
        "name": "diabetes_eps",
        "data": {"generator": "diabetes", "num_points": 40, "in_size": 10, "test_fraction": 0.25},
        "model": {"depth": 1, "width": 32},
        "flows": {"adapted": {}},
        "integrator": {"cost_target_relative": 1e-3, "t1": "auto", "t1_factor": 1.5,
                       "num_saves": 7, "check_finite": False, "max_condition": "off"},
    })
    _, records = run_cell(study, expand_grid(study)[0])
    r = records[0]
    assert r.stop_reason == "cost_target"
    assert r.test.loss_at_eps == pytest.approx(r.test.loss, rel=1e-12)
    assert math.isfinite(r.test.loss_at_eps)


def test_config_errors():
    base = {"pde": {"problem": "poisson_1d", "params": {"num_interior": 8}},
            "flows": {"adapted": {}}}
    parse_config(base)
    bad = {**base, "pde": {"problem": "poisson_1d", "params": {"num_boundary": 8}}}
    with pytest.raises(ConfigError, match="pde.params.num_boundary"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="pde.problem"):
        parse_config({**base, "pde": {"problem": "heat"}})
    with pytest.raises(ConfigError, match="data.test_fraction"):
        parse_config({"data": {"test_fraction": 1.5}, "flows": {"adapted": {}}})
    with pytest.raises(ConfigError, match="data.file or"):
        parse_config({**base, "data": {"test_fraction": 0.5}})


def test_sklearn_loaders_and_split():
    d = data.diabetes(jr.key(0), num_points=100)
    assert (d.num_points, d.in_size, d.out_size) == (100, 10, 1)
    full = data.diabetes(jr.key(0), num_points=442)
    np.testing.assert_allclose(np.asarray(full.inputs).mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(full.targets).std(), 1.0, rtol=1e-12)
    g = data.digits(jr.key(1), num_points=60, num_classes=4, label_smoothing=0.2)
    y = np.asarray(g.targets)
    assert y.shape == (60, 4) and np.allclose(y.sum(axis=1), 1.0) and y.min() == pytest.approx(0.05)
    assert 0.0 <= float(np.asarray(g.inputs).min()) and float(np.asarray(g.inputs).max()) <= 1.0
    train, test = data.train_test_split(g, 0.25, jr.key(2))
    assert (train.num_points, test.num_points) == (45, 15)
    rows = ({tuple(r) for r in np.asarray(train.inputs)}
            & {tuple(r) for r in np.asarray(test.inputs)})
    assert not rows or len(rows) < 15  # disjoint up to duplicate images
    with pytest.raises(ValueError, match="in_size = 10"):
        data.diabetes(jr.key(0), 50, in_size=2)
    with pytest.raises(ValueError, match=r"\[1, 442\]"):
        data.diabetes(jr.key(0), 500)
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(g, 1.0, jr.key(0))
