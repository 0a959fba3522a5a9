"""numba kernels of :mod:`protocol.tasks.mlp_kernels` (imported on first use: numba takes
about 0.4 s to import). Every function is compiled without ``fastmath``: each ``+ - * /``,
``min``, ``max`` and ``np.rint`` is one correctly rounded float32 operation, never reassociated
or contracted into a fused multiply-add. Every constant arrives as float32 (a float64 literal
would promote the arithmetic to float64). The products go through BLAS (``np.dot``); their
inputs are integers whose sums stay below 2^24, so every summation order gives the same bits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit


def _jit(fn: Any) -> Any:
    """numba.njit (no fastmath, no GIL, no bounds checks, numpy's error model), cached on
    disk where numba finds a writable cache directory (beside this file, the user's cache or
    NUMBA_CACHE_DIR); compiled per process where none is writable (a read-only install without
    a home directory), instead of failing."""
    for cache in (True, False):
        try:
            return njit(
                cache=cache, nogil=True, fastmath=False, boundscheck=False, error_model="numpy"
            )(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            if not cache:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@_jit
def _quantise(src: Any, lim: Any, out_scale: Any, dst: Any) -> None:  # pragma: no cover
    """dst = rint(clamp(src, -lim, lim)) * out_scale (C-contiguous arrays of one shape)."""
    lo = -lim
    s, t = src.ravel(), dst.ravel()
    for j in range(s.size):
        t[j] = np.rint(min(max(s[j], lo), lim)) * out_scale


@_jit
def _update(
    g: Any, scale: Any, w: Any, v: Any, lin: Any, use_lin: bool, alive: Any, use_live: bool,
    lr_wd: Any, mom: Any, lim: Any, out_scale: Any, wu: Any,
) -> None:  # pragma: no cover  # fmt: skip
    """SGD with momentum and coupled weight decay, in _sgd's order: g = g scale + w lr_wd
    (+ lin) (x alive); v = v mom + g; w = w - v; then wu = rint(clamp(w)) * out_scale.
    The optional terms are passes of their own over g, so that no loop branches (a branch in
    the loop kept it from vectorising: 1.8x slower)."""
    lo = -lim
    gf, wf, vf, lf, uf = g.ravel(), w.ravel(), v.ravel(), lin.ravel(), wu.ravel()
    for j in range(gf.size):
        gg = gf[j] * scale
        gf[j] = gg + wf[j] * lr_wd
    if use_lin:
        for j in range(gf.size):
            gf[j] = gf[j] + lf[j]
    if use_live:
        for j in range(gf.size):
            gf[j] = gf[j] * alive
    for j in range(gf.size):
        vv = vf[j] * mom
        vv = vv + gf[j]
        vf[j] = vv
        ww = wf[j] - vv
        wf[j] = ww
        uf[j] = np.rint(min(max(ww, lo), lim)) * out_scale


@_jit
def _softmax_grad(
    logits: Any, b2u: Any, labels: Any, f: Any, terms: Any, du: Any, g2b: Any, m: Any, s: Any
) -> None:  # pragma: no cover
    """du (C, B) = rint((p - onehot) * 2^d_frac) from logit units (C, B) without their bias
    b2u (C,): scaled by a power of two, the maximum subtracted, the exp of
    :func:`protocol.tasks.exact.exp_nonpositive` (clamp to [-64, 0], / 256, degree-8 Horner,
    eight squarings), numerators rounded to 2^-e_frac and divided by their exact sum;
    g2b (C,) = du's sums over the batch. The batch is the innermost loop, so each statement
    is one vector operation."""
    c_n, b_n = logits.shape
    scale, e_scale, d_scale = f[5], f[6], f[7]
    lo, hi, zero = np.float32(-64.0), np.float32(0.0), np.float32(0.0)
    inv, minus_one = np.float32(1.0 / 256.0), np.float32(-1.0)
    tt = (terms[0], terms[1], terms[2], terms[3], terms[4], terms[5], terms[6], terms[7], terms[8])
    for c in range(c_n):
        bias = b2u[c]
        for b in range(b_n):
            logits[c, b] = logits[c, b] + bias
    for b in range(b_n):
        m[b] = logits[0, b] * scale
        s[b] = zero
    for c in range(1, c_n):
        for b in range(b_n):
            m[b] = max(m[b], logits[c, b] * scale)
    for c in range(c_n):
        for b in range(b_n):
            u = min(max(logits[c, b] * scale - m[b], lo), hi) * inv
            p = tt[8] * u  # Horner from the degree-8 term; constant trip counts unroll
            for j in range(7, 0, -1):
                p = p + tt[j]
                p = p * u
            p = p + tt[0]
            for _ in range(8):  # exp(u)^256
                p = p * p
            e = np.rint(p * e_scale)
            du[c, b] = e
            s[b] = s[b] + e
    for c in range(c_n):
        acc = zero
        for b in range(b_n):
            e = du[c, b] / s[b]
            e = e + (minus_one if labels[b] == c else zero)
            d = np.rint(e * d_scale)
            du[c, b] = d
            acc = acc + d
        g2b[c] = acc


@_jit
def _relu_grad_floor_log2(dz: Any, hu: Any) -> Any:  # pragma: no cover
    """dz = dz * min(hu, 1) (the ReLU's derivative as 0/1) in place; returns
    floor(log2(max |dz|)) as :func:`protocol.tasks.exact.floor_log2` reads it from the exponent
    bits (-127 for 0). The maximum is taken over the bit patterns of |dz| as integers (they
    order as the floats do), which vectorises where a float maximum would not."""
    one = np.float32(1.0)
    d, h = dz.ravel(), hu.ravel()
    for j in range(d.size):
        d[j] = d[j] * min(h[j], one)
    bits = d.view(np.int32)
    top = np.int32(0)
    mask = np.int32(0x7FFFFFFF)
    for j in range(bits.size):
        top = max(top, bits[j] & mask)
    return (top >> 23) - 127


@_jit
def sgd(
    w1m: Any, v1: Any, w2m: Any, v2: Any, b2m: Any, vb: Any,
    picks: Any, y: Any, xpool: Any,
    lin1: Any, lin2: Any, lin2b: Any, use_lin: bool, live: Any, use_live: bool,
    f: Any, dz_bits: int, e1: int, terms: Any,
) -> None:  # pragma: no cover  # fmt: skip
    """DigitsMLP._sgd for each model in turn (its working set, about 0.2 MB at the defaults,
    stays in cache), every step. Arrays as :func:`protocol.tasks.mlp_kernels.sgd` documents."""
    lim1, lim2, h_scale, h_top, z_to_h = f[0], f[1], f[2], f[3], f[4]
    mom, lr_wd, lr_b, c2, c2b = f[8], f[9], f[10], f[11], f[12]
    k_n, hdim, d = w1m.shape
    c_n = w2m.shape[1]
    steps, b_n = picks.shape[1], picks.shape[2]
    f32 = np.float32
    one, zero = f32(1.0), f32(0.0)
    xk = np.empty((b_n, d), dtype=f32)
    w1u, g1 = np.empty((hdim, d), dtype=f32), np.empty((hdim, d), dtype=f32)
    w2u, g2 = np.empty((c_n, hdim), dtype=f32), np.empty((c_n, hdim), dtype=f32)
    b2u, g2b = np.empty(c_n, dtype=f32), np.empty(c_n, dtype=f32)
    hu, dz = np.empty((hdim, b_n), dtype=f32), np.empty((hdim, b_n), dtype=f32)
    logits, du = np.empty((c_n, b_n), dtype=f32), np.empty((c_n, b_n), dtype=f32)
    m_s, s_s = np.empty(b_n, dtype=f32), np.empty(b_n, dtype=f32)
    labels = np.empty(b_n, dtype=np.int64)
    hu_f, dz_f = hu.ravel(), dz.ravel()
    for k in range(k_n):
        alive = live[k]
        _quantise(w1m[k], lim1, one, w1u)
        _quantise(w2m[k], lim2, one, w2u)
        _quantise(b2m[k], lim2, h_scale, b2u)
        for t in range(steps):
            for b in range(b_n):
                row = picks[k, t, b]
                labels[b] = y[row]
                for j in range(d):
                    xk[b, j] = xpool[row, j]
            np.dot(w1u, xk.T, hu)  # (H, B) hidden pre-activations, in units
            for j in range(hu_f.size):
                hu_f[j] = np.rint(min(max(hu_f[j], zero), h_top) * z_to_h)
            np.dot(w2u, hu, logits)
            _softmax_grad(logits, b2u, labels, f, terms, du, g2b, m_s, s_s)
            np.dot(du, hu.T, g2)  # dW2 (C, H)
            np.dot(w2u.T, du, dz)  # dH (H, B)
            # block floating point: |dz| / 2^shift < 2^dz_bits
            shift = max(_relu_grad_floor_log2(dz, hu) + 1 - dz_bits, 0)
            down = f32(math.ldexp(1.0, -shift))
            for j in range(dz_f.size):
                dz_f[j] = np.rint(dz_f[j] * down)
            np.dot(dz, xk, g1)  # dW1 (H, D)
            s1 = f32(math.ldexp(1.0, shift + e1)) * lr_b
            _update(g1, s1, w1m[k], v1[k], lin1[k], use_lin, alive, use_live, lr_wd, mom,
                    lim1, one, w1u)  # fmt: skip
            _update(g2, c2, w2m[k], v2[k], lin2[k], use_lin, alive, use_live, lr_wd, mom,
                    lim2, one, w2u)  # fmt: skip
            _update(g2b, c2b, b2m[k], vb[k], lin2b[k], use_lin, alive, use_live, lr_wd, mom,
                    lim2, h_scale, b2u)  # fmt: skip
