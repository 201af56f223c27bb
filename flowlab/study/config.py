"""Study configs: TOML in, a validated plain-data `Study` out, with command-line overrides.

A config names a dataset, a model, a loss (κ), the flows to compare (any entry of
`flowlab.flows.FLOWS`, built once as ``FLOWS[kind](**params)`` and kept in the Study), an
integrator and a sweep grid. Every error names the file, the key, what was expected and what
was found (value checks are `flowlab._checks.Check`s, as IntegratorOptions' are, and refuse
with a `SettingError` carrying its key); unknown keys get a close-match suggestion. Nothing
here creates a JAX array, so the CLI can still choose the precision after loading.
"""

import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._checks import Check, SettingError

if TYPE_CHECKING:
    from ..flows import AbstractFlow
    from ..integrate import IntegratorOptions

__all__ = ["ConfigError", "Study", "apply_overrides", "load_config", "parse_config"]


_CHECKED = object()  # ConfigError.from_setting: report the value the check saw


class ConfigError(ValueError):
    """A config problem: `where` is the file, `key` the dotted key."""

    def __init__(self, where: str, key: str, message: str):
        self.where, self.key = where, key
        super().__init__(f"{where}: key '{key}': {message}" if key else f"{where}: {message}")

    @classmethod
    def from_setting(cls, where: str, error: SettingError, prefix: str = "", *,
                     found: Any = _CHECKED) -> "ConfigError":
        """The ConfigError of a refused setting: its key (under `prefix`, e.g. 'integrator.'),
        what it expected and what it found (`found`, where the config's own value differs from
        the one checked, e.g. a list checked as a tuple)."""
        found = error.got if found is _CHECKED else found
        return cls(where, prefix + error.key,
                   f"expected {error.expected}, found {_typename(found)}")


# --- value checks: `Check(expected, parse)`, refusing with SettingError ----------------------


