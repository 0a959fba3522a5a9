"""The cheating Prover's modes on value arrays (no service): parsing, and the strategic modes
extreme and quiet on both layouts, as the protocol's adversaries applied to its honest values."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.adversaries import corrupt_extreme, corrupt_quiet
from protocol.errors import InvalidParameterError
from prover_service.cheating import parse_adversary
from tests.protocol.test_certificate import RHOS, TASK, with_err
from tests.simulate import simulate_design, simulate_shared_design


@pytest.mark.parametrize("sim", [simulate_design, simulate_shared_design])
@pytest.mark.parametrize(("spec", "count"), [("extreme:12", 12), ("quiet:1%", 24)])
def test_strategic_modes_apply_the_protocol_adversaries(sim: object, spec: str, count: int) -> None:
    rng = np.random.default_rng(0)
    design, masks, seeds = sim(rng, TASK.n_train, 0.5, RHOS, 400 if sim is simulate_design else 600)  # type: ignore[operator]
    f = TASK.evaluate(masks, seeds)
    pred = with_err(1.0).predict(masks)
    assert len(f) == 2400
    adv = parse_adversary(spec)
    out = adv.tamper_values(f, TASK.bound, pred, None, "s1", design=design)
    ref = (corrupt_extreme if spec.startswith("extreme") else corrupt_quiet)(
        f, pred, design, count, bound=TASK.bound
    )
    np.testing.assert_array_equal(out, ref)
    assert 0 < np.sum(np.any(out != f, axis=1)) <= count
    assert adv.tamper_attribution(with_err(1.0), "s1").weights.tolist() == (
        with_err(1.0).weights.tolist()
    )


def test_strategic_modes_are_parsed_and_need_the_design() -> None:
    for bad in ("extreme", "quiet:x", "extreme:-3", "quiet:150%", "extreme:1:2"):
        with pytest.raises(InvalidParameterError):
            parse_adversary(bad)
    adv = parse_adversary("scale:0.5,quiet:10")
    assert adv.has("quiet") and adv.has("scale")
    with pytest.raises(InvalidParameterError, match="design"):
        adv.tamper_values(np.zeros((12, 1)), 1.0, np.zeros((12, 1)), None, "s")
