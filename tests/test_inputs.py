"""Bad input fails early with a message that names the problem; loaders and generators."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl


@pytest.fixture(scope="module")
def small():
    data = fl.random_labels(jr.key(0), 8, 2, 1)
    return fl.LeastSquaresProblem(fl.MLP(2, 1, [8], key=jr.key(1)), data)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_is_refused(bad):
    x = np.ones((4, 2))
    x[1, 0] = bad
    with pytest.raises(ValueError, match="inputs contain 1 non-finite"):
        fl.Dataset(x, np.zeros(4))
    with pytest.raises(ValueError, match="targets contain 1 non-finite"):
        fl.Dataset(np.ones((4, 2)), np.where(np.arange(4) == 2, bad, 0.0))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="disagree on N"):
        fl.Dataset(np.ones((4, 2)), np.ones(5))
    with pytest.raises(ValueError, match="must be \\(N, M\\)"):
        fl.Dataset(np.ones((4, 2, 1)), np.ones(4))
    data = fl.random_labels(jr.key(0), 4, 3, 2)
    with pytest.raises(ValueError, match="cannot be applied to inputs"):
        fl.LeastSquaresProblem(fl.MLP(2, 2, [4], key=jr.key(0)), data)
    with pytest.raises(ValueError, match="targets need"):
        fl.LeastSquaresProblem(fl.MLP(3, 1, [4], key=jr.key(0)), data)


def test_cholesky_on_underparametrised_problem_is_refused():
    data = fl.random_labels(jr.key(0), 30, 2, 1)
    problem = fl.LeastSquaresProblem(fl.MLP(2, 1, [2], key=jr.key(1)), data)
    with pytest.raises(ValueError, match="'cholesky' solver needs full row rank.*K = 9 < QN = 30"):
        fl.simulate(problem, fl.AdaptedFlow("cholesky"), t1=1.0)


def test_bad_numbers_are_refused(small):
    flow = fl.GradientFlow()
    for kw, msg in [
        (dict(t1=0.0), "setting t1 = 0.0: expected a positive number"),
        (dict(t1=-1.0), "setting t1 = -1.0: expected a positive number"),
        (dict(t1=1.0, cost_target=0.0), "setting cost_target = 0.0: expected a positive"),
        (dict(t1=1.0, cost_target=-1e-3), "setting cost_target = -0.001: expected a positive"),
        (dict(t1=1.0, cost_target_relative=0.0), "setting cost_target_relative = 0.0: expected a "
                                                  "number in \\(0, 1\\)"),
        (dict(t1=1.0, cost_target_relative=2.0), "setting cost_target_relative = 2.0: expected a "
                                                  "number in \\(0, 1\\)"),
        (dict(t1=1.0, ts=[0.0, 2.0]), "setting ts: save times must lie in \\[0, t1 = 1.0\\]"),
        (dict(t1=1.0, ts=[0.0, 0.5, 0.2]), "setting ts = .*: expected a list of >= 2 increasing"),
        (dict(t1=1.0, rtol=0.0), "setting rtol = 0.0: expected a positive number"),
    ]:
        with pytest.raises(ValueError, match=msg):
            fl.simulate(small, flow, **kw)
    with pytest.raises(TypeError, match="unknown integrator setting.*'rtl'"):
        fl.simulate(small, flow, t1=1.0, rtl=1e-3)
    with pytest.raises(TypeError, match="'solver' is now 'ode_solver'"):  # the ODE solver's old name
        fl.simulate(small, flow, t1=1.0, solver="tsit5")
    with pytest.raises(ValueError, match="epsilon must be positive"):
        fl.theory.stopping_time(1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="theta0 must have shape"):
        fl.simulate(small, flow, jnp.ones(3), t1=1.0)
    with pytest.raises(ValueError, match="kappa must be a positive"):
        fl.LeastSquaresProblem(small.model(), fl.random_labels(jr.key(0), 8, 2, 1), kappa=0.0)


def test_unknown_names_are_refused(small):
    with pytest.raises(ValueError, match="unknown activation 'swish'.*expected one of"):
        fl.MLP(2, 1, [4], "swish", key=jr.key(0))
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        fl.AdaptedFlow("lu")
    with pytest.raises(ValueError, match="setting ode_solver = 'rk4': expected one of .*'tsit5'"):
        fl.simulate(small, fl.GradientFlow(), t1=1.0, ode_solver="rk4")
    with pytest.raises(ValueError, match="unknown parametrization"):
        fl.MLP(2, 1, [4], parametrization="mup", key=jr.key(0))
    with pytest.raises(ValueError, match="needs damping > 0"):
        fl.DampedFlow(damping=0.0)


def test_npz_and_csv_round_trip(tmp_path):
    data = fl.gaussian_clusters(jr.key(0), 12, 3, num_classes=4)
    assert data.targets.shape == (12, 4)
    np.testing.assert_allclose(data.targets.sum(axis=1), 1.0)
    path = tmp_path / "d.npz"
    np.savez(path, inputs=np.asarray(data.inputs), targets=np.asarray(data.targets))
    back = fl.load_npz(path)
    np.testing.assert_array_equal(back.inputs, data.inputs)
    csv = tmp_path / "d.csv"
    rows = np.hstack([np.asarray(data.inputs), np.asarray(data.targets)])
    csv.write_text("a,b,c,t1,t2,t3,t4\n" + "\n".join(",".join(str(float(v)) for v in r) for r in rows))
    back = fl.load_csv(csv, num_targets=4)
    np.testing.assert_allclose(back.targets, data.targets)
    np.testing.assert_allclose(back.inputs, data.inputs)
    csv.write_text("1,2\n3,x\n")
    with pytest.raises(ValueError, match="line 2 has a non-numeric entry"):
        fl.load_csv(csv)
    obj = tmp_path / "obj.npz"
    np.savez(obj, inputs=np.array([{"a": 1}], dtype=object), targets=np.ones(1))
    with pytest.raises(ValueError, match="[Oo]bject arrays cannot be loaded"):
        fl.load_npz(obj)


def test_generators_shapes_and_teacher_is_realisable():
    for make in (fl.smooth_regression, fl.random_labels):
        data = make(jr.key(1), 10, 3, 2)
        assert data.inputs.shape == (10, 3) and data.targets.shape == (10, 2)
    data = fl.teacher(jr.key(2), 10, 3, 1, hidden=(5,))
    assert np.all(np.isfinite(np.asarray(data.targets)))
