"""Tolerances derived from floating-point arithmetic, for tests that compare computed values.

The model (first order, as in Higham, *Accuracy and Stability of Numerical Algorithms*, §3):
every floating-point operation returns the exact result of its rounded inputs times
(1 + d), |d| <= eps, where eps is the machine epsilon of the dtype (twice the unit roundoff:
the factor 2 also covers libm's exp/log/tanh, which are within 1 ulp, not 1/2). A value
that took ``n`` such roundings (a dot product or sum of k terms counts k; exp, log, a
division, a subtraction one each) out of intermediates of magnitude at most ``m`` is within
``n * eps * m`` of the exact value; two implementations of the same formula (PyTorch vs ONNX
Runtime, a padded batch vs a lone row: other summation orders) are within twice that.

That is a worst-case bound: typical errors are ~sqrt(n) smaller, so a test inside it does
not fail from rounding on any IEEE-754 machine, while a wrong formula, a leaked mask or a
missing term still misses it by orders of magnitude. Tests state n and m next to the call.
"""
from __future__ import annotations

EPS32 = 2.0 ** -23  # ~1.19e-7 == torch.finfo(torch.float32).eps == np.finfo(np.float32).eps
EPS64 = 2.0 ** -52  # ~2.22e-16
EPS16 = 2.0 ** -10  # ~9.8e-4, float16 storage


def rounding_bound(n_ops: float, magnitude: float, eps: float = EPS32) -> float:
    """Worst-case absolute error of a value computed with ``n_ops`` roundings from
    intermediates of magnitude at most ``magnitude`` (see the module docstring)."""
    return float(n_ops) * eps * float(magnitude)


def two_paths_bound(n_ops: float, magnitude: float, eps: float = EPS32) -> float:
    """Worst-case difference of two evaluations of the same formula in other orders: each is
    within :func:`rounding_bound` of the exact value."""
    return 2.0 * rounding_bound(n_ops, magnitude, eps)


def network_bound(depth: int, width: int, magnitude: float, eps: float = EPS32) -> float:
    """Worst-case difference of two evaluations of a small network on the same values (a
    padded batch vs a lone row, other kernels): ``depth`` sequential layers, each a dot product
    of at most ``width`` terms plus at most 4 element-wise roundings (bias, normalisation,
    activation, residual), so n = depth * (width + 4). ``magnitude``: the largest |value| of
    the compared output; the tiny test networks are normalised or close to isometric (random
    init), so an error made inside reaches the output with a gain of about 1."""
    return two_paths_bound(depth * (width + 4), magnitude, eps)
