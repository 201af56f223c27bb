r"""The typed record of one run (one seed of one cell): the single place where every summary
column is defined, with its meaning, its report header and how the report aggregates it over
seeds. summary.csv, `flowlab report` and the figures are all derived from these fields.

Optional groups (`lsq`, `equilibrium`, `path`, `test`, `pde`) are records of their own; in summary.csv their
columns are prefixed with the group's name and a dot ("equilibrium.rank").
"""

import dataclasses
import math
import types
import typing

#: how a column is summarised over the seeds of a cell in the report.
AGGREGATES = ("first", "median", "min", "max", "join")
_AGG_LABEL = {"median": "med", "min": "min", "max": "max"}


_REQUIRED = dataclasses.MISSING


def column(doc: str, header: str | None = None, aggregate: str = "median", default=_REQUIRED):
    """A record field: `doc` says what it is, `header` is its report column (None: not in the
    report table), `aggregate` how the report combines seeds."""
    assert aggregate in AGGREGATES
    meta = {"doc": doc, "header": header, "aggregate": aggregate}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeastSquaresRecord:
    """scipy.optimize.least_squares (trf, exact Jacobian) from the same θ0."""

    cost: float = column("its final cost", "lsq C")
    nfev: int = column("its number of residual evaluations")
    status: int = column("its termination status")
    cost_ratio: float = column("C_final of the flow / its final cost", "C/lsq C")
    wall_time: float = column("its wall time, s")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EquilibriumRecord:
    """`flowlab.analyse_equilibrium` at the run's end point (MATH §4)."""

    rank: int = column("numerical rank r of D (SVD, cutoff max(QN, K)·eps·σ_max)", "rank D", "min")
    rank_deficient: bool = column("r < QN: the condition for an equilibrium with C > 0",
                                  "r<QN", "join")
    stationarity: float = column("|Dᵀ∇_X C| / (σ_max |∇_X C|): 0 at an equilibrium",
                                 "rel |Dᵀ∇C|", "max")
    hessian_zero_eigs: int = column("Hessian eigenvalues of θ ↦ C with |λ| ≤ 1e-6·max|λ|",
                                    "Hess zeros", "min")
    expected_null_dim: int = column("K − r, the critical submanifold's dimension", "K−r", "min")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PathRecord:
    """Sub-Riemannian lengths of the run (`flowlab.path_lengths`, MATH §3.5)."""

    g_length: float = column("∫|Dθ'|ds, the output path's length (trapezoid)", "g-length")
    g_length_error: float = column("Richardson estimate of the trapezoid error", "± est", "max")
    output_chord: float = column("|X(T) − X(0)|", "chord")
    g_ratio: float = column("g_length / output_chord (1 for a straight output path)", "g/chord")
    euclidean_length: float = column("∫|θ'|ds", "θ-length")
    parameter_chord: float = column("|θ(T) − θ(0)|", "θ-chord")
    length_bound: float = column("|X(0) − Y| / min σ_min(D): the θ-length bound of MATH §3.4",
                                 "bound")
    max_vertical_fraction: float = column("max |P_ker D θ'|/|θ'| (0: horizontal)",
                                          "vertical", "max")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestRecord:
    """The loss on held-out data along the run (data.test_fraction; `study.extras`)."""

    num_points: int = column("test examples", "N test", "first")
    loss0: float = column("test loss at θ0 (the training loss's kind, normalised by N test)")
    loss: float = column("test loss at the end", "test C")
    best_loss: float = column("lowest test loss over the saves", "best test C", "min")
    s_best: float = column("s (or Σh) of the lowest test loss", "s best")
    loss_at_eps: float = column("test loss at the first save with training C ≤ ε·C(0) (the "
                                "stop a priori T_ε aims at)", "test C at ε")
    accuracy: float = column("fraction of test points whose largest output is the largest "
                             "target, at the end (NaN for Q = 1)", "test acc")
    accuracy_at_eps: float = column("the same at the first save with C ≤ ε·C(0)",
                                    "test acc at ε")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PDERecord:
    """A physics-informed run: |u_θ − u*|₂/|u*|₂ on the PDE's fine grid (`flowlab.pde`)."""

    problem: str = column("the PDE (flowlab.pde.PDES)", "pde", "first")
    error0: float = column("relative L2 error at θ0")
    error: float = column("relative L2 error at the end", "rel L2")
    best_error: float = column("lowest relative L2 error over the saves", "best rel L2", "min")
    s_best: float = column("s (or Σh) of the lowest error", "s best")
    error_at_eps: float = column("error at the first save with C ≤ ε·C(0)", "rel L2 at ε")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run: what was run, how it ended, and measured against what its flow predicts."""

    # what was run
    cell: str = column("the cell's id", aggregate="first")
    seed: int = column("seed index within the cell", aggregate="first")
    flow: str = column("the flow's label (its [flows.*] table)", "flow", "first")
    kind: str = column("the flow's kind (FLOWS key)", aggregate="first")
    method: str = column("'ode' (diffrax) or 'euler' (steps)", aggregate="first")
    width: str = column("hidden widths (one number when all equal)", "width", "first")
    depth: int = column("number of hidden layers", "depth", "first")
    activation: str = column("activation function", "act", "first")
    N: int = column("data points", "N", "first")
    M: int = column("input dimension", "M", "first")
    Q: int = column("outputs per point", "Q", "first")
    K: int = column("parameters", "K", "first")
    QN: int = column("stacked outputs", "QN", "first")
    kappa: float = column("κ of C = (κ/2)|X − Y|²", aggregate="first")
    step_size: float = column("Euler step h (NaN for the ODE)", "h", "first")
    # how it ended
    stop_reason: str = column("why the run ended (flowlab.STOP_REASONS)", "stop", "join")
    reached_target: bool = column("stopped at its cost target", aggregate="join")
    failure: str = column("why the run failed to do what it was asked, with where it stood "
                          "('' when it did not: reaching t1 by design is no failure)",
                          "failure", "join")
    steps: int = column("integrator steps", "steps", "max")
    rejected_steps: int = column("rejected ODE steps, or Euler step halvings", "rejected", "max")
    field_evals: int = column("vector-field evaluations (−1 when not counted)", "evals", "max")
    wall_time: float = column("wall time of the cell's compiled solve, s (all seeds)", "wall s")
    compile_time: float = column("compile time of the cell's solve, s (0: cached)")
    t_final: float = column("s at the end", "s end")
    C0: float = column("C(θ0)", "C(0)")
    C_final: float = column("C at the end", "C end")
    C_min: float = column("inf C for this loss (0 for the squared loss)")
    grad_norm_final: float = column("|∇_θ C| at the end", aggregate="max")
    # against the theory
    measured_rate: float = column("Theil–Sen rate of C − C_min over the run", "rate")
    measured_tail_rate: float = column("the same over the last tail_fraction of the run",
                                       "tail rate")
    predicted_rate_start: float = column("the flow's predicted rate at θ0 (2·slowest mode; for "
                                         "Euler steps per unit s, −ln((1 − h·r/2)²)/h)", "pred θ0")
    predicted_rate_end: float = column("the same at the end point", "pred end")
    rate_bound: float = column("a rate r with C(s) ≤ e^{−rs}C(0) the flow guarantees at full rank "
                               "(0: none)", "bound")
    relative_error: float = column("|measured − predicted at θ0| / predicted", "rel err", "max")
    tail_relative_error: float = column("|tail rate − predicted at the end| / predicted",
                                        "tail rel err", "max")
    predicted_tail_rate: float = column("the rate of the flow's predicted curve (predicted_cost) "
                                        "over the same tail window: the prediction for the tail "
                                        "rate with every mode's amplitude, not only the slowest",
                                        "pred tail")
    max_cost_over_bound: float = column("max_s C(s) / (C(0) e^{−rate_bound·s}): ≤ 1 when the "
                                        "bound holds", "C/bound", "max")
    theory_log_error: float = column("max_s |log C(s) − log C_pred(s)|, C_pred the flow's "
                                     "linearised (NTK) cost curve from θ0", "|log C/C_pred|", "max")
    epsilon: float = column("ε of the stopping time", aggregate="first")
    T_eps_predicted: float = column("ln(1/ε)/predicted rate at θ0 (T_ε of MATH §3.3)",
                                    "T_ε pred")
    T_eps_measured: float = column("first s with C ≤ ε·C(0)", "T_ε meas")
    # output space
    segment_distance: float = column("max_s dist(X(s), [X(0), Y]) / |X(0) − Y| (0 on the "
                                     "adapted flow's straight segment)", "seg dist", "max")
    endpoint_error: float = column("|X(T) − x*|∞, x* the loss's predicted end point from X(0)",
                                   "|X(T)−x*|", "max")
    invariant_drift: float = column("max_s |c(s) − c(0)|∞ of the loss's conserved quantities "
                                    "(NaN: none)", "drift c", "max")
    last_step_ratio: float = column("C_{k+1}/C_k of the last Euler step ending 1e4× above the "
                                    "round-off floor", "C ratio last")
    predicted_step_ratio: float = column("(1 − h·r/2)², r the predicted rate at the end",
                                         "pred ratio")
    # the spectrum of D
    min_sigma_min: float = column("min σ_min(D) over the saves", "min σ_min", "min")
    min_lambda_min: float = column("min λ_min(Θ) = σ_min² over the saves", "min λ_min(Θ)", "min")
    rank_start: float = column("numerical rank of D at θ0")
    min_rank: float = column("min numerical rank of D over the saves", "min rank", "min")
    full_rank: int = column("min(QN, K)", aggregate="first")
    dead_units: int = column("hidden units with σ' = 0 on every input at the end (zero columns "
                             "of D; −1: not an MLP)", "dead", "max")
    nearest_kink: str = column("the hidden pre-activation z_ij closest to a kink at the end, for "
                               "activations with kinks ('' otherwise)", aggregate="join")
    # optional groups
    lsq: LeastSquaresRecord | None = column("comparison with scipy least_squares", default=None)
    equilibrium: EquilibriumRecord | None = column("equilibrium analysis of the end point",
                                                   default=None)
    path: PathRecord | None = column("sub-Riemannian path lengths", default=None)
    test: TestRecord | None = column("loss on held-out data", default=None)
    pde: PDERecord | None = column("error against a PDE's exact solution", default=None)

    def as_row(self) -> dict:
        """The flat row of summary.csv (groups as 'group.field')."""
        return flatten(self)


_GROUPS = {"lsq": LeastSquaresRecord, "equilibrium": EquilibriumRecord, "path": PathRecord,
           "test": TestRecord, "pde": PDERecord}


def flatten(record) -> dict:
    row = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if dataclasses.is_dataclass(value):
            row.update({f"{f.name}.{k}": v for k, v in flatten(value).items()})
        elif f.name not in _GROUPS:
            row[f.name] = value
    return row


def columns(row_keys=None) -> list[tuple[str, dataclasses.Field]]:
    """Every column as (name, field), base fields first then groups; restricted to the names in
    `row_keys` when given."""
    out = [(f.name, f) for f in dataclasses.fields(RunRecord) if f.name not in _GROUPS]
    for group, cls in _GROUPS.items():
        out += [(f"{group}.{f.name}", f) for f in dataclasses.fields(cls)]
    if row_keys is not None:
        keys = set(row_keys)
        out = [(n, f) for n, f in out if n in keys]
    return out


def _base_type(tp):
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def parse_value(name: str, text):
    """A summary.csv cell back to the column's type."""
    fields = dict(columns())
    if name not in fields or not isinstance(text, str):
        return text
    tp = _base_type(fields[name].type)
    if tp is str:
        return text
    if tp is bool:
        return {"True": True, "False": False}.get(text, text)
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if tp is int and math.isfinite(value) and value == int(value) else value


def from_row(row: dict) -> RunRecord:
    """A RunRecord from a summary row (values already parsed); unknown keys are a ValueError."""
    base = {}
    groups: dict[str, dict] = {}
    for key, value in row.items():
        if "." in key:
            group, name = key.split(".", 1)
            groups.setdefault(group, {})[name] = value
        else:
            base[key] = value
    for group, values in groups.items():
        if group not in _GROUPS:
            raise ValueError(f"unknown column group {group!r}")
        base[group] = _GROUPS[group](**values)
    return RunRecord(**base)
