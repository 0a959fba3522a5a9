"""Exact arithmetic for training: the same bits on every CPU, GPU, thread count and batch.

Floating-point results differ between machines because *reductions* (matrix products, sums)
add in an order that depends on the kernel: the vector width (AVX2 or AVX-512), the blocking,
the thread split, the position of a model inside a batch. Elementwise IEEE-754 operations
(``+ - * /``, ``round``, ``max``, comparisons) are correctly rounded and give the same bits
everywhere. So a computation is reproducible everywhere when

1. **every reduction is exact**: its inputs are integers (here: values on a dyadic grid,
   stored as integer-valued floats, "units") small enough that every partial sum is an integer
   the float type holds exactly (|s| <= 2^53 in float64, 2^24 in float32), so the order of
   additions cannot matter. For a product of units bounded by 2^a and 2^b over an inner
   dimension n this needs ``n 2^(a + b) <= 2^bits`` (:func:`check_exact_product`, checked when
   a task is built). A float32 GEMM of such integers is as exact as a float64 one, at twice
   the speed, provided the library computes it in IEEE float32 (no TF32 or bfloat16 inputs:
   :func:`check_float32_matmul_exact`);
2. **every other operation is elementwise**, each a separate tensor operation (no fused
   multiply-add whose use would depend on the kernel), and transcendental functions are
   composed from basic operations (:func:`exp_nonpositive`) instead of a library's vectorised
   ``exp``, whose last bit differs between instruction sets.

:func:`to_units` puts a tensor on the grid 2^-frac after clamping it to [-limit, limit];
the clamp is part of the task's definition (it keeps the bound in 1. true for any input).
The price is a quantisation of each reduction's inputs. A grid may also be chosen per model
and step from the data (block floating point: :func:`floor_log2` of a tensor's largest |value|
picks a power-of-two scale, :func:`pow2` applies it exactly), so that gradients of any
magnitude keep their leading bits within a fixed budget.

Every elementwise operation is a single torch operation on tensors or on constants exactly
representable in the tensor's dtype (:func:`representable`): no ``alpha=``, ``addcmul`` or
``lerp``, whose ``a * b + c`` a compiler may fuse into one FMA on one instruction set and not
on another. (:mod:`protocol.tasks.mlp_kernels` runs the same operations in the same order in
one compiled loop, compiled without ``fastmath``, so that no such contraction can occur there.)
"""

from __future__ import annotations

import math
from functools import cache

import torch

from protocol.errors import InvalidParameterError

__all__ = [
    "EXACT_BITS",
    "EXACT_BITS_FLOAT32",
    "check_exact_product",
    "check_float32_matmul_exact",
    "exp_nonpositive",
    "exp_terms",
    "floor_log2",
    "pow2",
    "representable",
    "to_units",
    "unit_bits",
]

EXACT_BITS = 53  # float64 holds every integer of magnitude <= 2^53 exactly
EXACT_BITS_FLOAT32 = 24  # float32: every integer of magnitude <= 2^24


def unit_bits(frac_bits: int, limit: float) -> float:
    """log2 of the largest |units| of a value clamped to ``limit`` on the grid 2^-frac_bits."""
    return frac_bits + math.log2(limit)


def check_exact_product(
    name: str, bits_a: float, bits_b: float, inner: int, bits: int = EXACT_BITS
) -> None:
    """Refuse a configuration whose product could round: need inner * 2^(a + b) <= 2^bits
    (``bits`` = 53 for float64 products, 24 for float32)."""
    need = bits_a + bits_b + math.log2(max(inner, 1))
    if need > bits:
        raise InvalidParameterError(
            f"{name}: an exact product needs {need:.1f} bits (> {bits}); "
            "use smaller layers or a coarser grid"
        )


