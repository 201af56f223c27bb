r"""How the flows get at D: Gram strategies, pseudo-inverse solvers and the spectrum of D.

Every solver computes v = D⁺ g, the minimal-norm least-squares solution of D v = g:
- 'cholesky': v = Dᵀ Θ⁻¹ g with Θ = D Dᵀ (needs rank D = QN, so K ≥ QN);
- 'qr': QR of D (least squares when K < QN, minimal norm when K ≥ QN; needs full rank);
- 'svd': v = V Σ⁺ Uᵀ g with singular values below rcond·σ_max dropped (any rank);
- 'normal_cholesky': v = (DᵀD)⁻¹ Dᵀ g (full column rank, K ≤ QN; cheaper than QR of D);
- 'cg': matrix-free conjugate gradients on Θ w = g (K ≥ QN) or DᵀD v = Dᵀ g (K < QN), with
  products by D and Dᵀ from jvp / vjp. The fallback when neither D nor Θ fits in memory.

Gram strategies (AbstractGram: θ ↦ (Θ, w ↦ Dᵀ w)) behind CholeskySolver, DampedFlow and
singular_values:
- DenseGram: materialise D (jacrev: QN backward passes, O(QN·K) memory; jacfwd when K < QN);
- LayerwiseGram: for flowlab.MLP, Θ = Σ_l (Δ_l Δ_lᵀ) ⊙ (s_l² H_{l−1} H_{l−1}ᵀ + t_l²) from the
  stacked backprop signals Δ_l = ∂X/∂z_l and the activations H_{l−1}, without forming D
  ("Fast finite width NTK", Novak et al. 2022); Dᵀ w is one vjp. Memory O(K + (QN)² + QN·Σ M_l);
- AutoGram: LayerwiseGram for an MLP, DenseGram otherwise (the default everywhere).

`resolve_solver('auto')` takes Cholesky of the auto Gram when K ≥ QN and Θ fits in memory, CG
when it does not, and QR of D when K < QN (see `auto_solver` for why not the normal equations).
"""

import abc
import math
import os
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float


class AbstractGram(eqx.Module):
    """A way to obtain Θ = D Dᵀ and the map w ↦ Dᵀ w at θ."""

    @abc.abstractmethod
    def __call__(self, problem, theta) -> tuple[Float[Array, "QN QN"], object]:
        """Return (Θ, w ↦ Dᵀ w)."""


class DenseGram(AbstractGram):
    """Materialise D (jacrev, or jacfwd when K < QN) and form D Dᵀ."""

    mode: str = eqx.field(static=True, default="auto")

    def __call__(self, problem, theta):
        d = problem.jacobian(theta, self.mode)
        return d @ d.T, lambda w: d.T @ w


def is_mlp_problem(problem) -> bool:
    """Whether the problem's model is a flowlab.MLP (so the layerwise Gram applies)."""
    from .nets import MLP

    return isinstance(getattr(problem, "model_static", None), MLP)


def _mlp_backprop(model, inputs):
    """Activations H_{l−1} (N, M_{l−1}) and signals Δ_l (N, Q, M_l), Δ_l[i, q] = ∂f_q(x_i)/∂z_l."""
    from .nets import get_activation

    act = get_activation(model.activation)
    scales = model.layer_scales()
    n, q = inputs.shape[0], model.out_size
    h, hs, zs = inputs, [], []
    for i, ((s, t), w) in enumerate(zip(scales, model.weights)):
        hs.append(h)
        z = s * (h @ w.T)
        if model.biases is not None:
            z = z + t * model.biases[i]
        zs.append(z)
        h = act(z)
    delta = jnp.broadcast_to(jnp.eye(q, dtype=inputs.dtype), (n, q, q))
    deltas = [delta]
    for i in range(len(model.weights) - 1, 0, -1):
        z = zs[i - 1]
        dsigma = jax.jvp(act, (z,), (jnp.ones_like(z),))[1]  # elementwise σ'(z)
        delta = scales[i][0] * (delta @ model.weights[i]) * dsigma[:, None, :]
        deltas.append(delta)
    return hs, deltas[::-1]


