"""Config loading, validation messages and overrides (no solves)."""

import os
from types import SimpleNamespace

import pytest

from flowlab import SettingError
from flowlab.cli import main
from flowlab.integrate import IntegratorOptions
from flowlab.study.config import ConfigError, apply_overrides, load_config, parse_config
from flowlab.study.grid import expand_grid

GOOD = """
name = "tiny"
[data]
generator = "teacher"
num_points = 6
[model]
depth = 1
width = 8
[flows.adapted]
[flows.standard]
[flows.lm]
kind = "damped"
damping = 0.01
[sweep]
width = [4, 8]
seeds = 2
"""


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_good_config_defaults_and_grid(tmp_path):
    study = load_config(write(tmp_path, GOOD))
    c = study.config
    assert c["loss"]["kappa"] == "1/N" and c["precision"] == "float64"
    assert c["flows"]["lm"] == {"kind": "damped", "params": {"damping": 0.01}}
    assert c["output"]["dir"] == os.path.join("runs", "tiny")
    # the [integrator] defaults are IntegratorOptions' defaults, key for key
    settable = {n: f for n, f in IntegratorOptions.fields().items() if f.metadata["config"]}
    assert set(c["integrator"]) == set(settable) | {"method", "t1_factor"}
    for name, f in settable.items():
        assert c["integrator"][name] == f.default, name
    assert c["integrator"]["cost_target_relative"] is None and c["analysis"]["epsilon"] == 1e-6
    cells = expand_grid(study)
    assert [cell.id for cell in cells] == [
        f"width-{w}__flow-{f}" for w in (4, 8) for f in ("adapted", "standard", "lm")
    ]
    assert all(cell.values["seeds"] == 2 for cell in cells)


def test_overrides_parse_toml_values(tmp_path):
    path = write(tmp_path, GOOD)
    study = load_config(path, ["model.activation=relu", "sweep.width=[16, 32]",
                               "flows.lm.damping=1e-4", "integrator.rtol=1e-10",
                               "sweep.flow=['adapted']"])
    c = study.config
    assert c["model"]["activation"] == "relu"
    assert c["sweep"]["width"] == [16, 32]
    assert c["flows"]["lm"]["params"]["damping"] == 1e-4
    assert c["integrator"]["rtol"] == 1e-10
    assert [cell.values["flow"] for cell in expand_grid(study)] == ["adapted", "adapted"]
    # a different override changes the fingerprint, the output folder does not
    assert study.fingerprint() != load_config(path).fingerprint()
    assert load_config(path, ["output.dir='elsewhere'"]).fingerprint() == load_config(path).fingerprint()
    assert apply_overrides({}, ["a.b=x y"]) == {"a": {"b": "x y"}}


@pytest.mark.parametrize(
    "patch, key, words",
    [
        ("[model]\nwidht = 8\n", "model.widht", ["unknown key", "model.width"]),
        ("[model]\nwidth = -3\n", "model.width", ["integer >= 1", "-3"]),
        ("[model]\nwidth = 'wide'\n", "model.width", ["integer", "'wide'"]),
        ("[sweep]\nwidth = [8, -1]\n", "sweep.width", ["integer >= 1", "entry 1"]),
        ("[sweep]\nseeds = 0\n", "sweep.seeds", ["integer >= 1", "0"]),
        ("[data]\nfile = 'missing.csv'\n", "data.file", ["missing.csv"]),
        ("[data]\ngenerator = 'teachr'\n", "data.generator", ["'teacher'"]),
        ("[data.params]\nnoyse = 0.1\n", "data.params.noyse", ["data.params.noise"]),
        ("[flows.adapted]\nsolvr = 'qr'\n", "flows.adapted.solvr", ["flows.adapted.solver"]),
        ("[flows.x]\nkind = 'adaptd'\n", "flows.x.kind", ["'adapted'"]),
        ("[integrator]\nrtol = true\n", "integrator.rtol", ["positive number"]),
        ("[integrator]\node_solver = 'rk4'\n", "integrator.ode_solver", ["'tsit5'"]),
        ("[integrator]\nsigma_min_tol = 'of'\n", "integrator.sigma_min_tol", ["or off"]),
        ("[integrator]\nt1 = 1.0\nts = [0.0, 2.0]\n", "integrator.ts", ["[0, t1 = 1.0]"]),
        ("[integrator]\nt1 = 'auto'\nts = [0.0, 2.0]\n", "integrator.ts", ["numeric integrator.t1"]),
        ("[sweep]\nflow = ['adapted', 'nope']\n", "sweep.flow", ["'nope'"]),
        ("colour = 1\n", "colour", ["unknown key"]),
    ],
)
def test_bad_configs_name_the_key(tmp_path, capsys, patch, key, words):
    extra = "\n[model]\nwidth = 8\n" if not patch.startswith("[model]") else ""
    path = write(tmp_path, patch + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert path in msg and f"'{key}'" in msg
    for w in words:
        assert w in msg, msg
    # the CLI exits non-zero with the same message and writes nothing
    out = tmp_path / "out"
    assert main(["run", path, "--out", str(out), "--quiet"]) != 0
    assert f"'{key}'" in capsys.readouterr().err
    assert not out.exists()


def test_bad_override_and_missing_file(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    out = tmp_path / "out"
    assert main(["run", path, "model.depth=0", "--out", str(out), "--quiet"]) != 0
    assert "'model.depth'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml"), "--out", str(out)]) != 0
    assert "nope.toml" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError, match="'flows.standard'"):
        parse_config({"flows": {"standard": 3}}, "inline")


