"""Subsets, rho-correlated pairs and training seeds, derived portably from a challenge seed.

Both parties must derive *exactly* the same masks and seeds from a 32-byte challenge seed, in any
language, for years. numpy's ``Generator`` streams are not a stable wire format, so everything
here comes from one documented keyed stream (also written down in ``docs/wire-format.md``):

**Stream.** ``stream(seed, domain, index)`` is the RFC 8439 ChaCha20 keystream (block counter
starting at 0, 96-bit nonce of zeros) under the key ::

    key = SHA-256( b"VDA/v1/stream" || 0x00 || ascii(domain) || 0x00 || seed || u64le(index) )

Each (domain, index) gets its own key, so the zero nonce is never reused, and any row can be
derived on its own (the Verifier re-derives only its spot-checks). The keystream is read as
consecutive little-endian ``uint32`` words ``w[0], w[1], ...``.

**Bernoulli draws.** A probability q in [0, 1] becomes the integer threshold
``T(q) = floor(q * 2**32)`` (exact in IEEE-754 double arithmetic), and a word w gives the bit
``w < T(q)``. So p is used at a resolution of 2**-32; q = 1 gives T = 2**32, always 1.

**Independent masks** (domain ``"mask"`` or any caller-chosen domain, row ``i``): bit ``j`` of
row ``i`` is ``w[j] < T(p)`` from ``stream(seed, domain, i)``.

**rho-correlated pairs** (domain ``"pair"``, global pair index ``g``): from the words of
``stream(seed, "pair", g)``, ::

    x_j     = w[j]      < T(p)          j = 0 .. N-1
    keep_j  = w[N + j]  < T(rho)
    fresh_j = w[2N + j] < T(p)
    x'_j    = x_j if keep_j else fresh_j

so x ~ B_p and x' ~ B_p with each coordinate kept with probability rho
(docs/protocol.md#noise-stability).

**Training seeds** (domain ``"train-seed"``, subset index ``e``): the first 8 keystream bytes
of ``stream(seed, "train-seed", e)`` read as a little-endian ``uint64``.

**Challenge layout.** A :class:`ChallengeDesign` has L noise levels ``rhos`` and n pairs per
level. Pair ``g = l * n + j`` is the j-th pair of level l; its members are the subsets
``e = 2g`` (x) and ``e = 2g + 1`` (x'). So E has ``2 L n`` entries. Entries are *not* merged
when two masks coincide (possible for tiny N): each carries its own training seed, and merging
would correlate the seed noise of a pair and bias h(rho).

**Shared-base layout** (:class:`SharedBaseDesign`, domain ``"crn-base"``, base index ``j``):
common random numbers across the levels. From the words of ``stream(seed, "crn-base", j)``, ::

    x_j       = w[j]      < T(p)
    keep_l_j  = w[N + j]  < T(rho_l)      (one uniform per coordinate, nested across levels)
    fresh_j   = w[2N + j] < T(p)
    x'_l_j    = x_j if keep_l_j else fresh_j

so each (x, x'_l) is rho_l-correlated, and the x'_l of one base differ from each other only
where their keep bits differ. Base ``j`` occupies subsets ``e = (1 + L) j`` (x) and
``(1 + L) j + 1 + l`` (x'_l): |E| = (1 + L) n, 4 trainings per base for 3 levels instead of 6.
Every subset has its own training seed (``"train-seed"`` at index e), as above.

**Packing.** Masks travel and are stored as bits: ``numpy.packbits(mask, axis=1,
bitorder="little")``: bit j of a row is bit ``j % 8`` (least significant first) of byte ``j // 8``;
trailing pad bits are zero. A 10^5 x 10^4 challenge is 125 MB packed.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from protocol.checks import as_mask_matrix, check_probability, check_rho
from protocol.errors import InvalidParameterError, ShapeError

__all__ = [
    "ChallengeDesign",
    "Design",
    "LAYOUTS",
    "SAUNSHI_LEVELS",
    "SEED_BYTES",
    "SharedBaseDesign",
    "bernoulli_threshold",
    "correlated_pair",
    "keystream",
    "make_design",
    "pack_masks",
    "sample_masks",
    "seed_from_text",
    "stream_words",
    "subsets_per_base",
    "training_seeds",
    "unpack_masks",
]

SEED_BYTES = 32
_STREAM_TAG = b"VDA/v1/stream\x00"
_ZERO_NONCE = bytes(16)  # cryptography's ChaCha20 nonce = 4-byte LE counter (0) + 12-byte nonce


def _check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise InvalidParameterError(f"a challenge seed must be {SEED_BYTES} bytes")
    return bytes(seed)


def _check_domain(domain: str) -> bytes:
    try:
        raw = domain.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidParameterError(f"stream domain must be ASCII; got {domain!r}") from None
    if not raw or b"\x00" in raw:
        raise InvalidParameterError("stream domain must be non-empty and contain no NUL byte")
    return raw


def seed_from_text(text: str) -> bytes:
    """A challenge seed from the command line: 64 hex digits, or an integer in [0, 2**256)
    encoded little-endian in 32 bytes."""
    text = text.strip()
    if len(text) == 2 * SEED_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameterError(
            f"a seed must be a non-negative integer or {2 * SEED_BYTES} hex digits; got {text!r}"
        ) from None
    if not 0 <= value < 2 ** (8 * SEED_BYTES):
        raise InvalidParameterError(f"a seed must be in [0, 2**{8 * SEED_BYTES}); got {text!r}")
    return value.to_bytes(SEED_BYTES, "little")


def keystream(seed: bytes, domain: str, index: int, nbytes: int) -> bytes:
    """Return the first ``nbytes`` bytes of ``stream(seed, domain, index)`` (see module doc)."""
    seed = _check_seed(seed)
    if not 0 <= index < 2**64:
        raise InvalidParameterError(f"stream index must be in [0, 2**64); got {index}")
    if nbytes < 0 or nbytes > 64 * 2**32:
        raise InvalidParameterError(f"cannot draw {nbytes} bytes from one stream")
    key = hashlib.sha256(
        _STREAM_TAG + _check_domain(domain) + b"\x00" + seed + struct.pack("<Q", index)
    ).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    return encryptor.update(bytes(nbytes))


def stream_words(seed: bytes, domain: str, index: int, count: int) -> NDArray[np.uint32]:
    """The first ``count`` little-endian uint32 words of ``stream(seed, domain, index)``."""
    return np.frombuffer(keystream(seed, domain, index, 4 * count), dtype="<u4").astype(np.uint32)


def bernoulli_threshold(q: float) -> int:
    """T(q) = floor(q * 2**32): a word w gives a 1 with probability T/2**32 iff ``w < T``."""
    q = check_rho("probability", q)
    return int(math.floor(q * 2.0**32))


def _bits(words: NDArray[np.uint32], threshold: int) -> NDArray[np.bool_]:
    return words.astype(np.uint64) < np.uint64(threshold)


def sample_masks(
    seed: bytes, n_train: int, p: float, rows: range | NDArray[np.int64], domain: str = "mask"
) -> NDArray[np.bool_]:
    """Independent masks x ~ B_p, one per row index in ``rows``; shape (len(rows), n_train)."""
    p = check_probability("p", p)
    _check_n_train(n_train)
    t = bernoulli_threshold(p)
    out = np.empty((len(rows), n_train), dtype=np.bool_)
    for k, i in enumerate(rows):
        out[k] = _bits(stream_words(seed, domain, int(i), n_train), t)
    return out


def correlated_pair(
    seed: bytes, pair_index: int, n_train: int, p: float, rho: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """The pair (x, x') number ``pair_index``: x ~ B_p and x' rho-correlated to it, each (N,)."""
    p = check_probability("p", p)
    rho = check_rho("rho", rho)
    _check_n_train(n_train)
    w = stream_words(seed, "pair", pair_index, 3 * n_train)
    tp = bernoulli_threshold(p)
    x = _bits(w[:n_train], tp)
    keep = _bits(w[n_train : 2 * n_train], bernoulli_threshold(rho))
    fresh = _bits(w[2 * n_train :], tp)
    return x, np.where(keep, x, fresh)


def training_seeds(
    seed: bytes, indices: range | NDArray[np.int64], domain: str = "train-seed"
) -> NDArray[np.uint64]:
    """Per-subset training seeds (uint64), one per index (see module doc)."""
    return np.array(
        [struct.unpack("<Q", keystream(seed, domain, int(i), 8))[0] for i in indices],
        dtype=np.uint64,
    )


def _check_n_train(n_train: int) -> None:
    if not isinstance(n_train, int | np.integer) or n_train < 1:
        raise InvalidParameterError(
            f"N (training-set size) must be a positive integer; got {n_train!r}"
        )


def _check_design(seed: bytes, n_train: int, p: float, rhos: tuple[float, ...]) -> None:
    """What every design checks: the seed, N, p and at least one valid noise level."""
    _check_seed(seed)
    _check_n_train(n_train)
    check_probability("p", p)
    if len(rhos) == 0:
        raise InvalidParameterError("a design needs at least one noise level")
    for r in rhos:
        check_rho("rho", r)


@dataclass(frozen=True)
class ChallengeDesign:
    """The challenge subsets E of the residual estimator, derived from a 32-byte seed.

    ``rhos`` are the noise levels (the paper's are ``(0, rho0, 2 rho0)``), ``pairs_per_level`` is
    n. Subset ``e`` belongs to pair ``e // 2`` at level ``(e // 2) // n``; see the module doc for
    the exact derivation. ``len(design)`` is |E| = 2 L n.
    """

    seed: bytes
    n_train: int
    p: float
    rhos: tuple[float, ...]
    pairs_per_level: int

    layout: ClassVar[str] = "pairs"

    def __post_init__(self) -> None:
        _check_design(self.seed, self.n_train, self.p, self.rhos)
        if not isinstance(self.pairs_per_level, int) or self.pairs_per_level < 1:
            raise InvalidParameterError(
                f"pairs per level must be a positive integer; got {self.pairs_per_level!r}"
            )

    @classmethod
    def saunshi(
        cls, seed: bytes, n_train: int, p: float, rho0: float, pairs_per_level: int
    ) -> ChallengeDesign:
        """The paper's design: levels (0, rho0, 2 rho0); requires 0 < rho0 <= 1/2."""
        rho0 = check_rho("rho0", rho0)
        if not 0.0 < rho0 <= 0.5:
            raise InvalidParameterError(f"rho0 must lie in (0, 1/2]; got {rho0!r}")
        return cls(seed, n_train, p, (0.0, rho0, 2.0 * rho0), pairs_per_level)

    def __len__(self) -> int:
        return 2 * len(self.rhos) * self.pairs_per_level

    @property
    def subsets_per_base(self) -> int:
        """The subsets of one pair-sum group (base j: its pair at every level), 2 L."""
        return 2 * len(self.rhos)

    @property
    def n_pairs(self) -> int:
        """Total number of pairs, L * n."""
        return len(self.rhos) * self.pairs_per_level

    def level_of_pair(self) -> NDArray[np.int64]:
        """Level index of every pair, shape (L n,)."""
        return np.repeat(np.arange(len(self.rhos), dtype=np.int64), self.pairs_per_level)

    def masks(self, start: int = 0, stop: int | None = None) -> NDArray[np.bool_]:
        """Masks of subsets ``start .. stop-1`` of E, shape (stop - start, N), bool."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise InvalidParameterError(f"subset range [{start}, {stop}) outside [0, {len(self)})")
        out = np.empty((stop - start, self.n_train), dtype=np.bool_)
        g = start // 2
        while 2 * g < stop:
            x, xp = correlated_pair(
                self.seed, g, self.n_train, self.p, self.rhos[g // self.pairs_per_level]
            )
            for member, row in ((0, x), (1, xp)):
                e = 2 * g + member
                if start <= e < stop:
                    out[e - start] = row
            g += 1
        return out

    def seeds(self, start: int = 0, stop: int | None = None) -> NDArray[np.uint64]:
        """Training seeds of subsets ``start .. stop-1``, uint64."""
        return _seeds(self.seed, len(self), start, stop)

    def chunks(self, size: int) -> Iterator[tuple[int, int]]:
        """Yield ``(start, stop)`` ranges of at most ``size`` subsets, aligned to pairs."""
        return _aligned_chunks(len(self), size, 2)


@dataclass(frozen=True)
class SharedBaseDesign:
    """Common-random-numbers challenge: one base x and its L correlated copies per base.

    ``bases`` is n; ``len(design)`` is |E| = (1 + L) n (layout in the module doc). The
    estimators use h-hat(rho_l) = mean_j r(x_j) r(x'_l_j), unbiased level by level as in the
    pair design; the levels' errors are now positively correlated, so sum_l a_l h-hat(rho_l)
    (whose weights sum to 1) has a much smaller variance (``docs/estimators.md``).
    """

    seed: bytes
    n_train: int
    p: float
    rhos: tuple[float, ...]
    bases: int

    layout: ClassVar[str] = "shared-base"

    def __post_init__(self) -> None:
        _check_design(self.seed, self.n_train, self.p, self.rhos)
        if not isinstance(self.bases, int) or self.bases < 1:
            raise InvalidParameterError(f"bases must be a positive integer; got {self.bases!r}")

    @property
    def pairs_per_level(self) -> int:
        """n: one (x, x'_l) pair per base at every level."""
        return self.bases

    def __len__(self) -> int:
        return (1 + len(self.rhos)) * self.bases

    @property
    def subsets_per_base(self) -> int:
        """The subsets of one base (x_j and its L copies), 1 + L."""
        return 1 + len(self.rhos)

    def base(self, j: int) -> NDArray[np.bool_]:
        """Masks of base ``j``: (1 + L, N), x first, then x'_l in level order."""
        n_train, tp = self.n_train, bernoulli_threshold(self.p)
        w = stream_words(self.seed, "crn-base", j, 3 * n_train)
        x = _bits(w[:n_train], tp)
        fresh = _bits(w[2 * n_train :], tp)
        rows = [x]
        for rho in self.rhos:
            keep = _bits(w[n_train : 2 * n_train], bernoulli_threshold(rho))
            rows.append(np.where(keep, x, fresh))
        return np.stack(rows)

    def masks(self, start: int = 0, stop: int | None = None) -> NDArray[np.bool_]:
        """Masks of subsets ``start .. stop-1``, shape (stop - start, N), bool."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise InvalidParameterError(f"subset range [{start}, {stop}) outside [0, {len(self)})")
        group = 1 + len(self.rhos)
        out = np.empty((stop - start, self.n_train), dtype=np.bool_)
        for j in range(start // group, (stop + group - 1) // group):
            rows = self.base(j)
            lo, hi = max(start, j * group), min(stop, (j + 1) * group)
            out[lo - start : hi - start] = rows[lo - j * group : hi - j * group]
        return out

    def seeds(self, start: int = 0, stop: int | None = None) -> NDArray[np.uint64]:
        """Training seeds of subsets ``start .. stop-1``, uint64 (one per subset)."""
        return _seeds(self.seed, len(self), start, stop)

    def chunks(self, size: int) -> Iterator[tuple[int, int]]:
        """Yield ``(start, stop)`` ranges of at most ``size`` subsets, aligned to bases."""
        return _aligned_chunks(len(self), size, 1 + len(self.rhos))

    @classmethod
    def saunshi(
        cls, seed: bytes, n_train: int, p: float, rho0: float, bases: int
    ) -> SharedBaseDesign:
        """Levels (0, rho0, 2 rho0) as in the paper, on shared bases; 0 < rho0 <= 1/2."""
        rho0 = check_rho("rho0", rho0)
        if not 0.0 < rho0 <= 0.5:
            raise InvalidParameterError(f"rho0 must lie in (0, 1/2]; got {rho0!r}")
        return cls(seed, n_train, p, (0.0, rho0, 2.0 * rho0), bases)


#: a challenge design of either layout: ``layout``, ``rhos``, ``pairs_per_level``,
#: ``subsets_per_base``, ``masks``, ``seeds``, ``chunks`` and ``len`` (|E|)
Design = ChallengeDesign | SharedBaseDesign
LAYOUTS: dict[str, type[ChallengeDesign] | type[SharedBaseDesign]] = {
    "pairs": ChallengeDesign, "shared-base": SharedBaseDesign,
}  # fmt: skip
SAUNSHI_LEVELS = 3  # the paper's levels (0, rho0, 2 rho0)


def subsets_per_base(layout: str, levels: int = SAUNSHI_LEVELS) -> int:
    """The subsets of one base (pair-sum group) of a layout with ``levels`` noise levels:
    2 L (pairs) or 1 + L (shared-base), without building a design."""
    if layout not in LAYOUTS:
        raise InvalidParameterError(f"unknown layout {layout!r}; one of {tuple(LAYOUTS)}")
    return 2 * levels if layout == "pairs" else 1 + levels


def make_design(layout: str, seed: bytes, n_train: int, p: float, rho0: float, n: int) -> Design:
    """The paper's design (levels 0, rho0, 2 rho0) of a layout with n bases (pairs per
    level)."""
    if layout not in LAYOUTS:
        raise InvalidParameterError(f"unknown layout {layout!r}; one of {tuple(LAYOUTS)}")
    return LAYOUTS[layout].saunshi(seed, n_train, p, rho0, n)


def _seeds(seed: bytes, n: int, start: int, stop: int | None) -> NDArray[np.uint64]:
    """Training seeds of subsets ``start .. stop-1`` of a design of ``n`` subsets."""
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise InvalidParameterError(f"subset range [{start}, {stop}) outside [0, {n})")
    return training_seeds(seed, range(start, stop))


def _aligned_chunks(n: int, size: int, group: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``size`` of ``n`` subsets, in whole groups."""
    if size < group:
        raise InvalidParameterError(f"chunk size must be at least {group} subsets")
    size -= size % group
    return ((start, min(start + size, n)) for start in range(0, n, size))


def pack_masks(masks: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """Pack (K, N) masks to (K, ceil(N / 8)) bytes, least significant bit first."""
    arr = as_mask_matrix(masks)
    return np.packbits(arr, axis=1, bitorder="little")


def unpack_masks(packed: NDArray[np.uint8], n_train: int) -> NDArray[np.bool_]:
    """Inverse of :func:`pack_masks`; refuses a wrong width or non-zero pad bits."""
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ShapeError(f"packed masks must be a 2-D uint8 array; got {arr.dtype} {arr.shape}")
    _check_n_train(n_train)
    if arr.shape[1] != (n_train + 7) // 8:
        raise ShapeError(f"packed masks for N = {n_train} need {(n_train + 7) // 8} bytes per row")
    bits = np.unpackbits(arr, axis=1, bitorder="little").astype(np.bool_)
    if bits[:, n_train:].any():
        raise ShapeError("packed masks have non-zero pad bits")
    return bits[:, :n_train]
