"""CHECKEQUIV: is a Prover's claimed training run the one the Verifier reproduces?

Each run is summarised by its values on the targets (float64, clipped) and its raw logits on the
task's public probe set (float32). Two modes (PROTOCOL.md section 4):

* **exact** -- both sides declare the same device class (``TrainedTask.device_class``): the
  runs are deterministic there, so the SHA-256 :func:`fingerprint` of the exact bytes must match;
* **tolerance tau** -- different device classes: every value and probe logit must agree within
  tau. tau is slack a cheater may spend on every value it reports, so the planner
  (:func:`protocol.budget.plan`) charges it against the decision margin and the transcript
  records it. A task whose spec declares tau = 0 (non-convex training) refuses this mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol.checks import as_finite_matrix
from protocol.errors import InvalidParameterError, ShapeError

__all__ = ["EquivReport", "check_equiv", "device_class_of", "fingerprint"]


def device_class_of(task: object) -> str:
    """A task's device class; tasks without one (e.g. ``planted``, float64 numpy) share
    ``"cpu:exact-float64"``."""
    return str(getattr(task, "device_class", "cpu:exact-float64"))


def fingerprint(values: NDArray[np.float64], probes: NDArray[np.float32]) -> str:
    """SHA-256 (hex) of one run: its values as little-endian float64, then probes as float32."""
    v = np.ascontiguousarray(values, dtype="<f8").tobytes()
    p = np.ascontiguousarray(probes, dtype="<f4").tobytes()
    return hashlib.sha256(v + p).hexdigest()


@dataclass(frozen=True)
class EquivReport:
    """Per checked run: ``match`` (K,) bool and ``max_abs_diff`` (K,); the mode and tau used."""

    mode: str
    tau: float
    match: NDArray[np.bool_]
    max_abs_diff: NDArray[np.float64]

    @property
    def all_match(self) -> bool:
        """True iff every checked run matched."""
        return bool(np.all(self.match))


def check_equiv(
    claimed_values: NDArray[np.float64],
    claimed_probes: NDArray[np.float32],
    local_values: NDArray[np.float64],
    local_probes: NDArray[np.float32],
    same_device_class: bool,
    tau: float,
) -> EquivReport:
    """Compare K claimed runs with K local re-runs (rows aligned); see the module doc."""
    lv = as_finite_matrix("local values", local_values, (None, None))
    cv = as_finite_matrix("claimed values", claimed_values, lv.shape)
    lp = as_finite_matrix("local probes", local_probes, (lv.shape[0], None))
    cp = as_finite_matrix("claimed probes", claimed_probes, lp.shape)
    diff = np.maximum(np.abs(cv - lv).max(axis=1, initial=0.0),
                      np.abs(cp - lp).max(axis=1, initial=0.0))  # fmt: skip
    if same_device_class:
        cp32, lp32 = cp.astype(np.float32), lp.astype(np.float32)
        match = np.array(
            [fingerprint(cv[i], cp32[i]) == fingerprint(lv[i], lp32[i]) for i in range(len(lv))],
            dtype=bool,
        )
        return EquivReport("exact", 0.0, match, diff)
    if not (np.isfinite(tau) and tau >= 0):
        raise InvalidParameterError(f"tau must be finite and >= 0; got {tau!r}")
    if tau == 0:
        raise ShapeError(
            "this task declares tau = 0: its runs can only be checked on the same device class"
        )
    return EquivReport("tolerance", float(tau), diff <= tau, diff)