def _gram_from_backprop(model, hs, deltas):
    n, q = hs[0].shape[0], model.out_size
    gram = jnp.zeros((n * q, n * q), hs[0].dtype)
    for i, ((s, t), h, delta) in enumerate(zip(model.layer_scales(), hs, deltas)):
        a = s**2 * (h @ h.T)
        if model.biases is not None:
            a = a + t**2
        if q > 1:
            a = jnp.repeat(jnp.repeat(a, q, axis=0), q, axis=1)
        flat = delta.reshape(n * q, -1)
        gram = gram + (flat @ flat.T) * a
    return gram


def mlp_gram(model, inputs: Float[Array, "N M"]) -> Float[Array, "QN QN"]:
    r"""The NTK Gram Θ = D Dᵀ of a flowlab.MLP on `inputs`, layer by layer, without D.

    With z_l = s_l W_l h_{l−1} + t_l b_l: ∂f_q/∂W_l = s_l δ_l^q h_{l−1}ᵀ and ∂f_q/∂b_l = t_l δ_l^q,
    δ_l^q = ∂f_q/∂z_l, so Θ[(i,q),(j,r)] = Σ_l ⟨δ_l^{iq}, δ_l^{jr}⟩ (s_l² ⟨h_{l−1}^i, h_{l−1}^j⟩
    + t_l²) (no t_l² term without biases). δ_L = e_q; δ_{l−1} = s_l W_lᵀ δ_l ⊙ σ'(z_{l−1}), σ' by
    a jvp of the activation. Cost Σ_l QN·M_l·(M_{l−1} + QN) + N²·M_{l−1}; memory
    O((QN)² + QN·Σ M_l)."""
    hs, deltas = _mlp_backprop(model, inputs)
    return _gram_from_backprop(model, hs, deltas)


class LayerwiseGram(AbstractGram):
    """Θ for a flowlab.MLP layer by layer (`mlp_gram`); D is never formed. Dᵀ w reuses the same
    signals: ∂/∂W_l = s_l Gᵀ H_{l−1}, ∂/∂b_l = t_l Σ_i G_i with G_i = Σ_q w_{iq} δ_l^{iq} (one
    matmul per layer, no second forward/backward pass). Memory O(K + (QN)² + QN·Σ widths)
    instead of O(QN·K)."""

    def __call__(self, problem, theta):
        if not is_mlp_problem(problem):
            raise ValueError(
                "LayerwiseGram needs a problem whose model is a flowlab.MLP, got "
                f"{type(getattr(problem, 'model_static', None)).__name__}; use DenseGram"
            )
        model = problem.model(theta)
        hs, deltas = _mlp_backprop(model, problem.inputs)
        gram = _gram_from_backprop(model, hs, deltas)
        scales = model.layer_scales()

        def transpose(w):
            w = w.reshape(hs[0].shape[0], model.out_size)
            gs = [jnp.einsum("iq,iqm->im", w, d) for d in deltas]
            dw = [s * (g.T @ h) for (s, _), g, h in zip(scales, gs, hs)]
            if model.biases is None:
                grads = eqx.tree_at(lambda m: m.weights, model, dw)
            else:
                db = [t * jnp.sum(g, axis=0) for (_, t), g in zip(scales, gs)]
                grads = eqx.tree_at(lambda m: (m.weights, m.biases), model, (dw, db))
            return problem.flatten(grads)

        return gram, transpose


def auto_gram(problem) -> AbstractGram:
    """LayerwiseGram for a flowlab.MLP, DenseGram (jacrev; jacfwd when K < QN) otherwise."""
    return LayerwiseGram() if is_mlp_problem(problem) else DenseGram()


class AutoGram(AbstractGram):
    """Picks `auto_gram(problem)` at each call (shapes are static, so this costs nothing)."""

    def __call__(self, problem, theta):
        return auto_gram(problem)(problem, theta)


class AbstractPinvSolver(eqx.Module):
    """Computes D⁺ g at θ."""

    #: σ_max/σ_min beyond which the solve is no longer trustworthy (the default guard).
    max_condition: ClassVar[float] = 1e10

    @abc.abstractmethod
    def solve(self, problem, theta, rhs: Float[Array, " QN"]) -> Float[Array, " K"]: ...

    def check(self, problem) -> None:
        """Raise a ValueError when the solver cannot apply to the problem's shapes."""


