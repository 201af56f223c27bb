"""The README's Python example: adapted vs standard flow on one small fit."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.random as jr  # noqa: E402

import flowlab as fl  # noqa: E402

data = fl.smooth_regression(jr.key(0), num_points=32, in_size=2)  # N = 32, Q = 1
net = fl.MLP(2, 1, hidden=[64, 64], activation="tanh", key=jr.key(1))
problem = fl.LeastSquaresProblem(net, data)  # κ = 1/N, the paper's normalisation
print(f"K = {problem.num_params}, QN = {problem.num_outputs}, kappa = {problem.kappa}")

eps = 1e-10  # stop at C <= eps * C(0)
T = fl.theory.stopping_time(1.0, eps, problem.kappa)  # a priori: ln(1/eps) / (2 kappa)
adapted = fl.simulate(problem, fl.AdaptedFlow(), t1=1.2 * T, cost_target_relative=eps)
print(f"adapted:  stopped by {adapted.stop_reason} at s = {float(adapted.t_final):.3f} "
      f"(predicted T_eps = {T:.3f}), {int(adapted.num_steps)} steps")
report = fl.theory.compare(adapted, epsilon_relative=eps)
print(f"          rate {report['measured_rate']:.6f} vs 2*kappa = {report['predicted_rate']:.6f}, "
      f"max |X - X_exact| = {report['max_output_error']:.1e}")

standard = fl.simulate(problem, fl.GradientFlow(), t1=1.2 * T, max_steps=200_000)
print(f"standard: C(s)/C(0) = {float(standard.cost[-1] / standard.cost0):.2e} at s = "
      f"{float(standard.ts[-1]):.3f}, {int(standard.num_steps)} steps, "
      f"lambda_min(Theta) = {float(standard.sigma_min[0]) ** 2:.1e}")
