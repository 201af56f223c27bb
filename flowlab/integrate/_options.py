"""Every integrator setting, its default, its check and its meaning, written once.

`IntegratorOptions` is consumed by `simulate`, `euler_steps`, the config schema (which derives its
[integrator] keys, checks and defaults from the fields below) and the study runner. Numbers are
arrays once resolved (traced: changing them does not recompile); switches are static.
"""

import dataclasses
import itertools
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import Check, SettingError

#: 'auto' dtmin for activations with kinks, relative to t1, for flows integrated by an ODE solver
#: (the adapted flow follows its output path instead): without it the controller shrinks the step
#: to ~rtol/jump at every kink and crawls (20 000 steps to s = 0.03–0.5 of 155 on the ReLU
#: quickstart); with it a crossing costs a forced step. The standard flow chatters along sliding
#: kinks at dtmin: 1e-4·t1 takes 10 081 steps to t1 there, its costs at the saves within 1 % of
#: 3e-4·t1's; 1e-5·t1 took 101 075 steps, past the default max_steps.
DTMIN_KINKS = 1e-4

#: rtol and atol are raised to at least this many eps of θ's dtype (1.2e-5 in float32).
TOLERANCE_EPS = 100

#: ODE solvers by name (see `make_solver`); implicit ones get a matrix-free Newton–GMRES.
EXPLICIT_SOLVERS = ("bosh3", "dopri5", "dopri8", "euler", "heun", "tsit5")
IMPLICIT_SOLVERS = ("kvaerno3", "kvaerno5")
#: 'output_path' follows a flow's a priori output trajectory (OutputPathSolver, MATH §9);
#: 'auto' picks it for activations with kinks where the flow has one, tsit5 otherwise.
ODE_SOLVER_NAMES = ("auto", "output_path", *EXPLICIT_SOLVERS, *IMPLICIT_SOLVERS)

#: 'auto' grid_search for general residual problems: ENGD's 30 halvings (Müller & Zeinhofer
#: 2023), down to h·2^-29; on PINNs with a truncated pseudo-inverse it reached errors 1e-10 to
#: 1e-13 where full steps diverge (benchmarks/defaults.py).
AUTO_GRID_SEARCH = 30

#: Settings that were renamed: old name -> new name. `solver` was the ODE solver, a word the
#: flows use for the pseudo-inverse (`AdaptedFlow(solver=...)`).
RENAMED_SETTINGS = {"solver": "ode_solver"}


