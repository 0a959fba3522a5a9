"""The digits tasks under their first module name, kept so that existing imports
(``from protocol.tasks.digits import DigitsLogReg``) still work: the split is in
:mod:`protocol.tasks.digits_data`, ``digits-logreg`` in :mod:`protocol.tasks.digits_logreg`,
``digits-mlp`` in :mod:`protocol.tasks.digits_mlp`.
"""

from __future__ import annotations

from protocol.tasks.digits_data import N_CLASSES as N_CLASSES
from protocol.tasks.digits_data import N_POOL as N_POOL
from protocol.tasks.digits_data import N_PROBES as N_PROBES
from protocol.tasks.digits_data import N_TARGETS as N_TARGETS
from protocol.tasks.digits_data import DigitsData, load_digits_split
from protocol.tasks.digits_logreg import DigitsLogReg
from protocol.tasks.digits_mlp import DigitsMLP
from protocol.tasks.digits_mlp import _uniform as _uniform  # benchmarks/float32_mlp.py

__all__ = ["DigitsData", "DigitsLogReg", "DigitsMLP", "load_digits_split"]
