"""``protocol.decision``: the order of the checks, the boundary of accept, and the figures a
verdict signs (finite only). The certificate is a real one, on a planted task."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from protocol.certificate import Certificate, certify
from protocol.checkequiv import check_equiv
from protocol.decision import abort_decision, decide, decide_threshold
from protocol.errors import AbortReason, VerificationError
from protocol.sampling import SharedBaseDesign
from protocol.tasks import PlantedTask


@pytest.fixture(scope="module")
def cert() -> Certificate:
    task = PlantedTask(n_train=20, n_targets=2, noise=0.2, seed=1)
    design = SharedBaseDesign.saunshi(bytes(32), task.n_train, 0.5, 0.2, 250)
    masks = design.masks()
    f = task.evaluate(masks, design.seeds())
    g = task.optimal_datamodel()
    return certify(f, g.predict(masks), design, delta=0.05, validity="clt", bound=task.bound)


def _spot(mismatches: int, k: int = 8):  # type: ignore[no-untyped-def]
    values = np.zeros((k, 2))
    claimed = values.copy()
    claimed[:mismatches] += 1.0
    probes = np.zeros((k, 1), dtype=np.float32)
    return check_equiv(claimed, probes, values, probes, 0.0)


def test_accept_iff_the_certified_bound_is_at_most_epsilon(cert: Certificate) -> None:
    u = cert.certified_epsilon
    assert math.isfinite(u) and u > 0
    at = decide(epsilon=u, delta=0.05, certificate=cert, spot=_spot(0))
    assert (at.verdict, at.reason) == ("accept", "certified") and at.certificate is cert
    below = decide(epsilon=math.nextafter(u, 0.0), delta=0.05, certificate=cert, spot=None)
    assert (below.verdict, below.reason) == ("abort", AbortReason.NOT_CERTIFIED.value)
    assert f"{u:.4g}" in below.detail and below.certificate is cert
    assert at.figures["certified_epsilon"] == u and at.figures["spot_checks"] == 8


def test_checks_run_in_order_bad_response_then_spot_checks_then_certificate(
    cert: Certificate,
) -> None:
    # a bad response wins over failed spot-checks, which win over a certificate that accepts
    both = decide(epsilon=1e9, delta=0.05, certificate=cert, spot=_spot(3), bad_response="NaN")
    assert (both.reason, both.detail) == (AbortReason.BAD_RESPONSE.value, "NaN")
    spot = decide(epsilon=1e9, delta=0.05, certificate=cert, spot=_spot(3))
    assert spot.reason == AbortReason.SPOT_CHECK_MISMATCH.value
    assert spot.figures["spot_mismatches"] == 3 and "3 of 8" in spot.detail
    assert spot.certificate is None  # no certificate is signed for a failed check
    # without one, the certificate may be absent; once both pass it is required
    assert decide(epsilon=1.0, delta=0.05, certificate=None, spot=_spot(1)).verdict == "abort"
    with pytest.raises(ValueError, match="needs a certificate"):
        decide(epsilon=1.0, delta=0.05, certificate=None, spot=_spot(0))


def test_only_finite_figures_are_signed(cert: Certificate) -> None:
    wide = replace(cert, certified_epsilon=math.inf)
    d = decide(epsilon=1.0, delta=0.05, certificate=wide, spot=None,
               extra={"pilot": 3.0, "gone": math.nan, "far": math.inf})  # fmt: skip
    assert d.verdict == "abort" and d.figures["pilot"] == 3.0
    assert all(math.isfinite(v) for v in d.figures.values())
    assert "gone" not in d.figures and "far" not in d.figures
    err = VerificationError("the response is not signed")
    a = abort_decision(err, epsilon=0.5, delta=0.05, extra={"x": math.nan, "y": 2.0})
    assert (a.verdict, a.reason, a.detail) == ("abort", err.reason, str(err))
    assert a.figures == {"epsilon": 0.5, "delta": 0.05, "y": 2.0}


@pytest.mark.parametrize(
    ("statistic", "mismatches", "bad", "want"),
    [
        (0.1, 0, None, "passed"),
        (0.2, 0, None, "passed"),  # at the threshold: accepted
        (0.3, 0, None, AbortReason.ESTIMATE_ABOVE_THRESHOLD.value),
        (math.nan, 0, None, AbortReason.ESTIMATE_ABOVE_THRESHOLD.value),  # NaN never passes
        (0.1, 2, None, AbortReason.SPOT_CHECK_MISMATCH.value),
        (0.1, 2, "bad shape", AbortReason.BAD_RESPONSE.value),
    ],
)
def test_the_baselines_threshold_rule(
    statistic: float, mismatches: int, bad: str | None, want: str
) -> None:
    d = decide_threshold(threshold=0.2, statistic=statistic, spot_mismatches=mismatches,
                         spot_checks=10, bad_response=bad)  # fmt: skip
    assert d.reason == want and d.verdict == ("accept" if want == "passed" else "abort")
    assert ("statistic" in d.figures) == math.isfinite(statistic)
