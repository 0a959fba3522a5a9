"""Exact arithmetic for training: the same bits on every CPU, GPU, thread count and batch.

Floating-point results differ between machines because *reductions* (matrix products, sums)
add in an order that depends on the kernel: the vector width (AVX2 or AVX-512), the blocking,
the thread split, the position of a model inside a batch. Elementwise IEEE-754 operations
(``+ - * /``, ``round``, ``max``, comparisons) are correctly rounded and give the same bits
everywhere. So a computation is reproducible everywhere when

1. **every reduction is exact**: its inputs are integers (here: values on a dyadic grid,
   stored as integer-valued float64 "units") small enough that every partial sum is an integer
   below 2^53, so float64 represents it exactly and the order of additions cannot matter.
   For a product of units bounded by 2^a and 2^b over an inner dimension n this needs
   ``n 2^(a + b) <= 2^53`` (:func:`check_exact_product`, checked when a task is built);
2. **every other operation is elementwise**, each a separate tensor operation (no fused
   multiply-add whose use would depend on the kernel), and transcendental functions are
   composed from basic operations (:func:`exp_nonpositive`) instead of a library's vectorised
   ``exp``, whose last bit differs between instruction sets.

:func:`to_units` puts a tensor on the grid 2^-frac after clamping it to [-limit, limit];
the clamp is part of the task's definition (it keeps the bound in 1. true for any input).
The price is float64 arithmetic and a quantisation of each reduction's inputs (activations
to 2^-12, weights to 2^-24 in ``digits-mlp``: far below SGD's own noise).
"""

from __future__ import annotations

import math

import torch

from protocol.errors import InvalidParameterError

__all__ = ["EXACT_BITS", "check_exact_product", "exp_nonpositive", "to_units", "unit_bits"]

EXACT_BITS = 53  # float64 holds every integer of magnitude <= 2^53 exactly


def unit_bits(frac_bits: int, limit: float) -> float:
    """log2 of the largest |units| of a value clamped to ``limit`` on the grid 2^-frac_bits."""
    return frac_bits + math.log2(limit)


def check_exact_product(name: str, bits_a: float, bits_b: float, inner: int) -> None:
    """Refuse a configuration whose product could round: need inner * 2^(a + b) <= 2^53."""
    need = bits_a + bits_b + math.log2(max(inner, 1))
    if need > EXACT_BITS:
        raise InvalidParameterError(
            f"{name}: an exact product needs {need:.1f} bits (> {EXACT_BITS}); "
            "use smaller layers or a coarser grid"
        )


def to_units(t: torch.Tensor, frac_bits: int, limit: float) -> torch.Tensor:
    """``round(clamp(t, -limit, limit) * 2^frac_bits)``: integer-valued, same dtype as t.

    Rounding is half to even (IEEE); scaling by a power of two is exact.
    """
    return torch.round(t.clamp(-limit, limit) * float(2**frac_bits))


_EXP_SQUARINGS = 8  # exp(t) = exp(t / 256) ^ 256
_EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(9))  # Taylor to degree 8


def exp_nonpositive(t: torch.Tensor) -> torch.Tensor:
    """exp(t) for t <= 0 from ``*`` and ``+`` only: the same bits on every device.

    t is clamped to [-64, 0]; u = t / 256 lies in [-1/4, 0], where the degree-8 Taylor
    polynomial (Horner, one tensor operation per step) has relative error < 0.25^9 / 9! < 1e-10;
    eight squarings give exp(t) = exp(u)^256 with relative error < 256 (1e-10 + 2^-52) < 3e-8.
    Accuracy is secondary here (it is part of the task's definition); identical bits are not.
    """
    u = t.clamp(-64.0, 0.0) * (1.0 / 2**_EXP_SQUARINGS)
    p = torch.full_like(u, _EXP_TERMS[-1])
    for coef in reversed(_EXP_TERMS[:-1]):
        p = p * u
        p = p + coef
    for _ in range(_EXP_SQUARINGS):
        p = p * p
    return p
