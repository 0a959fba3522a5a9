"""A cheating Prover, for tests and demonstrations (``serve --adversary SPEC``).

SPEC is one mode or several joined by commas; a COUNT is a number or a percentage of |E|:

==================  =====================================================================
``scale:F``         publish the attribution multiplied by F (F = 0.5: "pay half")
``favor:FRAC:BETA`` raise a random FRAC of the weights by BETA
``noise:SIGMA``     add N(0, SIGMA^2) noise to every weight
``inflate:COUNT:SIGMA``  add N(0, SIGMA^2) noise to COUNT reported f-values (inflates h(1))
``lie:FRAC``        report uniform random values in [-b, b] for FRAC of the subsets
``lazy:FRAC``       skip training for FRAC of the subsets and report g(x) (no training at all)
``replay``          answer with an earlier session's values when the shapes allow
``extreme:COUNT``   put COUNT values at +-b where the plain estimate of the gap falls most
                    (:func:`protocol.adversaries.corrupt_extreme`: whole bases or pairs)
``quiet:COUNT``     move the COUNT largest pair-sums u_j to the COUNT-th smallest, one row
                    each, no extreme value (:func:`protocol.adversaries.corrupt_quiet`: the
                    strongest against the certificate's trimmed mean)
``witness:KIND``    on the witness route, cheat with the parameters of every subset: KIND is
                    one of :data:`protocol.witness_adversaries.WITNESS_ATTACKS` (nearby,
                    early, scaled, flat, values, l2); lies move values by 1e-3
==================  =====================================================================

``extreme`` and ``quiet`` use what a strategic Prover knows: its committed g, the public
design of the challenge (either layout) and the aggregate; not the spot-check set. A COUNT at
or below the m* the Verifier's spot-checks allow is what shows the certificate, not the
spot-checks, holding them off (``docs/soundness.md``).

The honest service never constructs an :class:`Adversary`; its randomness is seeded by the
session id, so a cheating run is reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from protocol.adversaries import corrupt_extreme, corrupt_quiet
from protocol.datamodel import Datamodel
from protocol.errors import InvalidParameterError
from protocol.residual import StabilityDesign
from protocol.tasks import TaskBase
from protocol.tasks.multinomial import MultinomialProblem
from protocol.witness_adversaries import WITNESS_ATTACKS, tamper_witnesses

__all__ = ["Adversary", "parse_adversary"]


@dataclass(frozen=True)
class _Mode:
    name: str
    args: tuple[str, ...]


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidParameterError(f"adversary: {what} must be a number; got {text!r}") from None


def _frac(text: str, what: str) -> float:
    v = _float(text, what)
    if not 0 <= v <= 1:
        raise InvalidParameterError(f"adversary: {what} must be in [0, 1]; got {text!r}")
    return v


_ARITY = {
    "scale": 1,
    "favor": 2,
    "noise": 1,
    "inflate": 2,
    "lie": 1,
    "lazy": 1,
    "replay": 0,
    "extreme": 1,
    "quiet": 1,
    "witness": 1,
}


def parse_adversary(spec: str) -> Adversary:
    """Parse SPEC (module doc) or raise :class:`InvalidParameterError` with the reason."""
    modes = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, *args = item.split(":")
        if name not in _ARITY:
            raise InvalidParameterError(
                f"adversary: unknown mode {name!r}; modes: {', '.join(sorted(_ARITY))}"
            )
        if len(args) != _ARITY[name]:
            raise InvalidParameterError(f"adversary: {name} takes {_ARITY[name]} argument(s)")
        modes.append(_Mode(name, tuple(args)))
    if not modes:
        raise InvalidParameterError("adversary: empty SPEC")
    adv = Adversary(tuple(modes), spec)
    adv.validate()
    return adv


@dataclass(frozen=True)
class Adversary:
    """The parsed cheating modes (module doc)."""

    modes: tuple[_Mode, ...]
    spec: str

    def validate(self) -> None:
        for m in self.modes:
            if m.name in ("scale", "noise"):
                _float(m.args[0], m.name)
            elif m.name in ("favor",):
                _frac(m.args[0], "FRAC")
                _float(m.args[1], "BETA")
            elif m.name in ("lie", "lazy"):
                _frac(m.args[0], "FRAC")
            elif m.name == "inflate":
                self._count(m.args[0], 100)
                _float(m.args[1], "SIGMA")
            elif m.name in ("extreme", "quiet"):
                self._count(m.args[0], 100)
            elif m.name == "witness" and m.args[0] not in WITNESS_ATTACKS:
                raise InvalidParameterError(
                    f"adversary: witness:KIND needs KIND in {', '.join(WITNESS_ATTACKS)}"
                )

    @staticmethod
    def _count(text: str, total: int) -> int:
        if text.endswith("%"):
            return int(round(_frac(str(_float(text[:-1], "COUNT") / 100), "COUNT") * total))
        value = _float(text, "COUNT")
        if value < 0 or value != int(value):
            raise InvalidParameterError(f"adversary: COUNT must be a whole number; got {text!r}")
        return min(int(value), total)

    @staticmethod
    def _rng(label: str) -> np.random.Generator:
        return np.random.default_rng(int.from_bytes(hashlib.sha256(label.encode()).digest()[:8]))

    def has(self, name: str) -> bool:
        """Whether a mode is on."""
        return any(m.name == name for m in self.modes)

    def tamper_attribution(self, model: Datamodel, label: str) -> Datamodel:
        """Apply scale / favor / noise to the attribution about to be published."""
        w, c = model.weights.copy(), model.intercept.copy()
        rng = self._rng("attribution:" + label)
        for m in self.modes:
            if m.name == "scale":
                f = float(m.args[0])
                w, c = w * f, c * f
            elif m.name == "favor":
                pick = rng.random(w.shape) < float(m.args[0])
                w = w + pick * float(m.args[1])
            elif m.name == "noise":
                w = w + rng.normal(scale=float(m.args[0]), size=w.shape)
        return Datamodel(c, w)

    def tamper_witness(
        self, theta: NDArray[np.float64], values: NDArray[np.float64], masks: NDArray[np.bool_],
        task: TaskBase, label: str,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:  # fmt: skip
        """Apply ``witness:KIND`` to one chunk's honest parameters and values."""
        problem = task.certifiable()
        for m in self.modes:
            if m.name == "witness":
                if not isinstance(problem, MultinomialProblem):
                    raise InvalidParameterError("adversary: witness attacks need a logreg task")
                rng = self._rng("witness:" + label)
                theta, values = tamper_witnesses(
                    m.args[0], problem, theta, masks, values, shift=1e-3, rng=rng
                )
        return theta, values

    def tamper_values(
        self,
        values: NDArray[np.float64],
        bound: float,
        predictions: NDArray[np.float64],
        earlier: NDArray[np.float64] | None,
        label: str,
        *,
        design: StabilityDesign | None = None,
        aggregate: Literal["mean", "max"] = "mean",
    ) -> NDArray[np.float64]:
        """Apply inflate / lie / lazy / replay / extreme / quiet to the honest values (|E|, Z).

        ``predictions`` (|E|, Z) is the published g on the challenge's masks; ``design`` (the
        challenge's, either layout) is needed by extreme and quiet."""
        out = values.copy()
        rng = self._rng("values:" + label)
        n = len(out)
        for m in self.modes:
            if m.name == "replay" and earlier is not None and earlier.shape == out.shape:
                out = earlier.copy()
            elif m.name in ("extreme", "quiet"):
                if design is None:
                    raise InvalidParameterError(f"adversary: {m.name} needs the challenge design")
                count = self._count(m.args[0], n)
                out = np.clip(out, -bound, bound)
                if m.name == "extreme":
                    out = corrupt_extreme(out, predictions, design, count, bound=bound)
                else:
                    out = corrupt_quiet(
                        out, predictions, design, count, bound=bound, aggregate=aggregate
                    )
            elif m.name == "inflate":
                rows = rng.choice(n, size=self._count(m.args[0], n), replace=False)
                out[rows] += rng.normal(scale=float(m.args[1]), size=(len(rows), out.shape[1]))
            elif m.name == "lie":
                hit = rng.random(n) < float(m.args[0])
                out[hit] = rng.uniform(-bound, bound, size=(int(hit.sum()), out.shape[1]))
            elif m.name == "lazy":
                hit = rng.random(n) < float(m.args[0])
                out[hit] = predictions[hit]
        return np.clip(out, -bound, bound)
