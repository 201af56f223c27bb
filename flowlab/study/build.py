"""From a cell of a Study to the objects of the maths core: dataset, models, problem, flow and
integrator options. Nothing here runs anything."""

import inspect

import jax.numpy as jnp
import jax.random as jr

from ..data import GENERATORS, Dataset, load_csv, load_npz, train_test_split
from ..integrate import IntegratorOptions
from ..losses import LOSSES
from ..nets import MLP
from ..pde import PDES, collocation_points
from ..problem import LeastSquaresProblem


def make_dataset(study, values: dict) -> Dataset:
    """The training set of a cell: the generator's or file's data, less the test set when
    data.test_fraction is set; for a PDE study its collocation points (targets 0, one
    residual each)."""
    if study.config["pde"]["problem"] is not None:
        p = _pde_problem(study, MLP(study.config["data"]["in_size"], 1, [1], key=jr.key(0)),
                         check=False)
        points = collocation_points(p)
        return Dataset(points, jnp.zeros((points.shape[0], 1), points.dtype))
    full = _full_dataset(study, values)
    if study.config["data"]["test_fraction"] is None:
        return full
    return _split(study, full)[0]


def make_test_set(study, values: dict) -> Dataset | None:
    """The held-out test set (data.test_fraction of the data, split by data.seed), or None."""
    if study.config["pde"]["problem"] is not None or study.config["data"]["test_fraction"] is None:
        return None
    return _split(study, _full_dataset(study, values))[1]


_SPLIT_STREAM = 0x73706C74  # "splt"


def _split(study, full):
    d = study.config["data"]
    return train_test_split(full, d["test_fraction"], jr.fold_in(jr.key(d["seed"]), _SPLIT_STREAM))


def _pde_problem(study, model, check=True):
    spec, loss = study.config["pde"], study.config["loss"]
    kwargs = dict(spec["params"])
    if loss["kappa"] != "1/N":  # '1/N' keeps the builder's κ = 1 (weights 1/√n per term)
        kwargs["kappa"] = float(loss["kappa"])
    return PDES[spec["problem"]](model, check=check, **kwargs)


def _full_dataset(study, values: dict) -> Dataset:
    d = study.config["data"]
    if d["file"] is not None:
        if d["file"].endswith(".npz"):
            ds = load_npz(d["file"], d["inputs_key"], d["targets_key"])
        else:
            ds = load_csv(d["file"], d["num_targets"])
        return ds
    gen = GENERATORS[d["generator"]]
    key = jr.key(d["seed"])
    kwargs = dict(d["params"])
    if "num_classes" in _params(gen):
        kwargs["num_classes"] = values["out_size"]
    else:
        kwargs["out_size"] = values["out_size"]
    if "hidden" in kwargs:
        kwargs["hidden"] = tuple(kwargs["hidden"])
    return gen(key, values["num_points"], values["in_size"], **kwargs)


def _params(fn):
    return inspect.signature(fn).parameters


def hidden_widths(study, values: dict) -> tuple[int, ...]:
    m = study.config["model"]
    if m["widths"] is not None:
        return tuple(m["widths"])
    return (values["width"],) * values["depth"]


_MODEL_STREAM = 0x6D6F6465  # "mode": a fixed 32-bit stream tag


def make_models(study, values: dict, dataset: Dataset):
    m = study.config["model"]
    # a stream of its own: split(key(s), n)[i] equals fold_in(key(s), i), so without it a teacher
    # generated from data.seed = s would be model i of sweep.seed = s (C(0) = 0)
    base = jr.fold_in(jr.key(study.config["sweep"]["seed"]), _MODEL_STREAM)
    hidden = hidden_widths(study, values)
    return [
        MLP(dataset.in_size, dataset.out_size, hidden, values["activation"],
            use_bias=m["use_bias"], parametrization=m["parametrization"],
            weight_std=m["weight_std"], bias_std=m["bias_std"], key=jr.fold_in(base, i))
        for i in range(values["seeds"])
    ]


def make_problem(study, model, dataset: Dataset) -> LeastSquaresProblem:
    """The cell's problem: a fit of `model` to `dataset`, or for a PDE study the PDE's
    ResidualProblem (`flowlab.pde`, the dataset then only names its collocation points)."""
    if study.config["pde"]["problem"] is not None:
        return _pde_problem(study, model)
    loss = study.config["loss"]
    if loss["kind"] == "squared":
        kappa = None if loss["kappa"] == "1/N" else float(loss["kappa"])
        return LeastSquaresProblem(model, dataset, kappa=kappa)
    cls = LOSSES[loss["kind"]]
    return LeastSquaresProblem(model, dataset, loss=cls(**loss["params"]))


def make_flow(study, name: str):
    """The flow of [flows.NAME], as the config built it (`Study.flows`)."""
    return study.flows[name]


def make_options(study, values: dict, problem, flow) -> IntegratorOptions:
    """The cell's IntegratorOptions: the config's (`Study.options`) with the cell's step size and
    t1 = 'auto' resolved to t1_factor·T_ε, the flow's a priori stopping time
    (`AbstractFlow.stopping_time`: ln(1/ε)/(2κ), the adapted flow's, for most flows)."""
    integ = study.config["integrator"]
    changes = {"step_size": values["step_size"]}
    if integ["t1"] == "auto":
        eps = integ["cost_target_relative"] or study.config["analysis"]["epsilon"]
        changes["t1"] = integ["t1_factor"] * flow.stopping_time(problem, eps)
    if integ["method"] == "euler":
        changes["t1"] = IntegratorOptions().t1  # unused by Euler steps
        changes["ts"] = None
    return IntegratorOptions.build(study.options, **changes)
