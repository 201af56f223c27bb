"""Sub-Riemannian diagnostics (MATH §3.5): horizontality, g-length = |X(0) − Y|, θ-length bound."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowlab as fl

# the same problem and options as tests/test_homotopy.py: the compiled solve is shared
T1 = 10.0


def make_problem():
    return fl.LeastSquaresProblem(fl.MLP(2, 1, (8,), key=jr.PRNGKey(1)),
                                  fl.teacher(jr.PRNGKey(0), 6, 2), kappa=1.0)


def run(pb, alpha):
    return fl.simulate(pb, fl.HomotopyFlow(alpha=alpha), t1=T1, num_saves=201, rtol=1e-10,
                       atol=1e-10, extras=fl.SUBRIEMANNIAN_EXTRAS, save_theta=True)


@pytest.fixture(scope="module")
def adapted_run():
    pb = make_problem()
    # HomotopyFlow at α = 1 is the adapted flow (checked in test_homotopy to 1e-12)
    np.testing.assert_allclose(fl.HomotopyFlow(alpha=1.0).velocity(pb, pb.theta0),
                               fl.AdaptedFlow().velocity(pb, pb.theta0), atol=1e-12)
    return pb, run(pb, 1.0)


def test_adapted_flow_is_horizontal(adapted_run):
    _, tr = adapted_run
    assert tr.stop_reason == "t1_reached"
    assert float(np.max(tr.extras["vertical_fraction"])) < 1e-10


def test_g_length_equals_output_distance(adapted_run):
    pb, tr = adapted_run
    lengths = fl.path_lengths(tr)
    pred = lengths["output_distance"] * (1 - np.exp(-pb.kappa * T1))
    # trapezoid on 201 saves: relative error ≈ (κh)²/12 = 2e-4; the Richardson estimate bounds it
    assert lengths["g_length_error"] < 1e-3 * lengths["g_length"]
    assert abs(lengths["g_length"] - pred) <= 2 * lengths["g_length_error"] + 1e-9
    np.testing.assert_allclose(lengths["g_ratio"], 1.0, atol=1e-3)
    # |X'| = κ|X − Y| pointwise on the straight output path
    x = np.asarray(tr.outputs)
    np.testing.assert_allclose(tr.extras["output_speed"],
                               np.linalg.norm(x - np.asarray(tr.targets), axis=1), rtol=1e-7)


def test_parameter_length_bound(adapted_run):
    _, tr = adapted_run
    lengths = fl.path_lengths(tr)
    bound = lengths["output_distance"] / float(np.min(tr.sigma_min))
    assert lengths["parameter_chord"] <= lengths["euclidean_length"] + lengths["euclidean_length_error"]
    assert lengths["euclidean_length"] <= bound


class _Tilted(fl.AbstractFlow):
    """The standard field plus a fixed vector: not horizontal where that vector is vertical."""

    extra: jnp.ndarray

    def velocity(self, problem, theta):
        return fl.GradientFlow().velocity(problem, theta) + self.extra


@eqx.filter_jit
def _kernel_checks(pb, th, key):
    grad = fl.GradientFlow()
    k = fl.kernel_component(pb, th, jr.normal(key, th.shape))
    v = grad.velocity(pb, th)
    tilted = _Tilted(k * (jnp.linalg.norm(v) / jnp.linalg.norm(k)))
    return {
        "grad_vertical": fl.vertical_fraction(pb, grad, th),
        "dk": pb.jacobian(th) @ k,
        "tilted_vertical": fl.vertical_fraction(pb, tilted, th),
        "tilted_speed": fl.parameter_speed(pb, tilted, th) / jnp.linalg.norm(v),
        "tilted_output_speed": fl.output_speed(pb, tilted, th),
        "dv": jnp.linalg.norm(pb.jacobian(th) @ v),
    }


def test_vertical_fraction_detects_a_kernel_component():
    pb = make_problem()
    out = _kernel_checks(pb, pb.theta0, jr.PRNGKey(5))
    assert float(out["grad_vertical"]) < 1e-12  # −Dᵀg ∈ range Dᵀ
    np.testing.assert_allclose(out["dk"], 0.0, atol=1e-12)
    # θ' = v + k with k ⊥ v in ker D, |k| = |v|: vertical fraction 1/√2, |θ'| = √2|v|, |Dθ'| = |Dv|
    np.testing.assert_allclose(out["tilted_vertical"], 2**-0.5, rtol=1e-10)
    np.testing.assert_allclose(out["tilted_speed"], 2**0.5, rtol=1e-12)
    np.testing.assert_allclose(out["tilted_output_speed"], out["dv"], rtol=1e-10)


def test_path_lengths_needs_the_extras(adapted_run):
    _, tr = adapted_run
    import equinox as eqx

    bare = eqx.tree_at(lambda t: t.extras, tr, {})
    with pytest.raises(ValueError, match="SUBRIEMANNIAN_EXTRAS"):
        fl.path_lengths(bare)
