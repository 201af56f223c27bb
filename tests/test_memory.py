"""A cell too large for the machine is refused before it runs (exit 2, the estimate, the memory
available, what to change); an out-of-memory inside XLA is reported as such."""

import jax.random as jr

import flowlab as fl
from flowlab.cli import main
from flowlab.study import memory
from flowlab.study.config import parse_config
from flowlab.study.grid import expand_grid

CONFIG = """
name = "big"
[data]
generator = "smooth_regression"
num_points = 16
[model]
depth = 2
width = 40000
[flows.adapted]
"""


def test_estimate_counts_theta_and_the_gram():
    study = parse_config({"name": "x", "data": {"generator": "smooth_regression",
                                                "num_points": 64},
                          "model": {"depth": 2, "width": 32}, "flows": {"adapted": {}}}, "x")
    (cell,) = expand_grid(study)
    k = fl.LeastSquaresProblem(fl.MLP(2, 1, [32, 32], "tanh", key=jr.key(0)),
                               fl.smooth_regression(jr.key(0), 64, 2)).num_params
    assert memory.mlp_num_params(2, (32, 32), 1) == k
    need = memory.estimate_cell_bytes(study, cell.values)
    assert need == 8 * (memory.THETA_COPIES * k + 2 * 64 * 64 + 2 * 64 * 64)


def test_a_cell_too_large_is_refused_with_exit_2(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big.toml"
    path.write_text(CONFIG)
    monkeypatch.setattr(memory, "available_bytes", lambda: 12 * 2**30)
    code = main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "GiB" in err and "12.0 GiB" in err and "nystrom" in err and "big.toml" in err
    assert not (tmp_path / "runs" / "manifest.json").exists()


def test_out_of_memory_is_recognised():
    assert memory.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                                "12800000000 bytes"))
    assert not memory.is_out_of_memory(ValueError("bad shape"))