def check_float32_matmul_exact(device: torch.device) -> None:
    """Refuse to run float32 exact products where torch would round their inputs: TF32 on
    CUDA or bfloat16/TF32 through oneDNN on CPU (``torch.set_float32_matmul_precision`` other
    than "highest", or the backends' ``fp32_precision`` set). Integers of more than 11 bits
    are not exact in TF32 (8 in bfloat16), so such a product would differ between devices."""
    settings = {"torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        settings["torch.backends.cuda.matmul.allow_tf32"] = str(
            torch.backends.cuda.matmul.allow_tf32
        )
        settings["torch.backends.cuda.matmul.fp32_precision"] = str(
            getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
        )
    else:
        matmul = getattr(torch.backends.mkldnn, "matmul", None)
        settings["torch.backends.mkldnn.matmul.fp32_precision"] = str(
            getattr(matmul, "fp32_precision", "none")
        )
    bad = {k: v for k, v in settings.items() if v not in ("highest", "False", "none", "ieee")}
    if bad:
        shown = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise InvalidParameterError(
            f"exact float32 products need IEEE float32 matrix products; found {shown} "
            '(call torch.set_float32_matmul_precision("highest"))'
        )


def representable(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``: a constant that every device multiplies or adds the
    same way (a float32 kernel may otherwise see a float64 scalar rounded or not)."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype).item())


def pow2(e: torch.Tensor) -> torch.Tensor:
    """Exactly 2^e as float32 for an integer tensor e in [-126, 127], built from the exponent
    bits (``torch.ldexp`` goes through ``pow``, whose last bit is not guaranteed)."""
    return torch.bitwise_left_shift((e + 127).to(torch.int32), 23).view(torch.float32)


def floor_log2(m: torch.Tensor) -> torch.Tensor:
    """floor(log2 m) (int32) of a float32 tensor of normal m > 0, read from the exponent bits;
    -127 for m = 0. Exact on every device."""
    return torch.bitwise_right_shift(m.contiguous().view(torch.int32), 23) - 127


def to_units(t: torch.Tensor, frac_bits: int, limit: float) -> torch.Tensor:
    """``round(clamp(t, -limit, limit) * 2^frac_bits)``: integer-valued, same dtype as t.

    Rounding is half to even (IEEE); scaling by a power of two is exact.
    """
    return torch.round(t.clamp(-limit, limit) * float(2**frac_bits))


_EXP_SQUARINGS = 8  # exp(t) = exp(t / 256) ^ 256
_EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(9))  # Taylor to degree 8


@cache
def exp_terms(dtype: torch.dtype) -> tuple[float, ...]:
    """The Taylor coefficients 1/j! (j = 0..8) of :func:`exp_nonpositive`, rounded to dtype."""
    return tuple(representable(c, dtype) for c in _EXP_TERMS)


def exp_nonpositive(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """exp(t) for t <= 0 from ``*`` and ``+`` only: the same bits on every device.

    t is clamped to [-64, 0]; u = t / 256 lies in [-1/4, 0], where the degree-8 Taylor
    polynomial (Horner, one tensor operation per step) has relative error < 0.25^9 / 9! < 1e-10;
    eight squarings give exp(t) = exp(u)^256 with relative error < 256 (1e-10 + 2^-52) < 3e-8
    in float64 (< 256 * 2^-23 = 3e-5 in float32). Accuracy is secondary here (it is part of the
    task's definition); identical bits are not. With ``out`` (same shape and dtype as t) the
    work is done in place: t is overwritten and the result written to ``out``.
    """
    if out is None:
        u, p = t.clamp(-64.0, 0.0), torch.empty_like(t)
    else:
        u, p = t.clamp_(-64.0, 0.0), out
    u.mul_(1.0 / 2**_EXP_SQUARINGS)
    terms = exp_terms(t.dtype)
    p.fill_(terms[-1])
    for coef in reversed(terms[:-1]):
        p.mul_(u)
        p.add_(coef)
    for _ in range(_EXP_SQUARINGS):
        p.mul_(p)
    return p
