"""Config loading, validation messages and overrides (no solves)."""

import os

import pytest

from flowlab.cli import main
from flowlab.config import ConfigError, apply_overrides, load_config, parse_config
from flowlab.sweep import expand_grid

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
    assert c["flows"]["lm"] == {"kind": "damped", "label": "lm", "params": {"damping": 0.01}}
    assert c["output"]["dir"] == os.path.join("runs", "tiny")
    assert c["analysis"]["epsilon"] == c["integrator"]["stop_relative"]
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