def _number(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError
    v = float(v)
    if not math.isfinite(v):
        raise ValueError
    return v


def _positive(v):
    v = _number(v)
    if v <= 0:
        raise ValueError
    return v


def _fraction(v):
    v = _positive(v)
    if v >= 1:
        raise ValueError
    return v


def _integer(lo):
    def parse(v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError
        return int(v)

    return parse


def _boolean(v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError
    return bool(v)


def _ode_solver(v):
    if v not in ODE_SOLVER_NAMES:
        raise ValueError
    return v


def _times(v):
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)):
        raise TypeError
    ts = tuple(_number(x) for x in np.asarray(v, dtype=object).ravel())
    if len(ts) < 2 or ts[0] < 0 or any(b <= a for a, b in itertools.pairwise(ts)):
        raise ValueError
    return ts


def _choice(v, choices):
    if v not in choices:
        raise ValueError
    return v


def _condition(v):
    return v if v == "auto" else _positive(v)


POSITIVE = Check("a positive number", _positive)
OPTIONAL_POSITIVE = Check("a positive number, or off", _positive, optional=True)
OPTIONAL_FRACTION = Check("a number in (0, 1), or off", _fraction, optional=True)
COUNT = Check("an integer >= 1", _integer(1))
AUTO_OR_COUNT = Check("an integer >= 1, 'auto' or off",
                      lambda v: v if v == "auto" else _integer(1)(v), optional=True)
OPTIONAL_COUNT = Check("an integer >= 1, or off", _integer(1), optional=True)
SAVES = Check("an integer >= 2", _integer(2))
BOOL = Check("true or false", _boolean)
ODE_SOLVER = Check(f"one of {list(ODE_SOLVER_NAMES)}", _ode_solver)
TIMES = Check("a list of >= 2 increasing times >= 0, or off", _times, optional=True)
AUTO_OR_POSITIVE = Check("a positive number, 'auto' or off", _condition, optional=True)
BATCHING = Check("one of ['auto', 'vmap', 'map']", lambda v: _choice(v, ("auto", "vmap", "map")))
CONDITION = Check("a positive number, 'auto' (the flow's solve decides) or off", _condition,
                  optional=True)


def setting(default, doc: str, check: Check, *, static: bool = False, config: bool = True):
    """A field of IntegratorOptions: its default, meaning and check, and whether a config may
    set it."""
    return eqx.field(default=default, static=static,
                     metadata={"doc": doc, "check": check, "config": config})


class IntegratorOptions(eqx.Module):
    """How to integrate a flow: by diffrax (`simulate`) or by Euler steps (`euler_steps`).

    Build with keywords, each checked here, or `IntegratorOptions.build(options, **changes)`;
    `resolve(problem, flow)` turns it into the form the compiled solve takes. `fields()` lists
    the settings with their docs; the configuration reference (docs, Reference →
    Configuration and CLI) is generated from them, with each default and the values it
    takes. `simulate` and `euler_steps` take the same names as keywords.

    **Arguments:**

    - the ODE (`simulate`): `t1`, `ts`, `num_saves`, `ode_solver`, `rtol`, `atol`, `dt0`,
      `dtmin`, `max_steps`, `seed_batching`;
    - stops, shared by both integrators: `cost_target`, `cost_target_relative`,
      `sigma_min_tol`, `max_condition`, `theta_norm_max`, `bound_slack`, `check_finite`;
    - what is saved and shown: `diagnostics`, `save_theta`, `extras`, `progress` (the last
      two from Python only, not from a config);
    - Euler steps (`euler_steps`): `step_size`, `num_steps`, `backtracking`,
      `max_backtracks`, `sufficient_decrease`, `grid_search`, `levenberg_marquardt`,
      `initial_damping`.

    **Raises:**

    - `SettingError` (a ValueError): when a value is refused (its `.key` names the setting,
      `.expected` what it takes), when two line searches are set together, or when `ts`
      reaches past `t1`.
    - `TypeError`: on an unknown keyword (`build` also names a renamed setting's new name).
    """

    # --- the ODE (simulate) ---------------------------------------------------------------
    t1: float = setting(10.0, "end of the integration in s (simulate)", POSITIVE)
    ts: tuple | None = setting(None, "save times in [0, t1] (off: num_saves equally spaced)",
                               TIMES)
    num_saves: int = setting(101, "number of equally spaced save times when ts is off", SAVES,
                             static=True)
    ode_solver: str = setting(
        "auto", "diffrax solver (implicit Kvaerno uses Newton with matrix-free GMRES), or "
        "'output_path': Gauss–Newton steps onto the flow's a priori output trajectory "
        "X*(s) (the adapted flow at full rank), exact in X and indifferent to kinks; 'auto': "
        "output_path for activations with kinks where the flow has one, tsit5 otherwise",
        ODE_SOLVER, static=True)
    rtol: float = setting(1e-8, "relative tolerance of the PID step-size controller", POSITIVE)
    atol: float = setting(1e-8, "absolute tolerance of the PID step-size controller", POSITIVE)
    dt0: float | None = setting(None, "first step (off: diffrax chooses)", OPTIONAL_POSITIVE)
    dtmin: float | str | None = setting(
        "auto", "smallest step: where the error estimate cannot be met (a kink of the "
        "activation, where θ' jumps) the controller takes a step of this size instead of "
        "shrinking further; 'auto': DTMIN_KINKS·t1 for activations with kinks, off otherwise",
        AUTO_OR_POSITIVE)
    max_steps: int = setting(100_000, "step budget of one solve", COUNT, static=True)
    seed_batching: str = setting(
        "auto", "how a batch of θ0 runs: 'vmap' (one batched solve; seeds step in lockstep), "
        "'map' (lax.map: one compiled solve after another, no batched LAPACK) or 'auto' (map on "
        "CPU, vmap on GPU/TPU; sharded batches always vmap)", BATCHING, static=True)
    # --- stops, shared by both ------------------------------------------------------------
    cost_target: float | None = setting(None, "stop at C <= this", OPTIONAL_POSITIVE)
    cost_target_relative: float | None = setting(
        None, "stop at C − C_min <= this·(C(θ0) − C_min), C_min the loss's infimum (0 for the "
        "squared loss); with t1 = 'auto' in a config also the ε of T_ε",
        OPTIONAL_FRACTION)
    sigma_min_tol: float | None = setting(None, "stop when σ_min(D) < this (rank loss)",
                                          OPTIONAL_POSITIVE)
    max_condition: float | str | None = setting(
        "auto", "stop when σ_max/σ_min(D) > this (rank loss); 'auto': what the flow's solve "
        "resolves (1e7 through the Gram, 1e10 through QR/SVD of D), off for flows that do "
        "not invert D", CONDITION)
    theta_norm_max: float | None = setting(1e6, "stop when |θ| > this", OPTIONAL_POSITIVE)
    bound_slack: float | None = setting(
        1e-3, "stop when √C(s) > (1 + this)·√(e^{−rs}C(0)) + √C_res, r the flow's rate_bound "
        "(2κ for the adapted flow at full rank) and C_res the cost of a 100·(atol + rtol·|Y|∞) "
        "error on every output: the orbit has left what the theory covers, e.g. a sliding kink "
        "of a ReLU network (MATH §9)", OPTIONAL_POSITIVE)
    check_finite: bool = setting(True, "stop when the field is not finite (one extra field "
                                 "evaluation per step)", BOOL, static=True)
    diagnostics: bool = setting(True, "save σ_min, σ_max and the rank of D at each save", BOOL,
                                static=True)
    save_theta: bool = setting(False, "save θ itself (K numbers per save)", BOOL, static=True)
    extras: tuple = setting((), "(name, fn(problem, flow, θ)) pairs saved into "
                            "Trajectory.extras", Check("pairs", tuple), static=True,
                            config=False)
    progress: bool = setting(False, "a tqdm progress bar over s", BOOL, static=True,
                             config=False)
    # --- Euler steps (euler_steps) ----------------------------------------------------------
    step_size: float | None = setting(None, "Euler step h (off: the flow's own, 1/κ for the adapted "
                                      "flow: the Gauss–Newton step; 1 for the hessian_metric flow)",
                                      OPTIONAL_POSITIVE)
    num_steps: int = setting(50, "Euler step budget", COUNT, static=True)
    backtracking: bool = setting(False, "halve an Euler step until the cost decreases", BOOL,
                                 static=True)
    max_backtracks: int = setting(30, "at most this many halvings per step", COUNT, static=True)
    sufficient_decrease: float | None = setting(
        None, "Armijo constant c of backtracking: accept h only when C(θ + hv) ≤ C(θ) + "
        "c·h·∂_vC(θ) (one jvp per step; off: any decrease)", OPTIONAL_FRACTION)
    grid_search: int | str | None = setting(
        "auto", "ENGD's line search for Euler steps: try h·2^-j, j = 0..n-1, and take the lowest "
        "cost (n cost evaluations per step; off: none). With it or backtracking a step that "
        "lowers no cost ends the run ('no_descent'). 'auto': AUTO_GRID_SEARCH (30) for a general "
        "residual problem (a ResidualProblem: PINNs, classical models) and for the hessian_metric "
        "flow on a loss other than the squared one, unless backtracking or levenberg_marquardt is "
        "on; off for a network's least-squares fit to data", AUTO_OR_COUNT,
        static=True)
    levenberg_marquardt: bool = setting(
        False, "Levenberg–Marquardt steps of the adapted flow: θ ← θ − hDᵀ(Θ + λI)⁻¹∇_X C, "
        "accepted when C falls, with λ adapted by the ratio ρ of the actual to the linearised "
        "decrease (Nielsen: λ·max(1/3, 1 − (2ρ − 1)³) after a success, doubled growth after a "
        "failure); max_backtracks failures in a row, or a step below θ's rounding, end the run "
        "('no_descent')", BOOL,
        static=True)
    initial_damping: float = setting(
        1e-3, "λ at θ0 for levenberg_marquardt, relative to rᵀΘr/rᵀr (r = X(θ0) − Y)",
        POSITIVE)

    def __check_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _resolved(value):
                f.metadata["check"](value, f.name, scope="integrator setting")
        searches = [name for name, on in (("backtracking", self.backtracking),
                                           ("grid_search", self.grid_search not in (None, "auto")),
                                           ("levenberg_marquardt", self.levenberg_marquardt))
                    if on]
        if len(searches) > 1:
            raise SettingError(
                searches[1], f"not set together with {searches[0]} (choose one line search)",
                getattr(self, searches[1]),
                message=f"integrator settings {' and '.join(searches)}: choose one line search")
        if self.ts is not None and not _resolved(self.ts) and float(self.ts[-1]) > float(self.t1):
            raise SettingError(
                "ts", f"save times in [0, t1 = {self.t1}]", self.ts,
                message=f"integrator setting ts: save times must lie in [0, t1 = {self.t1}], "
                        f"got up to {self.ts[-1]}")

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        """The settings by name (metadata: doc, check, config)."""
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def renamed(cls) -> dict[str, str]:
        """Settings that were renamed: old name -> new name (refused under the old one)."""
        return dict(RENAMED_SETTINGS)

    @classmethod
    def build(cls, options: "IntegratorOptions | None" = None, **changes) -> "IntegratorOptions":
        """`options` (default: the defaults) with `changes`; unknown names are a TypeError that
        lists the settings (a renamed one names its new name)."""
        renamed = sorted(set(changes) & set(RENAMED_SETTINGS))
        if renamed:
            raise TypeError("integrator setting(s) renamed: " + ", ".join(
                f"{old!r} is now {RENAMED_SETTINGS[old]!r}" for old in renamed)
                + " (a flow's pseudo-inverse solver stays AdaptedFlow(solver=...))")
        unknown = sorted(set(changes) - set(cls.fields()))
        if unknown:
            raise TypeError(f"unknown integrator setting(s) {unknown}; the settings are "
                            f"{sorted(cls.fields())}")
        if "ts" in changes and changes["ts"] is not None:
            ts = changes["ts"]
            changes["ts"] = tuple(float(t) if _is_number(t) else t
                                  for t in np.asarray(ts, dtype=object).ravel()) if _is_sequence(ts) else ts
        if "extras" in changes:
            changes["extras"] = tuple(sorted(dict(changes["extras"] or {}).items()))
        options = cls() if options is None else options
        return dataclasses.replace(options, **changes)

    def save_times(self) -> np.ndarray:
        """The save times of the ODE: ts, or num_saves equally spaced in [0, t1]."""
        if self.ts is not None:
            return np.asarray(self.ts, float)
        return np.linspace(0.0, float(self.t1), self.num_saves)

    def resolve(self, problem, flow) -> "IntegratorOptions":
        """Numbers as arrays of θ's dtype (traced), 'auto' condition and 1/κ step decided, save
        times materialised: the form the compiled solves take."""
        dtype = problem.theta0.dtype
        max_condition = self.max_condition
        if max_condition == "auto":
            max_condition = flow.default_max_condition(problem)
        step = flow.default_step_size(problem) if self.step_size is None else self.step_size
        grid_search = self.grid_search
        if grid_search == "auto":
            grid_search = (AUTO_GRID_SEARCH if flow.steps_need_search(problem) and not (
                self.backtracking or self.levenberg_marquardt) else None)
        bound = flow.rate_bound(problem)
        bound_slack = self.bound_slack if math.isfinite(bound) else None
        batching = self.seed_batching
        if batching == "auto":
            batching = "map" if jax.default_backend() == "cpu" else "vmap"
        ode_solver = self.ode_solver
        has_path = flow.output_path(problem) is not None
        if ode_solver == "auto":
            ode_solver = "output_path" if problem.piecewise_smooth and has_path else "tsit5"
        if ode_solver == "output_path" and not has_path:
            raise ValueError(
                f"integrator setting ode_solver = 'output_path': the {type(flow).__name__} on this "
                "problem has no a priori output path (the adapted flow at full row rank with "
                "the squared loss has); choose an ODE solver such as 'tsit5'")
        dtmin = self.dtmin
        if dtmin == "auto":
            dtmin = (DTMIN_KINKS * float(self.t1)
                     if problem.piecewise_smooth and ode_solver != "output_path" else None)
        num = lambda v: None if v is None else jnp.asarray(v, dtype)
        # a tolerance below the dtype's resolution cannot be met: the step size would collapse
        # (float32 at the float64 default 1e-8 stalled at C/C0 ≈ 0.99)
        floor = TOLERANCE_EPS * float(jnp.finfo(dtype).eps)
        return dataclasses.replace(
            self, t1=num(self.t1), rtol=num(max(self.rtol, floor)),
            atol=num(max(self.atol, floor)), dt0=num(self.dt0),
            dtmin=num(dtmin),
            cost_target=num(self.cost_target),
            cost_target_relative=num(self.cost_target_relative),
            sigma_min_tol=num(self.sigma_min_tol), max_condition=num(max_condition),
            sufficient_decrease=num(self.sufficient_decrease),
            theta_norm_max=num(self.theta_norm_max), step_size=num(step),
            bound_slack=num(bound_slack), seed_batching=batching,
            ode_solver=ode_solver, grid_search=grid_search,
            ts=jnp.asarray(self.save_times(), dtype),
        )

    @property
    def any_guard(self) -> bool:
        """Whether a per-step degeneration check is on."""
        return (self.theta_norm_max is not None or self.check_finite
                or self.sigma_min_tol is not None or self.max_condition is not None
                or self.bound_slack is not None)


def _is_sequence(v) -> bool:
    return isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, (str, bytes))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _resolved(value) -> bool:
    return isinstance(value, jnp.ndarray) or hasattr(value, "aval")
