"""The worker lanes are wired when built: one handler per kind of job, none assigned later."""

from __future__ import annotations

from pathlib import Path

import pytest

from prover_service.jobs import Lanes
from prover_service.service import ProverService
from tests.prover_service.conftest import make_settings


def test_lanes_refuse_a_missing_or_unknown_handler(tmp_path: Path) -> None:
    svc = ProverService(make_settings(tmp_path))
    try:
        assert set(svc.lanes.handlers) == set(Lanes.KINDS)
        assert svc.lanes.handlers["challenge"] == svc.sessions.step
        assert svc.lanes.handlers["attribution"] == svc.attributions.run
        with pytest.raises(ValueError, match="a handler for each of"):
            Lanes(svc.jobs, svc.lanes.executor, {"challenge": svc.sessions.step})
        with pytest.raises(ValueError, match="got"):
            Lanes(svc.jobs, svc.lanes.executor, {"challenge": svc.sessions.step,
                                                 "attribution": svc.attributions.run,
                                                 "cleanup": svc.sessions.step})  # fmt: skip
        assert svc.run_pending() is False  # nothing queued: the lanes claim nothing
    finally:
        svc.close()