class CholeskySolver(AbstractPinvSolver):
    """v = Dᵀ (D Dᵀ)⁻¹ g by a Cholesky factorisation of the Gram matrix (full row rank).

    `gram` is how Θ and Dᵀ are obtained; the default AutoGram uses the layerwise Gram for an
    MLP and the dense Jacobian otherwise."""

    #: cond(Θ) = cond(D)²: beyond 1e7 the Gram loses ~1e-2 of float64 accuracy
    max_condition: ClassVar[float] = 1e7
    gram: AbstractGram = AutoGram()

    def check(self, problem):
        if problem.num_params < problem.num_outputs:
            raise ValueError(
                f"the 'cholesky' solver needs full row rank, so K >= QN; here K = "
                f"{problem.num_params} < QN = {problem.num_outputs} (underparametrised). "
                "Use solver='qr' or 'svd'."
            )

    def solve(self, problem, theta, rhs):
        theta_gram, transpose = self.gram(problem, theta)
        op = lx.MatrixLinearOperator(theta_gram, lx.positive_semidefinite_tag)
        w = lx.linear_solve(op, rhs, lx.Cholesky(), throw=False).value
        return transpose(w)


class QRSolver(AbstractPinvSolver):
    """D⁺ g by a QR factorisation of D (full rank: column rank if K < QN, row rank if not)."""

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta)
        return lx.linear_solve(lx.MatrixLinearOperator(d), rhs, lx.QR(), throw=False).value


class SVDSolver(AbstractPinvSolver):
    """D⁺ g by the SVD of D, singular values below rcond·σ_max treated as zero (any rank).

    rcond=None uses lineax's default, eps·max(QN, K)."""

    rcond: float | None = eqx.field(static=True, default=None)

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta)
        return lx.linear_solve(
            lx.MatrixLinearOperator(d), rhs, lx.SVD(rcond=self.rcond), throw=False
        ).value


class NormalCholeskySolver(AbstractPinvSolver):
    """v = (DᵀD)⁻¹ Dᵀ g by Cholesky of the K × K normal matrix (full column rank, K ≤ QN).

    D by jacfwd (K forward passes). About half the flops of QR of D, but it squares the
    condition number: σ is resolved down to about √eps·σ_max (QR: eps·σ_max)."""

    max_condition: ClassVar[float] = 1e7  # DᵀD squares cond(D), as the Gram does

    def check(self, problem):
        if problem.num_params > problem.num_outputs:
            raise ValueError(
                f"the 'normal_cholesky' solver needs full column rank, so K <= QN; here K = "
                f"{problem.num_params} > QN = {problem.num_outputs}. Use 'cholesky'."
            )

    def solve(self, problem, theta, rhs):
        d = problem.jacobian(theta, "fwd")
        op = lx.MatrixLinearOperator(d.T @ d, lx.positive_semidefinite_tag)
        return lx.linear_solve(op, d.T @ rhs, lx.Cholesky(), throw=False).value


class CGSolver(AbstractPinvSolver):
    """Matrix-free D⁺ g by conjugate gradients, products by D (jvp) and Dᵀ (vjp) only.

    K ≥ QN: solve Θ w = g with Θ u = D(Dᵀ u), then v = Dᵀ w; K < QN: solve DᵀD v = Dᵀ g
    (CGLS). Memory O(K + QN): the fallback when Θ (or D) does not fit. Iterations grow like
    √cond(Θ) = σ_max/σ_min, so it suits well-conditioned problems; an unconverged solve
    returns the last iterate (throw=False) and max_steps bounds the work."""

    max_condition: ClassVar[float] = 1e7  # iterates on Θ (or DᵀD): cond(D)² matters
    rtol: float = eqx.field(static=True, default=1e-12)
    atol: float = eqx.field(static=True, default=1e-14)
    max_steps: int | None = eqx.field(static=True, default=None)

    def solve(self, problem, theta, rhs):
        _, d = jax.linearize(problem.outputs, theta)
        dt_tuple = jax.linear_transpose(d, theta)

        def dt(w):
            return dt_tuple(w)[0]

        cg = lx.CG(rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)
        wide = problem.num_params >= problem.num_outputs
        size = problem.num_outputs if wide else problem.num_params
        struct = jax.ShapeDtypeStruct((size,), theta.dtype)
        matvec = (lambda w: d(dt(w))) if wide else (lambda v: dt(d(v)))
        op = lx.FunctionLinearOperator(matvec, struct, lx.positive_semidefinite_tag)
        if wide:
            return dt(lx.linear_solve(op, rhs, cg, throw=False).value)
        return lx.linear_solve(op, dt(rhs), cg, throw=False).value


