"""Why a run ends: one enumeration for the ODE, the Euler steps and sketch-and-project.

`RESULTS` is an `equinox.Enumeration`, as diffrax's and lineax's are: inside jit a stop is an
item combined with `RESULTS.where`; a `Trajectory` stores its integer value (`stop_code`) and
names it (`stop_reason`). The order is fixed: codes already written to run folders keep their
meaning, and new reasons are appended.
"""

import equinox as eqx
import lineax as lx


class RESULTS(eqx.Enumeration):
    """Why a run ended: one stop reason for the ODE, the Euler steps and sketch-and-project.

    An `equinox.Enumeration`: inside jit a stop is an item, combined with `RESULTS.where`;
    `Trajectory.stop_code` holds its integer value and `Trajectory.stop_reason` its name
    (`STOP_REASONS`). The entries and what each means: docs, How-to → Exit codes and stop
    reasons (a table generated from this class); which of them are failures: `FAILURES`.
    """

    t1_reached = "integrated to t1 (or the step budget of Euler steps)"
    cost_target = "C fell to the cost target (the ODE's event is located by root finding)"
    rank_loss = ("σ_min(D) fell below sigma_min_tol, or σ_max/σ_min rose above max_condition: "
                 "D lost the rank the solve needs")
    theta_diverged = "|θ| rose above theta_norm_max"
    non_finite_field = "the vector field returned NaN or inf"
    max_steps = "the step budget of the ODE solver ran out"
    solver_failed = "the ODE solver failed for another reason"
    bound_violated = ("C(s) rose above the flow's guaranteed e^{−rs}C(0) while the solve "
                      "resolved full row rank: the orbit left what the theory covers")
    non_finite_start = "θ0 or C(θ0) is not finite"
    no_descent = "Euler steps: no step that the line search or damping tried lowered C"
    singular = ("the pseudo-inverse's factorisation failed on a finite right-hand side "
                "(Θ or D is numerically singular for the chosen solver)")


#: The stop reasons' names, indexed by `Trajectory.stop_code`.
STOP_REASONS: tuple[str, ...] = tuple(RESULTS._name_to_item)
STOP_CODE: dict[str, int] = {name: int(item._value) for name, item in
                             RESULTS._name_to_item.items()}
#: Ends that mean a run did not do what it was asked (t1_reached is by design; rank_loss,
#: theta_diverged and bound_violated are findings about the orbit, reported as such).
FAILURES = frozenset({"max_steps", "solver_failed", "non_finite_field", "non_finite_start",
                      "singular"})


def stop_message(name: str) -> str:
    """What the stop reason `name` means."""
    return RESULTS._index_to_message[STOP_CODE[name]]


def from_linear_solve(result: lx.RESULTS) -> RESULTS:
    """The stop a failed pseudo-inverse solve means: lineax's `singular`, `breakdown`,
    `stagnation` and `conlim` are `singular`; `nonfinite_input` (a non-finite ∇_X C or θ) is
    `non_finite_field`. `max_steps_reached` of an iterative solve is not a stop: CG and
    Nyström return their last iterate by design (their `max_steps` bounds the work), and the
    line search or the guards judge the step. Everything else continues the run
    (`t1_reached`, the code of a run that goes on)."""
    out = RESULTS.t1_reached
    for name in ("singular", "breakdown", "stagnation", "conlim"):
        out = RESULTS.where(result == getattr(lx.RESULTS, name), RESULTS.singular, out)
    return RESULTS.where(result == lx.RESULTS.nonfinite_input, RESULTS.non_finite_field, out)
