"""Study configs: TOML in, a validated plain-data `Study` out, with command-line overrides.

A config names a dataset, a model, a loss (κ), the flows to compare (any entry of
`flowlab.flows.FLOWS`, built as ``FLOWS[kind](**params)``), an integrator and a sweep grid.
Every error names the file, the key, what was expected and what was found; unknown keys get a
close-match suggestion. Nothing here creates a JAX array, so the CLI can still choose the
precision after loading.
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
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["GRID_KEYS", "ConfigError", "Study", "apply_overrides", "load_config", "parse_config"]


class ConfigError(ValueError):
    """A config problem: `where` is the file, `key` the dotted key."""

    def __init__(self, where: str, key: str, message: str):
        self.where, self.key = where, key
        super().__init__(f"{where}: key '{key}': {message}" if key else f"{where}: {message}")


# --- value checks -------------------------------------------------------------------------


def _typename(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def _int(lo: int | None = None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return None, "an integer"
        if lo is not None and v < lo:
            return None, f"an integer >= {lo}"
        return v, None

    check.expected = f"an integer >= {lo}" if lo is not None else "an integer"
    return check


def _float(positive: bool = False, nonneg: bool = False, below_one: bool = False):
    want = "a positive number" if positive else "a number >= 0" if nonneg else "a number"
    if below_one:
        want += " < 1"

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, want
        v = float(v)
        if not math.isfinite(v) or (positive and v <= 0) or (nonneg and v < 0) or (
            below_one and v >= 1
        ):
            return None, want
        return v, None

    check.expected = want
    return check


def _str(choices: Callable[[], Sequence[str]] | Sequence[str] | None = None):
    def options():
        return sorted(choices()) if callable(choices) else list(choices or [])

    def check(v):
        if not isinstance(v, str):
            return None, "a string" + (f" (one of {options()})" if choices else "")
        if choices and v not in options():
            near = difflib.get_close_matches(v, options(), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            return None, f"one of {options()}{hint}"
        return v, None

    check.expected = "a string"
    return check


def _bool(v):
    if not isinstance(v, bool):
        return None, "true or false"
    return v, None


_bool.expected = "true or false"


def _either(*checks, expected: str):
    def check(v):
        for c in checks:
            out, err = c(v)
            if err is None:
                return out, None
        return None, expected

    check.expected = expected
    return check


def _literal(*values):
    def check(v):
        if v in values and isinstance(v, str):
            return v, None
        return None, f"one of {list(values)}"

    return check


def _list_of(item, min_len: int = 1):
    def check(v):
        if not isinstance(v, list):
            return None, f"a list of {item.expected}"
        if len(v) < min_len:
            return None, f"a list with at least {min_len} entries"
        out = []
        for i, x in enumerate(v):
            y, err = item(x)
            if err is not None:
                return None, f"a list of {err} (entry {i} is {_typename(x)})"
            out.append(y)
        return out, None

    check.expected = f"a list of {item.expected}"
    return check


def _activations():
    from .nets import ACTIVATIONS

    return ACTIVATIONS


def _generators():
    from .data import GENERATORS

    return GENERATORS


def _flow_registry():
    from .flows import FLOWS

    return FLOWS


def _losses():
    try:
        from .losses import LOSSES
    except ImportError:  # the registry lives beside the problem's squared loss
        from .problem import SquaredLoss

        LOSSES = {"squared": SquaredLoss}
    return LOSSES


# --- the schema ---------------------------------------------------------------------------

_REQUIRED = object()

SCHEMA: dict[str, dict[str, tuple[Callable, Any]]] = {
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
    "integrator": {
        "method": (_str(["ode", "euler"]), "ode"),
        "solver": (_str(), "tsit5"),
        "rtol": (_float(positive=True), 1e-8),
        "atol": (_float(positive=True), 1e-8),
        "dt0": (_float(positive=True), None),
        "t1": (_either(_float(positive=True), _literal("auto"), expected="a positive number or 'auto'"), "auto"),
        "t1_factor": (_float(positive=True), 1.5),
        "stop_relative": (_float(positive=True, below_one=True), 1e-8),
        "max_steps": (_int(1), 100_000),
        "num_saves": (_int(2), 101),
        "ts": (_list_of(_float(nonneg=True), 2), None),
        "sigma_min_tol": (_float(positive=True), None),
        "max_condition": (_either(_float(positive=True), _literal("auto", "off"), expected="a positive number, 'auto' or 'off'"), "auto"),
        "theta_norm_max": (_float(positive=True), 1e6),
        "diagnostics": (_bool, True),
        "check_finite": (_bool, True),
        "step_size": (_either(_float(positive=True), _literal("auto"), expected="a positive number or 'auto' (1/κ)"), "auto"),
        "num_steps": (_int(1), 50),
        "backtracking": (_bool, False),
    },
    "sweep": {
        "seeds": (_either(_int(1), _list_of(_int(1)), expected="an integer >= 1 or a list of them"), 1),
        "seed": (_int(0), 0),
        "width": (_list_of(_int(1)), None),
        "depth": (_list_of(_int(1)), None),
        "num_points": (_list_of(_int(1)), None),
        "in_size": (_list_of(_int(1)), None),
        "out_size": (_list_of(_int(1)), None),
        "activation": (_list_of(_str(_activations)), None),
        "flow": (_list_of(_str()), None),
    },
    "analysis": {
        "epsilon": (_float(positive=True, below_one=True), None),
        "tail_fraction": (_float(positive=True), 0.5),
    },
    "compare": {
        "least_squares": (_bool, False),
        "least_squares_max_nfev": (_int(1), 2000),
    },
    "output": {
        "dir": (_str(), None),
        "save_outputs": (_bool, True),
    },
}

#: sweep keys and the config entries they set (numbers of seeds are handled by the sweep).
GRID_KEYS = {
    "width": ("model", "width"),
    "depth": ("model", "depth"),
    "num_points": ("data", "num_points"),
    "in_size": ("data", "in_size"),
    "out_size": ("data", "out_size"),
    "activation": ("model", "activation"),
    "flow": None,
    "seeds": None,
}

_FLOW_META = {"kind": _str(_flow_registry), "label": _str()}


def _unknown(where, key, allowed):
    near = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(allowed), n=1)
    hint = f"; did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{near[0]}'?" if near else ""
    return ConfigError(where, key, f"unknown key{hint} (allowed: {sorted(allowed)})")


def _check_table(where, section, raw, spec) -> dict:
    out = {}
    for key, value in raw.items():
        full = f"{section}.{key}" if section else key
        if key not in spec:
            raise _unknown(where, full, spec)
        check, _ = spec[key]
        if check is None:
            if not isinstance(value, dict):
                raise ConfigError(where, full, f"expected a table, found {_typename(value)}")
            out[key] = dict(value)
            continue
        v, err = check(value)
        if err is not None:
            raise ConfigError(where, full, f"expected {err}, found {_typename(value)}")
        out[key] = v
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
    return value


def _check_flows(where, raw) -> dict:
    if raw is None:
        raw = {"adapted": {}, "standard": {}}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(where, "flows", f"expected a non-empty table of flows, found {_typename(raw)}")
    registry = _flow_registry()
    out = {}
    for name, spec in raw.items():
        key = f"flows.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(where, key, f"expected a table (kind = ..., parameters), found {_typename(spec)}")
        kind = spec.get("kind", name)
        _, err = _FLOW_META["kind"](kind)
        if err is not None:
            raise ConfigError(where, f"{key}.kind", f"expected a registered flow, {err}, found {_typename(kind)}")
        label = spec.get("label", name)
        if not isinstance(label, str):
            raise ConfigError(where, f"{key}.label", f"expected a string, found {_typename(label)}")
        allowed = _init_params(registry[kind])
        params = {}
        for p, value in spec.items():
            if p in ("kind", "label"):
                continue
            if p not in allowed:
                raise _unknown(where, f"{key}.{p}", list(allowed) + ["kind", "label"])
            params[p] = _check_scalar_param(where, f"{key}.{p}", value)
        try:
            registry[kind](**params)
        except (TypeError, ValueError) as e:
            raise ConfigError(where, key, f"the {kind!r} flow rejects these parameters: {e}") from None
        out[name] = {"kind": kind, "label": label, "params": params}
    return out


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


@dataclasses.dataclass(frozen=True)
class Study:
    """A validated config: plain nested dicts, JSON-serialisable (`as_dict`)."""

    name: str
    source: str
    config: dict

    def __getitem__(self, section):
        return self.config[section]

    def as_dict(self) -> dict:
        return copy.deepcopy(self.config)

    def fingerprint(self) -> str:
        """Hash of everything that determines the results (not the output folder)."""
        c = self.as_dict()
        c["output"].pop("dir", None)
        c.pop("description", None)
        blob = json.dumps(c, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def out_dir(self) -> str:
        return self.config["output"]["dir"]


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
    config["flows"] = _check_flows(where, raw.get("flows"))
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
    integ = config["integrator"]
    if integ["ts"] is not None and any(b <= a for a, b in zip(integ["ts"], integ["ts"][1:])):
        raise ConfigError(where, "integrator.ts", f"expected increasing times, found {integ['ts']}")
    if integ["method"] == "ode":
        from .simulate import make_solver

        try:
            make_solver(integ["solver"])
        except ValueError as e:
            raise ConfigError(where, "integrator.solver", str(e)) from None
    if config["analysis"]["epsilon"] is None:
        config["analysis"]["epsilon"] = integ["stop_relative"] or 1e-6
    if config["loss"]["kind"] != "squared" and config["loss"]["kappa"] != "1/N":
        raise ConfigError(where, "loss.kappa", "kappa applies to the squared loss; pass other losses' parameters in loss.params")
    if config["output"]["dir"] is None:
        config["output"]["dir"] = os.path.join("runs", config["name"])
    return Study(name=config["name"], source=where, config=config)


def _parse_value(text: str):
    """A command-line value as a TOML value; bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
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
        node[parts[-1]] = _parse_value(text.strip())
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
    raw = apply_overrides(raw, overrides, where=f"{path} (command line)")
    name = os.path.splitext(os.path.basename(path))[0]
    return parse_config(raw, where=path, name=name, base_dir=os.path.dirname(os.path.abspath(path)))
