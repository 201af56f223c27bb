"""High-precision reference minima of the Moré–Garbow–Hillstrom problems (`flowlab.mgh`).

    python benchmarks/mgh_reference.py [--problems a,b] [--dps 60] [--starts 24]

For each problem:
1. float64 search: scipy `least_squares` ('lm' and 'trf', analytic Jacobian by jax.jacfwd,
   xtol = ftol = gtol = 1e-15) from x0, 10·x0, 100·x0, the known minimiser (where the paper
   gives one) and `--starts` random starts around x0 (x0 + c·(|x0| + 1)·N(0, 1), c in
   {0.1, 0.3, 1, 3}, fixed seed); the end points are grouped by their value f = |F|².
2. refinement in mpmath at `--dps` digits (default 60) of the lowest end points: Newton's
   method on ∇f = 2JᵀF with J by central differences (step 10^{−dps/3}·max(1, |x_j|)) and the
   Hessian by central differences of ∇f (step 10^{−dps/5}·max(1, |x_j|)), the step through
   an SVD pseudo-inverse of the Hessian (singular values below 10^{−dps/3}·σ_max dropped:
   the rank-deficient linear problems 33, 34) with step halving on f. Where the paper (or the
   problem's construction) gives an exact minimiser x* with F(x*) = 0, that is the reference
   (F(x*) evaluated in mpmath). The refinement is repeated at 4/3·dps digits from its end
   point, and `digits_stable` counts the digits of f* the two agree on.
3. the reference value f* is the lowest refined value; the paper's printed value is checked
   against it to the digits printed (truncated or rounded, `paper_agreement`). Values the
   search found at other stationary points (refined where Newton converged, `is_minimum`
   where the Hessian there is positive semi-definite; float64 end points otherwise, e.g.
   limits at infinity) are listed in `local_minima`.

Writes benchmarks/results/mgh_reference.json (plain data: numbers as strings of 40
significant digits and as floats).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "benchmarks" / "results" / "mgh_reference.json"
DIGITS_OUT = 40  # significant digits written


def _float64_search(spec, num_random, seed=0):
    """End points (f, x) of scipy least_squares from many starts, lowest first."""
    import jax
    import numpy as np
    from scipy.optimize import least_squares

    fun = jax.jit(spec.residual)
    jac = jax.jit(jax.jacfwd(spec.residual))
    f_np = lambda x: np.asarray(fun(x))
    j_np = lambda x: np.asarray(jac(x))
    x0 = spec.x0
    starts = [s * x0 for s in (1.0, 10.0, 100.0)]
    if spec.x_star is not None:
        starts.append(np.array([float(v) for v in spec.x_star]))
    rng = np.random.default_rng(seed)
    scales = (0.1, 0.3, 1.0, 3.0)
    for k in range(num_random):
        c = scales[k % len(scales)]
        starts.append(x0 + c * (np.abs(x0) + 1.0) * rng.standard_normal(spec.n))
    ends = []
    for s in starts:
        with np.errstate(all="ignore"):
            if not np.all(np.isfinite(f_np(s))):
                continue
        for method in ("lm", "trf"):
            kw = dict(xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
            if method == "trf":
                kw["x_scale"] = "jac"
            try:
                with np.errstate(all="ignore"):
                    res = least_squares(f_np, s, jac=j_np, method=method, **kw)
            except Exception:
                continue
            with np.errstate(all="ignore"):
                f = float(res.fun @ res.fun)
            if np.isfinite(f) and np.all(np.isfinite(res.x)):
                ends.append((f, res.x, method))
    ends.sort(key=lambda e: e[0])
    return ends, len(starts)


def _groups(ends, rel=1e-6, zero=1e-20):
    """The distinct values among the end points (lowest first), one representative each."""
    same = lambda f, g: (f <= zero and g <= zero) or abs(f - g) <= rel * max(abs(g), zero)
    out = []
    for f, x, method in ends:
        grp = next((grp for grp in out if same(f, grp[0])), None)
        if grp is None:
            out.append([f, x, method, 1])
        else:
            grp[3] += 1
    return out


class _MP:
    """mpmath helpers for one problem at one precision."""

    def __init__(self, spec, dps):
        import mpmath

        self.mpmath = mpmath
        self.spec, self.dps = spec, dps

    def F(self, x):
        return list(self.spec.residual_mp(x))

    def f(self, x):
        return self.mpmath.fsum(r * r for r in self.F(x))

    def _steps(self, x, exponent):
        ten = self.mpmath.mpf(10)
        return [ten ** (-exponent) * max(1, abs(v)) for v in x]

    def jacobian(self, x):
        hs = self._steps(x, self.dps // 3)
        cols = []
        for j, h in enumerate(hs):
            xp, xm = list(x), list(x)
            xp[j] += h
            xm[j] -= h
            fp, fm = self.F(xp), self.F(xm)
            cols.append([(a - b) / (2 * h) for a, b in zip(fp, fm)])
        m, n = len(cols[0]), len(cols)
        return self.mpmath.matrix([[cols[j][i] for j in range(n)] for i in range(m)])

    def gradient(self, x):
        J = self.jacobian(x)
        r = self.mpmath.matrix(self.F(x))
        return 2 * (J.T * r)

    def hessian(self, x):
        hs = self._steps(x, self.dps // 5)
        n = len(x)
        H = self.mpmath.matrix(n, n)
        for j, h in enumerate(hs):
            xp, xm = list(x), list(x)
            xp[j] += h
            xm[j] -= h
            col = (self.gradient(xp) - self.gradient(xm)) / (2 * h)
            for i in range(n):
                H[i, j] = col[i]
        return (H + H.T) / 2

    def pinv(self, H):
        """The SVD pseudo-inverse of H (singular values below 10^{−dps/3}·σ_max dropped) as a
        function g ↦ H⁺g, and the rank kept."""
        mp = self.mpmath
        U, S, V = mp.svd_r(H)
        S = [S[i] for i in range(S.rows)]
        cut = mp.mpf(10) ** (-(self.dps // 3)) * max(S)
        inv = [1 / s if s > cut else 0 for s in S]

        def solve(g):
            y = U.T * g
            return V.T * mp.matrix([y[i] * inv[i] for i in range(len(S))])

        return solve, sum(1 for s in S if s > cut)

    def newton(self, x, max_iter=60, max_hessians=6, H=None):
        """(x, f, |∇f|, iterations, converged, rank, H): Newton's method on ∇f = 0 with step
        halving on f. The Hessian is kept while the steps shrink by 10× or more per iteration
        (each Hessian costs 2n gradients) and formed anew otherwise, at most `max_hessians`
        times; converged when the relative step is below 10^{−0.4·dps}."""
        mp = self.mpmath
        x = [mp.mpf(v) for v in x]
        fx = self.f(x)
        tol = mp.mpf(10) ** (-int(0.4 * self.dps))
        if H is None:
            H = self.hessian(x)
        solve, rank = self.pinv(H)
        hessians, previous = 1, None
        for it in range(1, max_iter + 1):
            g = self.gradient(x)
            d = solve(-g)
            step = 1
            for _ in range(40):
                xn = [a + step * d[i] for i, a in enumerate(x)]
                fn = self.f(xn)
                if fn <= fx:
                    break
                step /= 2
            else:
                return x, fx, mp.norm(g), it, False, rank, H
            size = max(abs(step * d[i]) / max(1, abs(x[i])) for i in range(len(x)))
            x, fx = xn, fn
            if size <= tol:
                return x, fx, mp.norm(self.gradient(x)), it, True, rank, H
            slow = step < 1 or (previous is not None and size > previous / 10)
            if slow and hessians < max_hessians:
                H = self.hessian(x)
                solve, rank = self.pinv(H)
                hessians += 1
            previous = size
        return x, fx, mp.norm(self.gradient(x)), max_iter, False, rank, H

    def hessian_spectrum(self, H):
        mp = self.mpmath
        ev = mp.eigsy(H, eigvals_only=True)
        ev = sorted(ev[i] for i in range(ev.rows))
        return ev[0], ev[-1]


def _s(v, digits=DIGITS_OUT):
    import mpmath

    return mpmath.nstr(v, digits, min_fixed=-1, max_fixed=-1) if v != 0 else "0"


def _paper_agreement(ref, spec):
    """Whether `ref` equals the paper's value: its closed form to 30 digits, or its printed
    value to the significant digits printed (truncated or rounded, as the paper prints
    'd.ddddd...' values)."""
    import mpmath

    paper, digits = spec.f_star, spec.f_star_digits
    if paper is None:
        return None
    if paper == 0:
        return ref == 0
    if spec.f_star_exact is not None:
        p, q = spec.f_star_exact.split("/")
        exact = mpmath.mpf(p) / mpmath.mpf(q)
        return bool(abs(ref - exact) <= mpmath.mpf(10) ** -30 * abs(exact))
    e = mpmath.floor(mpmath.log10(abs(ref))) - (digits - 1)
    scaled = ref / mpmath.mpf(10) ** e
    p = mpmath.mpf(repr(paper)) / mpmath.mpf(10) ** e
    return bool(abs(mpmath.floor(scaled) - p) < 0.5 or abs(mpmath.nint(scaled) - p) < 0.5)


def reference(spec, dps=60, num_random=24, log=print):
    import mpmath

    t0 = time.perf_counter()
    ends, num_starts = _float64_search(spec, num_random)
    groups = _groups(ends)
    log(f"  {spec.name}: {len(ends)} end points from {num_starts} starts, "
        f"{len(groups)} distinct values: " + ", ".join(f"{g[0]:.6g}×{g[3]}" for g in groups[:6]))
    mpmath.mp.dps = dps
    hp = _MP(spec, dps)
    check_dps = dps + dps // 3
    lo = _MP(spec, check_dps)
    result = {
        "number": spec.number, "name": spec.name, "title": spec.title, "n": spec.n, "m": spec.m,
        "x0": spec.x0.tolist(), "paper_f_star": spec.f_star,
        "paper_f_star_digits": spec.f_star_digits, "paper_other_values": list(spec.other_values),
        "paper_reference": spec.reference, "num_starts": num_starts,
        "num_float64_end_points": len(ends),
        "float64_best": groups[0][0] if groups else None,
    }
    exact = None
    if spec.x_star is not None and spec.f_star == 0:
        xs = [mpmath.mpf(v) for v in spec.x_star]
        fx = hp.f(xs)
        if fx <= mpmath.mpf(10) ** (-dps):
            exact = (xs, fx)
    minima = []
    if exact is not None:
        xs, fx = exact
        minima.append({"value": mpmath.mpf(0), "f_raw": fx, "x": xs,
                       "method": "exact minimiser (F(x*) = 0 in mpmath)", "converged": True,
                       "count": None,
                       "gradient_norm": "0", "rank": None, "digits_stable": None})
    for k, (f64, x, method, count) in enumerate(groups[:4]):
        lowest = k == 0 and exact is None
        try:  # the other local minima: a shorter refinement, and no check at higher precision
            x_hp, f_hp, g_hp, iters, conv, rank, H_hp = hp.newton(
                x.tolist(), 60 if lowest else 12, 6 if lowest else 2)
        except (ZeroDivisionError, ValueError, OverflowError):
            conv = False
        if not conv:
            minima.append({"value": mpmath.mpf(f64), "x": [mpmath.mpf(v) for v in x],
                           "method": f"float64 end point ({method}); Newton did not converge "
                           "(a limit at infinity or a singular Hessian)",
                           "converged": False, "count": count, "gradient_norm": None,
                           "rank": None, "digits_stable": None})
            continue
        mpmath.mp.dps = check_dps
        conv_lo = False
        if lowest:
            try:
                _, f_lo, _, _, conv_lo, _, _ = lo.newton(x_hp, H=H_hp)
            except (ZeroDivisionError, ValueError, OverflowError):
                pass
        mpmath.mp.dps = dps
        stable = None
        if conv_lo:
            diff = abs(f_hp - f_lo)
            stable = (dps if diff == 0 else
                      int(min(dps, -mpmath.log10(diff / max(abs(f_hp), mpmath.mpf(10) ** -dps)))))
        f_raw = f_hp
        if abs(f_hp) <= mpmath.mpf(10) ** (-(dps // 2)) and spec.f_star == 0:  # a zero of F
            f_hp, stable = mpmath.mpf(0), None
        close = mpmath.mpf(10) ** (-(dps // 3)) * max(1, abs(f_hp))
        duplicate = any(abs(mm["value"] - f_hp) <= close for mm in minima)
        if duplicate:
            continue
        minima.append({"value": f_hp, "f_raw": f_raw, "x": x_hp, "H": H_hp,
                       "method": f"Newton in mpmath at {dps} digits "
                       f"({iters} iterations) from the float64 end point ({method})",
                       "converged": True, "count": count, "gradient_norm": _s(g_hp, 5),
                       "rank": rank, "digits_stable": stable})
    finite = [mm for mm in minima if mm["converged"]]
    if not finite:
        raise RuntimeError(f"{spec.name}: no refined minimum")
    best = min(finite, key=lambda mm: mm["value"])
    for mm in finite:  # stationary points Newton found: minima where the Hessian is ≥ 0
        if mm is not best and "H" in mm:
            mm["eig_min"], top = hp.hessian_spectrum(mm["H"])
            mm["is_minimum"] = bool(mm["eig_min"] >= -mpmath.mpf(10) ** (-(dps // 4)) * abs(top))
    lam_min, lam_max = hp.hessian_spectrum(best["H"] if "H" in best else hp.hessian(best["x"]))
    ref = best["value"]
    result.update({
        "f_star": _s(ref), "f_star_float": float(ref), "is_zero": bool(ref == 0),
        "x_star": [_s(v, 30) for v in best["x"]], "method": best["method"],
        "f_at_x_star": _s(best["f_raw"], 5),
        "gradient_norm": best["gradient_norm"], "hessian_rank": best["rank"],
        "hessian_eig_min": _s(lam_min, 5), "hessian_eig_max": _s(lam_max, 5),
        "digits_stable": best["digits_stable"],
        "paper_agreement": _paper_agreement(ref, spec),
        "local_minima": [{
            "value": _s(mm["value"]), "value_float": float(mm["value"]),
            "x": [_s(v, 20) for v in mm["x"]], "refined": mm["converged"],
            "hessian_eig_min": _s(mm["eig_min"], 5) if "eig_min" in mm else None,
            "is_minimum": mm.get("is_minimum"),
            "found_from_starts": mm["count"], "method": mm["method"]}
            for mm in sorted(minima, key=lambda mm: mm["value"]) if mm is not best],
        "seconds": round(time.perf_counter() - t0, 1),
    })
    # values the paper states that the search did not reach (e.g. limits at infinity)
    result["paper_other_values_found"] = [
        any(abs(mm["value_float"] - v) <= 1e-5 * abs(v) for mm in result["local_minima"])
        for v in spec.other_values]
    log(f"    f* = {mpmath.nstr(ref, 20)} (paper {spec.f_star}, agreement "
        f"{result['paper_agreement']}), eig(H) in [{result['hessian_eig_min']}, "
        f"{result['hessian_eig_max']}], stable digits {best['digits_stable']}, "
        f"{result['seconds']} s")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=None, help="comma-separated names (default: all 35)")
    ap.add_argument("--dps", type=int, default=60, help="mpmath working digits")
    ap.add_argument("--starts", type=int, default=24, help="random starts per problem")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import mpmath

    from flowlab import mgh

    names = list(mgh.PROBLEMS) if args.problems is None else args.problems.split(",")
    out_path = Path(args.out)
    old = json.loads(out_path.read_text()) if out_path.exists() else {}
    problems = {p["name"]: p for p in old.get("problems", [])}
    for name in names:
        spec = mgh.PROBLEMS[name]
        print(f"[{spec.number}] {spec.title} (n = {spec.n}, m = {spec.m})", flush=True)
        problems[name] = reference(spec, args.dps, args.starts)
    order = {name: i for i, name in enumerate(mgh.PROBLEMS)}
    data = {
        "description": "High-precision reference minima of the Moré–Garbow–Hillstrom problems "
                       "(ACM TOMS 7(1), 1981), flowlab.mgh; written by "
                       "benchmarks/mgh_reference.py",
        "command": "python benchmarks/mgh_reference.py " + " ".join(argv if argv is not None
                                                                    else sys.argv[1:]),
        "dps": args.dps, "random_starts": args.starts, "mpmath": mpmath.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "problems": sorted(problems.values(), key=lambda p: order.get(p["name"], 99)),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(data, indent=1) + "\n")
    disagree = [p["name"] for p in data["problems"] if p["paper_agreement"] is False]
    print(f"wrote {out_path}; {len(data['problems'])} problems; paper disagreements: "
          f"{disagree or 'none'}")


if __name__ == "__main__":
    main()
