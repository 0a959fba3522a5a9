"""CHECKEQUIV: is a Prover's claimed training run the one the Verifier reproduces?

Each run is summarised by its values on the targets (float64, clipped) and its outputs on the
task's public probe set (float32). The task's declared tau (``TaskBase.tau``, possibly raised by
the Verifier in the challenge) decides how they are compared
(docs/protocol.md#two-message-protocol, step 4):

* **tau = 0, exact**: the task declares itself bitwise reproducible on every device, so the
  SHA-256 :func:`fingerprint` of the exact bytes must match;
* **tau > 0, tolerance**: every value and probe output must agree within tau, whatever the two
  device classes are. tau is slack a cheater may spend on every value it reports, so the
  decision charges it and the transcript records it.

The device classes of both sides are recorded to *explain* a difference, never to choose the
mode. :func:`explain` turns a failed check into advice a user can act on: differences at
rounding level mean the task is not bitwise reproducible and must declare a tau; differences
just above a declared tau mean the tau is too small; large differences mean wrong values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix
from protocol.errors import InvalidParameterError

__all__ = ["EquivReport", "ROUNDING_LEVEL", "check_equiv", "explain", "fingerprint"]

# Differences at most this fraction of the values' magnitude are rounding, not lies: float32
# carries ~7 significant digits, and rounding differences grow through training by a few
# orders of magnitude (measured: up to 1.6e-3 on margins of ~10 in the float32 MLP).
ROUNDING_LEVEL = 1e-3


def fingerprint(values: NDArray[np.float64], probes: NDArray[np.float32]) -> str:
    """SHA-256 (hex) of one run: its values as little-endian float64, then probes as float32."""
    v = np.ascontiguousarray(values, dtype="<f8").tobytes()
    p = np.ascontiguousarray(probes, dtype="<f4").tobytes()
    return hashlib.sha256(v + p).hexdigest()


@dataclass(frozen=True)
class EquivReport:
    """Per checked run: ``match`` (K,) bool and ``max_abs_diff`` (K,); the mode and tau used;
    ``scale``, the largest |value| or |probe| of the local runs (to judge a difference)."""

    mode: str
    tau: float
    match: NDArray[np.bool_]
    max_abs_diff: NDArray[np.float64]
    scale: float = 1.0

    @property
    def all_match(self) -> bool:
        """True iff every checked run matched."""
        return bool(np.all(self.match))

    @property
    def mismatches(self) -> int:
        """How many checked runs did not match."""
        return int((~self.match).sum())

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-ready summary, with the explanation."""
        return {
            "mode": self.mode,
            "tau": self.tau,
            "checked": int(len(self.match)),
            "mismatches": self.mismatches,
            "max_abs_diff": float(self.max_abs_diff.max(initial=0.0)),
            "explanation": explain(self),
        }


def check_equiv(
    claimed_values: NDArray[np.float64],
    claimed_probes: NDArray[np.float32],
    local_values: NDArray[np.float64],
    local_probes: NDArray[np.float32],
    tau: float,
) -> EquivReport:
    """Compare K claimed runs with K local re-runs (rows aligned) under ``tau`` (module doc)."""
    if not (isinstance(tau, int | float) and np.isfinite(tau) and tau >= 0):
        raise InvalidParameterError(f"tau must be finite and >= 0; got {tau!r}")
    lv = as_finite_matrix("local values", local_values, (None, None))
    cv = as_finite_matrix("claimed values", claimed_values, lv.shape)
    lp = as_finite_matrix("local probes", local_probes, (lv.shape[0], None))
    cp = as_finite_matrix("claimed probes", claimed_probes, lp.shape)
    diff = np.maximum(np.abs(cv - lv).max(axis=1, initial=0.0),
                      np.abs(cp - lp).max(axis=1, initial=0.0))  # fmt: skip
    scale = float(max(np.abs(lv).max(initial=0.0), np.abs(lp).max(initial=0.0), 1e-300))
    if tau == 0:
        cp32, lp32 = cp.astype(np.float32), lp.astype(np.float32)
        match = np.array(
            [fingerprint(cv[i], cp32[i]) == fingerprint(lv[i], lp32[i]) for i in range(len(lv))],
            dtype=bool,
        )
        return EquivReport("exact", 0.0, match, diff, scale)
    return EquivReport("tolerance", float(tau), diff <= tau, diff, scale)


def explain(report: EquivReport) -> str:
    """One sentence a user can act on (module doc); empty when every run matched."""
    if report.all_match:
        return ""
    bad = report.max_abs_diff[~report.match]
    worst, k, n = float(bad.max()), report.mismatches, len(report.match)
    head = f"{k} of {n} spot-checks differ, by up to {worst:.2g}"
    if worst <= ROUNDING_LEVEL * report.scale:
        if report.mode == "exact":
            return (
                f"{head}, at rounding level (values up to {report.scale:.3g}): the task is not "
                "bitwise reproducible on these devices; declare its tau "
                "(`prover_service check-task` measures it)"
            )
        return (
            f"{head}, above the declared tau = {report.tau:.2g} but at rounding level: the "
            "task's tau is too small for these devices (`prover_service check-task`)"
        )
    return f"{head}: the Prover's values are not what training on the challenge gives"
