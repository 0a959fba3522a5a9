"""scipy's distributions and special functions, imported on first use.

``import scipy.stats`` alone takes 0.8-2.5 s (it loads most of scipy); ``import protocol``, the
wire format and every command line's ``--help`` need none of it. :data:`norm`, :data:`chi2`,
:func:`gammaln`, :func:`rankdata` and :func:`nnls` forward to scipy's own objects on their
first call, so results are scipy's, bit for bit. A test checks that ``import protocol`` and both
CLIs' ``--help`` leave scipy.stats, torch and sqlalchemy unimported
(``tests/test_startup.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["chi2", "gammaln", "nnls", "norm", "rankdata"]


class _Lazy:
    """An attribute of a scipy module, imported when first used; calls and attribute access
    (``norm.ppf``) are forwarded to it."""

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name

    def _target(self) -> Any:
        return getattr(importlib.import_module(self._module), self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self._module}.{self._name}>"


norm: Any = _Lazy("scipy.stats", "norm")
chi2: Any = _Lazy("scipy.stats", "chi2")
gammaln: Any = _Lazy("scipy.special", "gammaln")
rankdata: Any = _Lazy("scipy.stats", "rankdata")
nnls: Any = _Lazy("scipy.optimize", "nnls")