SOLVERS = {
    "cholesky": CholeskySolver,
    "qr": QRSolver,
    "svd": SVDSolver,
    "normal_cholesky": NormalCholeskySolver,
    "cg": CGSolver,
}

#: fraction of the device's memory that 'auto' lets a Gram or a Jacobian take.
MEMORY_FRACTION = 0.25


def memory_budget() -> int:
    """Bytes 'auto' may spend on one dense matrix: MEMORY_FRACTION of the default device's
    memory (its bytes_limit on a GPU/TPU, physical RAM on a CPU)."""
    total = None
    try:
        stats = jax.devices()[0].memory_stats()
        total = stats.get("bytes_limit") if stats else None
    except (AttributeError, RuntimeError, NotImplementedError):  # CPUs may not report it
        total = None
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 8 * 2**30
    return int(MEMORY_FRACTION * total)


def auto_solver(problem, memory_budget_bytes: int | None = None) -> AbstractPinvSolver:
    """The 'auto' choice from the model type, K, QN and memory.

    K ≥ QN: Cholesky of Θ (AutoGram: layerwise for an MLP, else jacrev) when Θ and, for a
    non-MLP, D fit in the memory budget; matrix-free CG otherwise. K < QN: QR of D, or CG
    when D does not fit. Normal-equation Cholesky (QN·K² + K³/3 flops against QR's
    2QN·K² − 2K³/3, so at most 2× cheaper, and D by jacfwd costs the same for both) is not
    the default because it squares cond(D): at cond(D) = 4e6, inside the default rank guard
    of 1e7, it measured a 1e-4 relative error in D⁺g where QR gave 1e-14."""
    k, qn = problem.num_params, problem.num_outputs
    budget = memory_budget() if memory_budget_bytes is None else memory_budget_bytes
    item = jnp.dtype(problem.theta0.dtype).itemsize
    if k >= qn:
        need = qn * qn + (0 if is_mlp_problem(problem) else qn * k)
        return CholeskySolver() if need * item <= budget else CGSolver()
    if (qn * k + k * k) * item > budget:
        return CGSolver()
    return QRSolver()


def resolve_solver(solver: "str | AbstractPinvSolver", problem) -> AbstractPinvSolver:
    """A solver instance from a name; 'auto' is `auto_solver(problem)`: Cholesky of the
    (layerwise, for an MLP) Gram when K ≥ QN, QR of D when K < QN, CG when the matrices do
    not fit in memory."""
    if isinstance(solver, AbstractPinvSolver):
        out = solver
    elif solver == "auto":
        out = auto_solver(problem)
    elif solver in SOLVERS:
        out = SOLVERS[solver]()
    else:
        raise ValueError(f"unknown solver {solver!r}; expected 'auto' or one of {sorted(SOLVERS)}")
    out.check(problem)
    return out


def singular_values(problem, theta, gram: AbstractGram | None = None) -> Float[Array, " r"]:
    """The min(QN, K) singular values of D in increasing order, from the eigenvalues of the
    smaller of D Dᵀ and Dᵀ D (resolves σ down to about √eps·σ_max). D Dᵀ comes from `gram`,
    default `auto_gram(problem)` (layerwise for an MLP)."""
    if problem.num_params >= problem.num_outputs:
        theta_gram, _ = (gram or auto_gram(problem))(problem, theta)
    else:
        d = problem.jacobian(theta)
        theta_gram = d.T @ d
    eig = jnp.linalg.eigvalsh(theta_gram)
    return jnp.sqrt(jnp.clip(eig, 0.0))


def numerical_rank(sigma: Float[Array, " r"], rtol: float | None = None):
    """#{σ > rtol·σ_max}; default rtol = √(eps·r), the resolution of σ computed from a Gram
    (conservative for σ from an SVD)."""
    if rtol is None:
        rtol = math.sqrt(float(jnp.finfo(sigma.dtype).eps) * sigma.shape[-1])
    return jnp.sum(sigma > rtol * jnp.max(sigma, axis=-1, keepdims=True), axis=-1)