def _typename(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def _int(lo: int | None = None) -> Check:
    def parse(v):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            raise ValueError
        return v

    return Check(f"an integer >= {lo}" if lo is not None else "an integer", parse)


def _float(positive: bool = False, nonneg: bool = False, below_one: bool = False) -> Check:
    want = "a positive number" if positive else "a number >= 0" if nonneg else "a number"
    if below_one:
        want += " < 1"

    def parse(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError
        v = float(v)
        if not math.isfinite(v) or (positive and v <= 0) or (nonneg and v < 0) or (
            below_one and v >= 1
        ):
            raise ValueError
        return v

    return Check(want, parse)


def _str(choices: Callable[[], Sequence[str]] | Sequence[str] | None = None) -> Check:
    def options():
        return sorted(choices()) if callable(choices) else list(choices or [])

    def parse(v):
        if not isinstance(v, str):
            raise SettingError("", "a string" + (f" (one of {options()})" if choices else ""), v)
        if choices and v not in options():
            near = difflib.get_close_matches(v, options(), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise SettingError("", f"one of {options()}{hint}", v)
        return v

    return Check("a string", parse)


def _boolean(v):
    if not isinstance(v, bool):
        raise TypeError
    return v


_bool = Check("true or false", _boolean)


def _either(*checks: Check, expected: str) -> Check:
    def parse(v):
        for check in checks:
            try:
                return check(v)
            except SettingError:
                continue
        raise ValueError

    return Check(expected, parse)


def _literal(*values) -> Check:
    def parse(v):
        if not (isinstance(v, str) and v in values):
            raise ValueError
        return v

    return Check(f"one of {list(values)}", parse)


def _list_of(item: Check, min_len: int = 1) -> Check:
    def parse(v):
        if not isinstance(v, list):
            raise TypeError
        if len(v) < min_len:
            raise SettingError("", f"a list with at least {min_len} entries", v)
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except SettingError as e:
                raise SettingError("", f"a list of {e.expected} (entry {i} is {_typename(x)})",
                                   v) from None
        return out

    return Check(f"a list of {item.expected}", parse)


def _activations():
    from ..nets import ACTIVATIONS

    return ACTIVATIONS


def _generators():
    from ..data import GENERATORS

    return GENERATORS


def _flow_registry():
    from ..flows import FLOWS

    return FLOWS


def _losses():
    from ..losses import LOSSES

    return LOSSES


def _pdes():
    from ..pde import PDES

    return PDES


def _check_pde(where, config):
    """A [pde] table: the builder's parameters checked against its signature; the model's
    input size is the PDE's dimension, its output one number."""
    spec = config["pde"]
    if spec["problem"] is None:
        if spec["params"]:
            raise ConfigError(where, "pde.params", "pde.params needs pde.problem")
        return
    from ..pde import DIMENSIONS

    sig = inspect.signature(_pdes()[spec["problem"]]).parameters
    allowed = [n for n in sig if n not in ("model", "check", "kappa")]
    for p, value in spec["params"].items():
        if p not in allowed:
            raise _unknown(where, f"pde.params.{p}", allowed)
        _check_scalar_param(where, f"pde.params.{p}", value)
    data = config["data"]
    if data["file"] is not None or data["test_fraction"] is not None:
        raise ConfigError(where, "pde.problem", "a PDE study takes no data.file or "
                          "data.test_fraction (its points are the PDE's collocation points)")
    for k in ("num_points", "in_size", "out_size"):
        if config["sweep"][k] is not None:
            raise ConfigError(where, f"sweep.{k}", "a PDE study sets the data shape itself")
    if config["loss"]["kind"] != "squared":
        raise ConfigError(where, "loss.kind", "a PDE study uses the squared loss of its residual")
    data["in_size"], data["out_size"] = DIMENSIONS[spec["problem"]], 1


# --- the schema ---------------------------------------------------------------------------

def _setting(check: Check) -> Check:
    """A config check from an IntegratorOptions setting's Check; optional settings take 'off'."""
    return Check(check.expected, lambda v: None if check.optional and v == "off" else check(v))


def _integrator_schema() -> dict:
    """[integrator]: every config-settable field of IntegratorOptions (its check and default),
    with t1 = 'auto' allowed, plus the study's choice of integrator and the factor of t1 'auto'."""
    from ..integrate import IntegratorOptions

    schema = {"method": (_str(["ode", "euler"]), "ode")}
    for name, f in IntegratorOptions.fields().items():
        if f.metadata["config"]:
            schema[name] = (_setting(f.metadata["check"]), f.default)
    # default (None): 'auto' where a cost target is set (the run is meant to reach it), else
    # IntegratorOptions' t1; decided in _check_options
    schema["t1"] = (_either(schema["t1"][0], _literal("auto"),
                            expected="a positive number or 'auto' (t1_factor·T_ε)"), None)
    schema["t1_factor"] = (_float(positive=True), 1.5)
    return schema


def _check_options(where, config):
    """The study's IntegratorOptions, built once from [integrator] (t1 = 'auto' left at its
    default: each cell sets it), so that settings that contradict each other (ts beyond t1) are
    caught here; the runner builds each cell's options from these."""
    from ..integrate import IntegratorOptions

    integ = config["integrator"]
    if integ["ts"] is not None:
        integ["ts"] = list(integ["ts"])  # plain data (the check returns a tuple)
    if integ["t1"] is None:
        targeted = integ["cost_target_relative"] is not None or integ["cost_target"] is not None
        integ["t1"] = ("auto" if targeted and integ["ts"] is None
                       else IntegratorOptions.fields()["t1"].default)
    settings = {k: v for k, v in integ.items() if k in IntegratorOptions.fields() and k != "t1"}
    if integ["t1"] != "auto":
        settings["t1"] = integ["t1"]
    elif settings.get("ts") is not None:
        raise ConfigError(where, "integrator.ts", "explicit save times need a numeric integrator.t1")
    try:
        options = IntegratorOptions.build(**settings)
    except SettingError as e:
        found = integ.get(e.key, e.got)
        raise ConfigError.from_setting(where, e, "integrator.", found=found) from None
    return options


SCHEMA: dict[str, dict[str, tuple[Check | None, Any]]] = {
    "": {
        "name": (_str(), None),
        "description": (_str(), ""),
        "precision": (_str(["float64", "float32"]), "float64"),
    },
    "data": {
        "generator": (_str(_generators), None),
        "file": (_str(), None),
        "num_points": (_int(1), None),
        "in_size": (_int(1), 2),
        "out_size": (_int(1), 1),
        "seed": (_int(0), 0),
        "params": (None, {}),  # generator keyword arguments, checked against its signature
        "num_targets": (_int(1), 1),  # CSV: the last columns are targets
        "inputs_key": (_str(), "inputs"),  # NPZ array names
        "targets_key": (_str(), "targets"),
        # hold out this fraction as a test set (data.seed splits): test loss along the run
        "test_fraction": (_float(positive=True, below_one=True), None),
    },
    "pde": {  # a physics-informed study: flowlab.pde.PDES[problem](model, **params)
        "problem": (_str(_pdes), None),
        "params": (None, {}),  # the builder's keyword arguments (collocation sizes, nu, ...)
    },
    "model": {
        "depth": (_int(1), 2),
        "width": (_int(1), 32),
        "widths": (_list_of(_int(1)), None),
        "activation": (_str(_activations), "tanh"),
        "parametrization": (_str(["standard", "ntk"]), "standard"),
        "weight_std": (_float(positive=True), 1.0),
        "bias_std": (_float(nonneg=True), 0.1),
        "use_bias": (_bool, True),
    },
    "loss": {
        "kind": (_str(_losses), "squared"),
        "kappa": (_either(_float(positive=True), _literal("1/N"), expected="a positive number or '1/N'"), "1/N"),
        "params": (None, {}),
    },
    "integrator": _integrator_schema(),
    "sweep": {
        "seeds": (_either(_int(1), _list_of(_int(1)), expected="an integer >= 1 or a list of them"), 1),
        "seed": (_int(0), 0),
        "width": (_list_of(_int(1)), None),
        "depth": (_list_of(_int(1)), None),
        "num_points": (_list_of(_int(1)), None),
        "in_size": (_list_of(_int(1)), None),
        "out_size": (_list_of(_int(1)), None),
        "activation": (_list_of(_str(_activations)), None),
        "step_size": (_list_of(_float(positive=True)), None),
        "flow": (_list_of(_str()), None),
    },
    "analysis": {
        "epsilon": (_float(positive=True, below_one=True), None),
        "tail_fraction": (_float(positive=True), 0.5),
        "equilibrium": (_bool, False),
        "path_lengths": (_bool, False),
    },
    "compare": {
        "least_squares": (_bool, False),
        "least_squares_max_nfev": (_int(1), 2000),
    },
    "output": {
        "dir": (_str(), None),
        "save_outputs": (_bool, True),
        "columns": (_list_of(_str()), None),  # report columns (RunRecord fields); None: all
    },
}

#: The meaning of every key of SCHEMA but [integrator] (whose meanings are IntegratorOptions'
#: metadata): the docs' configuration reference is generated from these, and a test refuses a
#: key without one.
SCHEMA_DOCS: dict[str, dict[str, str]] = {
    "": {"name": "the study's name (its run folder is runs/NAME by default)",
         "description": "one line saying what the study asks",
         "precision": "float64 or float32 for every array of the study"},
    "data": {
        "generator": "a data generator of flowlab.data (smooth_regression, teacher, random_labels, "
                     "gaussian_clusters, diabetes, digits, ...)",
        "file": "a CSV or NPZ file instead of a generator (relative to the config)",
        "num_points": "N, the number of training points",
        "in_size": "M, the input dimension",
        "out_size": "Q, the outputs per point",
        "seed": "the data's random seed (also splits the test set)",
        "params": "the generator's keyword arguments, checked against its signature",
        "num_targets": "CSV: the last num_targets columns are the targets",
        "inputs_key": "NPZ: the array of inputs",
        "targets_key": "NPZ: the array of targets",
        "test_fraction": "hold out this fraction as a test set: test loss along the run"},
    "pde": {"problem": "a physics-informed study: a builder of flowlab.pde.PDES",
            "params": "the builder's keyword arguments (collocation sizes, nu, ...)"},
    "model": {"depth": "hidden layers of the MLP", "width": "units per hidden layer",
              "widths": "the hidden widths, one per layer (instead of depth × width)",
              "activation": "tanh, relu, leaky_relu, gelu, softplus, sigmoid, identity, ...",
              "parametrization": "'standard' or 'ntk' (weights scaled by 1/√fan-in in the "
                                 "forward pass)",
              "weight_std": "standard deviation of the initial weights (times 1/√fan-in)",
              "bias_std": "standard deviation of the initial biases",
              "use_bias": "whether the layers have biases"},
    "loss": {"kind": "the loss: 'squared' or 'cross_entropy' (flowlab.LOSSES)",
             "kappa": "κ of C = (κ/2)|X − Y|²: a number or '1/N' (the paper's)",
             "params": "the loss's keyword arguments (e.g. label smoothing)"},
    "sweep": {"seeds": "θ0 per cell: a count, or the list of seeds",
              "seed": "the first model seed",
              "width": "swept widths", "depth": "swept depths", "num_points": "swept N",
              "in_size": "swept M", "out_size": "swept Q", "activation": "swept activations",
              "step_size": "swept Euler step sizes h",
              "flow": "the [flows.*] tables to run (default: all)"},
    "analysis": {"epsilon": "ε of the stopping time T_ε (default: cost_target_relative, else 1e-6)",
                 "tail_fraction": "the last fraction of the run the tail rate is fitted on",
                 "equilibrium": "analyse the end point: rank D, Hessian zeros, Dᵀ∇C",
                 "path_lengths": "save θ and measure the sub-Riemannian path lengths"},
    "compare": {"least_squares": "also run scipy's least_squares from each θ0",
                "least_squares_max_nfev": "its evaluation budget"},
    "output": {"dir": "the run folder (default runs/NAME)",
               "save_outputs": "save X(s) at every save point",
               "columns": "the summary's columns in the terminal and the report "
                          "(default: a short set; `flowlab report --all-columns` shows all)"},
}

_FLOW_KIND = _str(_flow_registry)


def _unknown(where, key, allowed):
    near = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(allowed), n=1)
    hint = f"; did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{near[0]}'?" if near else ""
    return ConfigError(where, key, f"unknown key{hint} (allowed: {sorted(allowed)})")


def _renamed() -> dict[str, str]:
    """Config keys that were renamed: old dotted key -> new dotted key."""
    from ..integrate import IntegratorOptions

    return {f"integrator.{old}": f"integrator.{new}"
            for old, new in IntegratorOptions.renamed().items()}


def _check_table(where, section, raw, spec) -> dict:
    out = {}
    for key, value in raw.items():
        full = f"{section}.{key}" if section else key
        if full in _renamed():
            raise ConfigError(where, full, f"renamed: this is now '{_renamed()[full]}' (the ODE "
                              "solver; a flow's pseudo-inverse stays flows.NAME.solver)")
        if key not in spec:
            raise _unknown(where, full, spec)
        check, _ = spec[key]
        if check is None:
            if not isinstance(value, dict):
                raise ConfigError(where, full, f"expected a table, found {_typename(value)}")
            if not _plain(value):
                raise ConfigError(where, full, "expected numbers, strings, booleans and lists, "
                                  f"found {_typename(value)}")
            out[key] = dict(value)
            continue
        try:
            out[key] = check(value, full)
        except SettingError as e:
            raise ConfigError.from_setting(where, e) from None
    for key, (_, default) in spec.items():
        out.setdefault(key, copy.deepcopy(default))
    return out


def _init_params(cls) -> dict[str, inspect.Parameter]:
    """Keyword arguments a class (an eqx.Module dataclass or a plain class) accepts."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f for f in dataclasses.fields(cls) if f.init}
    sig = inspect.signature(cls)
    return {n: p for n, p in sig.parameters.items() if p.kind is not p.VAR_KEYWORD and n != "self"}


def _check_scalar_param(where, key, value):
    if isinstance(value, dict):
        raise ConfigError(where, key, "expected a number, string, boolean or list, found a table")
    if not _plain(value):  # TOML dates and times: not JSON, not a parameter of anything here
        raise ConfigError(where, key, f"expected a number, string, boolean or list, found {_typename(value)}")
    return value


def _plain(value) -> bool:
    """Whether a parameter value is plain JSON data (numbers, strings, booleans, lists, tables)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


def _check_flows(where, raw) -> tuple[dict, dict]:
    """The [flows.*] tables as plain specs {name: {kind, params}}, and each flow built once from
    its spec ({name: FLOWS[kind](**params)}): the runner uses these objects."""
    if raw is None:
        raw = {"adapted": {}, "standard": {}}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(where, "flows", f"expected a non-empty table of flows, found {_typename(raw)}")
    registry = _flow_registry()
    out, built = {}, {}
    for name, spec in raw.items():
        key = f"flows.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(where, key, f"expected a table (kind = ..., parameters), found {_typename(spec)}")
        kind = spec.get("kind", name)
        try:
            _FLOW_KIND(kind, f"{key}.kind")
        except SettingError as e:
            raise ConfigError(where, e.key, f"expected a registered flow, {e.expected}, "
                              f"found {_typename(kind)}") from None
        allowed = _init_params(registry[kind])
        params = {}
        for p, value in spec.items():
            if p == "kind":
                continue
            if p not in allowed:
                raise _unknown(where, f"{key}.{p}", list(allowed) + ["kind"])
            params[p] = _check_scalar_param(where, f"{key}.{p}", value)
        try:
            built[name] = registry[kind](**params)
        except (TypeError, ValueError) as e:
            raise ConfigError(where, key, f"the {kind!r} flow rejects these parameters: {e}") from None
        out[name] = {"kind": kind, "params": params}
    return out, built


def _check_generator_params(where, data):
    if data["file"] is not None:
        if data["generator"] is not None:
            raise ConfigError(where, "data.file", "give either data.generator or data.file, not both")
        if data["params"]:
            raise ConfigError(where, "data.params", "generator parameters make no sense with data.file")
        return
    if data["generator"] is None:
        data["generator"] = "teacher"
    gen = _generators()[data["generator"]]
    sig = inspect.signature(gen).parameters
    reserved = {"key", "num_points", "in_size", "out_size", "num_classes"}
    for p, value in data["params"].items():
        if p in reserved:
            raise ConfigError(where, f"data.params.{p}", f"set this through data.{'out_size' if p == 'num_classes' else p} instead")
        if p not in sig:
            raise _unknown(where, f"data.params.{p}", [n for n in sig if n not in reserved])
        _check_scalar_param(where, f"data.params.{p}", value)
    if data["num_points"] is None:
        data["num_points"] = 16


def _data_file_sha256(where, data, precision) -> str:
    """Read the data file (NumPy only: no JAX backend starts) as the runs will, so that a file
    they could not use is a ConfigError before anything is written; returns the SHA-256 of its
    contents (`flowlab.data.data_sha256`)."""
    from ..data import DataFileError, data_sha256, read_csv, read_npz

    dtype = "float32" if precision == "float32" else "float64"
    try:
        if data["file"].endswith(".npz"):
            x, y = read_npz(data["file"], data["inputs_key"], data["targets_key"], dtype=dtype)
        else:
            x, y = read_csv(data["file"], data["num_targets"], dtype=dtype)
    except DataFileError as e:
        raise ConfigError(where, "data.file", str(e)) from None
    return data_sha256(x, y)


@dataclasses.dataclass(frozen=True)
class Study:
    """A validated config: plain nested dicts, JSON-serialisable (`as_dict`), and the objects
    built from it while validating it, which the runner uses as they are: `flows` (name ->
    flow, one per [flows.*] table) and `options` (the [integrator] IntegratorOptions, before
    each cell's t1 and step size). Only `config` is compared, serialised and fingerprinted."""

    name: str
    source: str
    config: dict
    flows: Mapping[str, "AbstractFlow"] = dataclasses.field(default_factory=dict, compare=False,
                                                             repr=False)
    options: "IntegratorOptions | None" = dataclasses.field(default=None, compare=False,
                                                            repr=False)

    def as_dict(self) -> dict:
        return copy.deepcopy(self.config)

    def fingerprint(self) -> str:
        """Hash of everything that determines the results (not the output folder)."""
        c = self.as_dict()
        c["output"].pop("dir", None)
        c["output"].pop("columns", None)  # how the report looks, not what was computed
        c.pop("description", None)
        blob = json.dumps(c, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def out_dir(self) -> str:
        return self.config["output"]["dir"]

    def check_data_file(self) -> None:
        """Raise ConfigError if the data file's contents differ from those fingerprinted when
        the config was read (the runs would use other data than the fingerprint says)."""
        data = self.config["data"]
        if data.get("file") is None:
            return
        if _data_file_sha256(self.source, data, self.config["precision"]) != data.get("sha256"):
            raise ConfigError(self.source, "data.file", f"{data['file']} changed since the config "
                              "was read (its contents' SHA-256 differs); run again to use the new data")


def parse_config(raw: dict, where: str = "<config>", name: str | None = None, base_dir: str = ".") -> Study:
    """Validate a raw config dict (as read from TOML) into a Study."""
    if not isinstance(raw, dict):
        raise ConfigError(where, "", "a config is a TOML table")
    sections = set(SCHEMA) - {""} | {"flows"}
    top = {k: v for k, v in raw.items() if k not in sections}
    for k, v in raw.items():
        if k in sections and not isinstance(v, dict):
            raise ConfigError(where, k, f"expected a table [{k}], found {_typename(v)}")
    config = _check_table(where, "", top, {**SCHEMA[""], **{s: (None, {}) for s in sections}})
    for section, spec in SCHEMA.items():
        if section:
            config[section] = _check_table(where, section, raw.get(section, {}), spec)
    config["flows"], built_flows = _check_flows(where, raw.get("flows"))
    config["name"] = config["name"] or name or "study"

    data = config["data"]
    _check_generator_params(where, data)
    if data["file"] is not None:
        path = data["file"]
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(base_dir, path))
        if not os.path.isfile(path):
            raise ConfigError(where, "data.file", f"expected an existing .csv or .npz file, found no file at {path}")
        if not path.endswith((".csv", ".npz")):
            raise ConfigError(where, "data.file", f"expected a .csv or .npz file, found {path}")
        data["file"] = path
        # the contents' fingerprint: part of the study's, so changed data is refused like a
        # changed config
        data["sha256"] = _data_file_sha256(where, data, config["precision"])

    flows, sweep = config["flows"], config["sweep"]
    if sweep["flow"] is None:
        sweep["flow"] = list(flows)
    for i, f in enumerate(sweep["flow"]):
        if f not in flows:
            near = difflib.get_close_matches(f, list(flows), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(where, "sweep.flow", f"expected names of [flows.*] tables {sorted(flows)}, found {f!r}{hint}")
    if data["file"] is not None:
        for k in ("num_points", "in_size", "out_size"):
            if sweep[k] is not None:
                raise ConfigError(where, f"sweep.{k}", "cannot sweep the data shape of a data.file")
    if config["model"]["widths"] is not None and (sweep["width"] or sweep["depth"]):
        raise ConfigError(where, "model.widths", "explicit widths cannot be combined with sweep.width/depth")
    _check_pde(where, config)
    integ = config["integrator"]
    if config["analysis"]["epsilon"] is None:
        config["analysis"]["epsilon"] = integ["cost_target_relative"] or 1e-6
    options = _check_options(where, config)
    if config["loss"]["kind"] != "squared" and config["loss"]["kappa"] != "1/N":
        raise ConfigError(where, "loss.kappa", "kappa applies to the squared loss; pass other losses' parameters in loss.params")
    if config["output"]["columns"] is not None:
        from .records import columns

        known = [column for column, _ in columns()] + ["seeds"]
        for column in config["output"]["columns"]:
            if column not in known:
                near = difflib.get_close_matches(column, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ConfigError(where, "output.columns", f"expected RunRecord fields, found "
                                  f"{column!r}{hint}")
    if config["output"]["dir"] is None:
        config["output"]["dir"] = os.path.join("runs", config["name"])
    return Study(name=config["name"], source=where, config=config, flows=built_flows,
                 options=options)


class _Unreadable(ValueError):
    pass


def _split_items(text: str) -> list[str] | None:
    """The comma-separated items of a list's inside, split at top level (not inside quotes or
    brackets); None when the brackets or quotes do not balance."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if quote or depth:
        return None
    items.append(text[start:])
    if items and not items[-1].strip():  # a trailing comma, as TOML allows
        items.pop()
    return items


def _parse_value(text: str):
    """A command-line value as a TOML value; bare words are strings, also inside lists
    (`sweep.flow=[adapted, lm]`). A value that starts like a list, table or quoted string but
    cannot be read raises _Unreadable."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        items = _split_items(text[1:-1])
        if items is not None and all(i.strip() for i in items):
            return [_parse_value(i.strip()) for i in items]
    if text.startswith(("[", "{", '"', "'")):
        raise _Unreadable(text)
    return text


def apply_overrides(raw: dict, overrides: Sequence[str], where: str = "<command line>") -> dict:
    """Set `key.sub=value` entries (value parsed as TOML) in a copy of a raw config."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(where, item, "expected an override key.sub=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(where, key, "expected a dotted key like model.width")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(where, key, f"'{p}' is not a table")
        try:
            node[parts[-1]] = _parse_value(text.strip())
        except _Unreadable:
            raise ConfigError(where, key, f"cannot read {text.strip()!r} as a TOML value; "
                              "lists may hold bare names (sweep.flow=[adapted,standard]), other "
                              "strings need TOML quotes inside shell quotes, e.g. "
                              "'sweep.flow=[\"adapted\", \"a b\"]'") from None
    return raw


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Study:
    """Read a TOML config, apply `key.sub=value` overrides and validate.

    Raises ConfigError (a ValueError) naming the file and key on any problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(path, "", "no such config file")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read it ({e.strerror or e})") from None
    raw = apply_overrides(raw, overrides, where=f"{path} (command line)")
    name = os.path.splitext(os.path.basename(path))[0]
    return parse_config(raw, where=path, name=name, base_dir=os.path.dirname(os.path.abspath(path)))
