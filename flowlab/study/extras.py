r"""Measurements a study adds along each run beyond the cost: the test loss on held-out data
(data.test_fraction) and, for a PDE study, the relative L2 error of u_θ against the exact
solution. Each is an `extras` function of the integrator (evaluated at every save point,
inside the compiled solve), summarised into an optional record group (`TestRecord`,
`PDERecord`) and saved as arrays ('extras.<name>') beside the cost.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..pde import PDEProblem
from .build import make_problem, make_test_set
from .records import PDERecord, TestRecord


def _at_eps(values, cost, cost0, eps):
    """The value at the first save with C ≤ ε·C(0) (NaN if the run never got there); the
    event's root is found to 1e-12, so C may exceed ε·C(0) by a rounding there."""
    hit = np.nonzero(cost <= eps * cost0 * (1 + 1e-9))[0]
    return float(values[hit[0]]) if hit.size else math.nan


def _test_functions(test) -> dict:
    """θ -> the loss on the test problem `test` (same loss kind, normalised by the test set's
    size) and, for Q > 1, the fraction of test points whose largest output is the largest
    target. Plain closures: `extras` is a static setting, so it holds no arrays (the test set
    becomes a constant of the compiled solve)."""

    def test_loss(problem, flow, theta):
        return test.cost(theta)

    def test_accuracy(problem, flow, theta):
        q = test.out_size
        x = test.outputs(theta).reshape(-1, q)
        y = test.targets.reshape(-1, q)
        return jnp.mean(jnp.argmax(x, axis=1) == jnp.argmax(y, axis=1)).astype(theta.dtype)

    return {"test_loss": test_loss, **({"test_accuracy": test_accuracy} if test.out_size > 1
                                       else {})}


def _pde_error(problem, flow, theta):
    return problem.relative_l2_error(theta)


@eqx.filter_jit
def _final(fns, problem, thetas):
    return {name: jax.vmap(lambda th, fn=fn: fn(problem, None, th))(thetas)
            for name, fn in fns.items()}


class ExtraAnalyses:
    """The cell's extra measurements: `options(opts)` adds their extras to the integrator
    options, `records(tr, i, eps)` summarises seed i into record groups, `arrays(tr)` the
    saved curves."""

    def __init__(self, study, values: dict, problem, model):
        self.fns = {}
        self.problem = problem
        test = make_test_set(study, values)
        self.num_test = 0 if test is None else test.num_points
        if test is not None:
            self.fns.update(_test_functions(make_problem(study, model, test)))
        if isinstance(problem, PDEProblem):
            self.fns["relative_l2_error"] = _pde_error

    def options(self, opts):
        if not self.fns:
            return opts
        return opts.build(opts, extras={**dict(opts.extras), **self.fns})

    def records(self, tr, i: int, eps: float) -> dict:
        if not self.fns:
            return {}
        ok = np.asarray(tr.valid)[i]
        ts, cost = np.asarray(tr.ts)[i][ok], np.asarray(tr.cost)[i][ok]
        curves = {name: np.asarray(tr.extras[name])[i][ok] for name in self.fns}
        if getattr(self, "_final_of", None) is not tr:  # every seed's end point at once
            self._final_of, self._final = tr, {k: np.asarray(v) for k, v in _final(
                self.fns, self.problem, jnp.asarray(tr.theta_final)).items()}
        final = {k: float(v[i]) for k, v in self._final.items()}
        cost0 = float(np.asarray(tr.cost0)[i])
        # the end point counts as a save: a run stopped by its cost event ends between saves,
        # at C = ε·C(0), which no save before it reached
        ts = np.append(ts, float(np.asarray(tr.t_final)[i]))
        cost = np.append(cost, float(np.asarray(tr.cost_final)[i]))
        curves = {name: np.append(curve, final[name]) for name, curve in curves.items()}
        out = {}
        if "test_loss" in self.fns:
            loss = curves["test_loss"]
            best = int(np.argmin(loss))
            acc = curves.get("test_accuracy")
            out["test"] = TestRecord(
                num_points=self.num_test, loss0=float(loss[0]), loss=final["test_loss"],
                best_loss=float(loss[best]), s_best=float(ts[best]),
                loss_at_eps=_at_eps(loss, cost, cost0, eps),
                accuracy=final.get("test_accuracy", math.nan),
                accuracy_at_eps=math.nan if acc is None else _at_eps(acc, cost, cost0, eps))
        if "relative_l2_error" in self.fns:
            err = curves["relative_l2_error"]
            best = int(np.argmin(err))
            out["pde"] = PDERecord(
                problem=self.problem.name, error0=float(err[0]),
                error=final["relative_l2_error"], best_error=float(err[best]),
                s_best=float(ts[best]), error_at_eps=_at_eps(err, cost, cost0, eps))
        return out

    def arrays(self, tr) -> dict:
        return {f"extras.{name}": np.asarray(tr.extras[name]) for name in self.fns}