def test_parsing_a_config_starts_no_jax_backend(tmp_path):
    """XLA reads its flags (the CLI's compile settings) when the backend starts, so loading and
    validating a config, flows included, must not start it."""
    import subprocess
    import sys

    path = write(tmp_path, GOOD + "[flows.h]\nkind = 'homotopy'\nalpha = 0.3\n")
    code = ("import jax._src.xla_bridge as xb; from flowlab.study.config import load_config; "
            f"load_config({path!r}); print(len(xb._backends))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_the_old_integrator_key_solver_is_refused_by_name(tmp_path):
    """`solver` is the flow's pseudo-inverse; the ODE solver is `ode_solver`. A config, an
    override or a keyword that still says `solver` for the integrator fails, naming the new key."""
    path = write(tmp_path, GOOD + "[integrator]\nsolver = 'tsit5'\n")
    with pytest.raises(ConfigError, match=r"key 'integrator.solver': renamed.*'integrator.ode_solver'"):
        load_config(path)
    with pytest.raises(ConfigError, match="'integrator.ode_solver'"):
        load_config(write(tmp_path, GOOD, "d.toml"), ["integrator.solver=tsit5"])
    assert load_config(path.replace("c.toml", "d.toml"),
                       ["integrator.ode_solver=tsit5"]).config["integrator"]["ode_solver"] == "tsit5"
    with pytest.raises(TypeError, match="'solver' is now 'ode_solver'"):
        IntegratorOptions.build(solver="tsit5")
    # the flow's own `solver` keeps its meaning
    assert load_config(write(tmp_path, GOOD.replace("[flows.adapted]", "[flows.adapted]\nsolver = 'qr'"),
                             "e.toml")).config["flows"]["adapted"]["params"] == {"solver": "qr"}


def test_setting_errors_carry_their_key():
    """One vocabulary: the config schema and IntegratorOptions refuse with a SettingError that
    names its key, what was expected and what was found; the config reads `.key`."""
    from flowlab.study.config import SCHEMA

    with pytest.raises(SettingError) as info:
        SCHEMA["model"]["width"][0](-3, "model.width")
    assert (info.value.key, info.value.expected, info.value.got) == (
        "model.width", "an integer >= 1", -3)
    with pytest.raises(SettingError) as info:
        SCHEMA["sweep"]["width"][0]([8, "x"], "sweep.width")
    assert info.value.key == "sweep.width" and "entry 1 is 'x' (str)" in info.value.expected
    with pytest.raises(SettingError) as info:
        IntegratorOptions(rtol=0.0)
    assert (info.value.key, info.value.expected, info.value.got) == ("rtol", "a positive number", 0.0)
    assert str(info.value) == "integrator setting rtol = 0.0: expected a positive number"
    with pytest.raises(SettingError) as info:
        IntegratorOptions.build(t1=1.0, ts=[0.0, 2.0])
    assert info.value.key == "ts" and info.value.expected == "save times in [0, t1 = 1.0]"
    with pytest.raises(SettingError) as info:
        IntegratorOptions(backtracking=True, grid_search=10)
    assert info.value.key == "grid_search" and "choose one line search" in str(info.value)
    # a SettingError is a ValueError: callers that caught ValueError still do
    assert issubclass(SettingError, ValueError)
    # the config turns it into its ConfigError by the key, under its table
    with pytest.raises(ConfigError) as info:
        parse_config({"integrator": {"max_backtracks": 0}}, "inline")
    assert info.value.key == "integrator.max_backtracks"
    assert str(info.value) == ("inline: key 'integrator.max_backtracks': expected an integer >= 1, "
                               "found 0 (int)")


def test_config_builds_each_flow_once(monkeypatch):
    """Each [flows.*] table is built once, while validating the config; the runner takes the
    Study's objects (`make_flow`) instead of building them again."""
    import flowlab as fl
    from flowlab.flows import FLOWS
    from flowlab.study.build import make_flow, make_options

    built = []

    class Counted(fl.GradientFlow):
        def __check_init__(self):
            built.append(self)

    monkeypatch.setitem(FLOWS, "counted", Counted)
    raw = {"model": {"width": 4}, "sweep": {"width": [4, 8], "seeds": 2},
           "flows": {"a": {"kind": "counted"}, "b": {"kind": "counted"}, "adapted": {}}}
    study = parse_config(raw, "inline")
    assert len(built) == 2
    assert set(study.flows) == {"a", "b", "adapted"}
    assert isinstance(study.flows["adapted"], fl.AdaptedFlow)
    for cell in expand_grid(study):
        assert make_flow(study, cell.values["flow"]) is study.flows[cell.values["flow"]]
        make_options(study, cell.values, SimpleNamespace(kappa=0.5),
                     make_flow(study, cell.values["flow"]))
    assert len(built) == 2
    # the built objects are no part of the config's plain data or fingerprint
    assert study.as_dict()["flows"]["a"] == {"kind": "counted", "params": {}}
    again = parse_config(raw, "inline")
    assert again.fingerprint() == study.fingerprint() and again == study
