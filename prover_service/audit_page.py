"""What the ``/audit`` page shows: each session's checks recomputed here, and its charts as SVG.

The checks are :func:`protocol.transcript.audit_transcript`, the one pure audit that
``vda-verifier audit`` runs too (the service never imports the Verifier's client): signatures,
hashes, the spot-check commitment, the range of the values, the opened spot-checks re-trained,
the certificate and the decision, on the session's transcript as
``GET /v1/sessions/{id}/transcript`` shows it and its arrays as the store holds them (read
unchecked, so that the audit's own hash check reports a damaged one, as it would for anyone
holding those bytes). The page adds what only the Prover can show: whether it serves the task,
each message's inclusion in the transparency log, with its proof, and the noise-stability fit
below. A transcript altered in the database fails here, visibly, whatever its stored verdict
says.

Charts are drawn as inline SVG strings on the server: no JavaScript, no build step. Two per
session: the per-target bounds of the certificate (:func:`bounds_chart`) and the noise-stability
fit it rests on (:func:`stability_chart`). The signed verdict carries only the certificate's
scalars, not the fit's points, so :func:`stability_fit` derives them here from the signed
response values, the committed datamodel and the challenge's design, with the protocol's own
pair layout: the page says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from protocol.certificate import Certificate, pair_members
from protocol.errors import ProtocolError
from protocol.residual import StabilityDesign, fit_nonnegative
from protocol.signing import SignedMessage
from protocol.tasks import TaskBase
from protocol.transcript import AuditReport, Transcript, audit_transcript
from protocol.transparency import leaf_hash, log_entry, verify_inclusion
from prover_service.arrays import ArrayStore
from prover_service.audit_summary import summary
from prover_service.errors import ServiceError
from prover_service.log import TransparencyLog
from prover_service.sessions import Sessions
from prover_service.tables import SessionRow

__all__ = [
    "AuditSources",
    "SessionAudit",
    "StabilityFit",
    "audit_session",
    "bounds_chart",
    "stability_chart",
    "stability_fit",
    "summary",
]


@dataclass(frozen=True)
class StabilityFit:
    """The noise-stability fit of one session, recomputed from its transcript.

    ``of`` names the function whose noise stability it is: ``r = f - g`` (the error-gap
    estimator and the certificate: err(g) = c_0 + c_1 of r) or ``f`` (the residual estimator:
    B_{>=2} = h(1) - c_0 - c_1). ``rhos`` (L,) the challenge's levels; ``h`` (L,) the mean over
    pairs and targets of r(x) r(x') at each level, ``se`` (L,) its standard error; ``h1`` the
    mean of r^2 (h at rho = 1); ``coef`` (3,) c_0, c_1, c_2 of the quadratic fitted to the
    levels (least squares for r, as the certificate's linear weights; NNLS for f, the paper's).
    """

    of: str
    method: str
    rhos: tuple[float, ...]
    h: tuple[float, ...]
    se: tuple[float, ...]
    h1: float
    coef: tuple[float, float, float]

    def at(self, rho: float) -> float:
        """The fitted curve c_0 + c_1 rho + c_2 rho^2."""
        c0, c1, c2 = self.coef
        return c0 + c1 * rho + c2 * rho * rho

    @property
    def linear_part(self) -> float:
        """c_0 + c_1: err(g) estimated by the fit (for r), or B_0 + B_1 (for f)."""
        return self.coef[0] + self.coef[1]


def stability_fit(
    values: NDArray[np.float64],
    predictions: NDArray[np.float64] | None,
    design: StabilityDesign,
) -> StabilityFit:
    """The fit from the reported values (|E|, Z), the datamodel's predictions on the same
    masks (None: fit f itself, the residual estimator) and the design (either layout)."""
    f = np.asarray(values, dtype=np.float64)
    r = f if predictions is None else f - np.asarray(predictions, dtype=np.float64)
    rhos, arrange = pair_members(design, r.shape[0])  # the protocol's pair layout, both designs
    ra, rb = arrange(r)
    psi = (ra * rb).mean(axis=2)  # (L, n): r(x) r(x') per pair, mean over the targets
    n = psi.shape[1]
    h = psi.mean(axis=1)
    se = psi.std(axis=1, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(h), math.inf)
    if predictions is None:
        coef = fit_nonnegative(rhos, h[:, None])[:, 0]
        of, method = "f", "non-negative least squares (the residual estimator)"
    else:
        coef = np.linalg.lstsq(np.vander(rhos, 3, increasing=True), h, rcond=None)[0]
        of, method = "r = f - g", "least squares (the certificate's linear weights)"
    return StabilityFit(
        of=of,
        method=method,
        rhos=tuple(float(x) for x in rhos),
        h=tuple(float(x) for x in h),
        se=tuple(float(x) for x in se),
        h1=float(np.mean(r * r)),
        coef=(float(coef[0]), float(coef[1]), float(coef[2])),
    )


@dataclass
class SessionAudit:
    """One session's audit as the page shows it: the transcript's report
    (:func:`protocol.transcript.audit_transcript`), then the page's own rows (``extra``: the
    task served here, the noise-stability fit, the log), the fit and the log proofs."""

    report: AuditReport = field(default_factory=AuditReport)
    extra: list[dict[str, Any]] = field(default_factory=list)
    stability: StabilityFit | None = None
    proofs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        """Append one of the page's own checks; returns ``ok``."""
        self.extra.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    @property
    def checks(self) -> list[dict[str, Any]]:
        """Every row: the transcript's, then the page's."""
        return [*self.report.checks, *self.extra]

    @property
    def recorded(self) -> str | None:
        """The signed verdict's ``verdict:reason`` (None if the transcript has none)."""
        return self.report.recorded

    @property
    def recomputed(self) -> str | None:
        """The ``verdict:reason`` recomputed here (None if the audit stopped before)."""
        return self.report.recomputed

    @property
    def certificate(self) -> Certificate | None:
        """The certificate recomputed here, for the bounds chart (None if there is none)."""
        return self.report.certificate

    @property
    def ok(self) -> bool:
        """The transcript's report is ok and so is every row the page adds."""
        return self.report.ok and all(c["ok"] for c in self.extra)

    def stability_svg(self) -> str:
        """The noise-stability chart (inline SVG), or "" when the transcript has no values."""
        return stability_chart(self.stability) if self.stability is not None else ""


class StoredArrays:
    """The Prover's array store as a :class:`protocol.transcript.ArraySource`: bytes read
    unchecked (:meth:`ArrayStore.read`; the audit checks them), KeyError for absent ones."""

    def __init__(self, store: ArrayStore) -> None:
        self.store = store

    def __getitem__(self, sha256: str, /) -> bytes:
        return self.store.read(sha256)


class AuditSources(Protocol):
    """What an audit reads (the Prover service provides it): the served tasks, the array store,
    the transparency log, the Prover's key and the sessions' transcripts."""

    @property
    def tasks(self) -> Mapping[str, TaskBase]: ...

    @property
    def arrays(self) -> ArrayStore: ...

    @property
    def log(self) -> TransparencyLog: ...

    @property
    def public_key(self) -> str: ...

    @property
    def sessions(self) -> Sessions: ...


def session_transcript(svc: AuditSources, row: SessionRow) -> Transcript:
    """The transcript of ``row``, exactly as ``GET /v1/sessions/{id}/transcript`` shows it."""
    return Transcript.model_validate(svc.sessions.transcript_of(row))


def _log_checks(rep: SessionAudit, svc: AuditSources, messages: dict[str, SignedMessage]) -> None:
    size, root = svc.log.size_and_root()
    missing = []
    for name, signed in messages.items():
        leaf = leaf_hash(log_entry(signed))
        try:
            doc = svc.log.inclusion(leaf.hex(), size)
            proof = [bytes.fromhex(p) for p in doc["proof"]]
            verify_inclusion(leaf, doc["index"], size, proof, root)
            rep.proofs.append({"message": name, "index": doc["index"], "size": size,
                               "leaf": leaf.hex(), "proof": doc["proof"]})  # fmt: skip
        except (ServiceError, ProtocolError) as exc:
            missing.append(f"{name}: {exc}")
    rep.add("every message is in the transparency log", not missing, "; ".join(missing))


def audit_session(svc: AuditSources, row: SessionRow) -> SessionAudit:
    """The session's audit (module doc): the transcript's report, then the page's rows."""
    rep = SessionAudit()
    try:
        transcript = session_transcript(svc, row)
    except (ServiceError, KeyError, ValidationError) as exc:
        rep.report.add("signatures, hashes and formats", False, f"no transcript: {exc}")
        return rep
    task = svc.tasks.get(row.task_hash)
    if task is None:
        rep.add("the task is served here", False, f"task {row.task_hash[:16]}... is not")
    else:
        rep.report = audit_transcript(transcript, StoredArrays(svc.arrays), task, svc.public_key)
    opened = rep.report.opened
    if opened is not None:
        try:
            gap = opened.challenge.estimator != "residual"
            predictions = opened.model.predict(opened.design.masks()) if gap else None
            rep.stability = stability_fit(opened.values, predictions, opened.design)
        except (ProtocolError, ValueError) as exc:
            rep.add("noise-stability fit from the signed values", False, str(exc))
    t = transcript
    named = {"attribution": t.attribution, "challenge": t.challenge, "response": t.response,
             "verdict": t.verdict_message}  # fmt: skip
    _log_checks(rep, svc, {name: signed for name, signed in named.items() if signed is not None})
    return rep


def bounds_chart(cert: Certificate, epsilon: float, width: int = 640, height: int = 240) -> str:
    """Inline SVG: per target, the point estimate (dot) and the upper bound (bar), and epsilon."""
    upper = np.asarray(cert.per_target, dtype=np.float64)
    point = np.asarray(cert.per_target_point, dtype=np.float64)
    finite = [v for v in [*upper, *point, epsilon, cert.certified_epsilon] if np.isfinite(v)]
    top = max(finite) * 1.1 if finite else 1.0
    n = max(len(upper), 1)
    pad, plot_h = 40, height - 50
    step = (width - pad - 10) / n

    def y(v: float) -> float:
        return 10 + plot_h * (1 - min(max(v, 0.0), top) / top) if np.isfinite(v) else 10

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>Per-target upper bounds (bars) and point estimates (dots); "
             f"epsilon {epsilon:g}</title>"]  # fmt: skip
    for j in range(len(upper)):
        x = pad + j * step
        parts.append(f'<rect class="bound" x="{x + step * 0.15:.1f}" y="{y(upper[j]):.1f}" '
                     f'width="{step * 0.7:.1f}" height="{10 + plot_h - y(upper[j]):.1f}" '
                     f'fill="#9ecae1"><title>{j}: {upper[j]:.4g}</title></rect>')  # fmt: skip
        parts.append(f'<circle cx="{x + step / 2:.1f}" cy="{y(point[j]):.1f}" r="3" '
                     f'fill="#08519c"/>')  # fmt: skip
    ye = y(epsilon)
    parts.append(f'<line x1="{pad}" x2="{width - 10}" y1="{ye:.1f}" y2="{ye:.1f}" '
                 f'stroke="#d62728" stroke-dasharray="4 3"/>')  # fmt: skip
    parts.append(f'<text x="{width - 12}" y="{ye - 4:.1f}" text-anchor="end" font-size="11" '
                 f'fill="#d62728">epsilon {escape(f"{epsilon:g}")}</text>')  # fmt: skip
    parts.append(f'<line x1="{pad}" x2="{pad}" y1="10" y2="{10 + plot_h}" stroke="#333"/>')
    parts.append(f'<text x="4" y="16" font-size="11">{top:.3g}</text>')
    parts.append(f'<text x="4" y="{10 + plot_h}" font-size="11">0</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">targets 0..{n - 1}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stability_chart(fit: StabilityFit, width: int = 640, height: int = 280) -> str:
    """Inline SVG: h-hat(rho_l) per level (dots, +-2 SE whiskers), h-hat(1) (square), and the
    fitted quadratic (solid over the levels, dashed where it is extrapolated to rho = 1)."""
    left, right, top, bottom = 70, 16, 14, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    rhos, h = np.asarray(fit.rhos), np.asarray(fit.h)
    se = np.where(np.isfinite(fit.se), fit.se, 0.0)
    grid = np.linspace(0.0, 1.0, 101)
    curve = np.array([fit.at(float(x)) for x in grid])
    span = [*(h - 2 * se), *(h + 2 * se), fit.h1, *curve, 0.0]
    lo, hi = min(span), max(span)
    pad_y = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad_y, hi + pad_y

    def x(v: float) -> float:
        return left + plot_w * v

    def y(v: float) -> float:
        return float(top + plot_h * (1.0 - (v - lo) / (hi - lo)))

    def line(xs: NDArray[np.float64], cls: str, dash: str = "") -> str:
        pts = " ".join(f"{x(float(a)):.1f},{y(fit.at(float(a))):.1f}" for a in xs)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<polyline class="{cls}" points="{pts}" fill="none" stroke="#d62728" '
                f'stroke-width="1.6"{style}/>')  # fmt: skip

    last = float(rhos.max(initial=0.0))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart stability" role="img" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>Noise stability of {escape(fit.of)}: h(rho) at each level and the fitted "
             f"quadratic; c0 + c1 = {fit.linear_part:.4g}</title>",
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
             f'stroke="#999"/>']  # fmt: skip
    for tick in np.linspace(lo + pad_y, hi - pad_y, 5):
        parts.append(f'<line x1="{left - 4}" x2="{left}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                     f'stroke="#333"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{tick:.3g}</text>')  # fmt: skip
    if lo < 0.0 < hi:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(0.0):.1f}" '
                     f'y2="{y(0.0):.1f}" stroke="#ccc"/>')  # fmt: skip
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top + plot_h}" '
                     f'y2="{top + plot_h + 4}" stroke="#333"/><text x="{x(tick):.1f}" '
                     f'y="{top + plot_h + 15}" font-size="10" text-anchor="middle">{tick:g}'
                     f"</text>")  # fmt: skip
    parts.append(line(grid[grid <= last], "fit"))
    parts.append(line(grid[grid >= last], "fit extrapolated", "5 4"))
    for rho, val, err in zip(rhos, h, se, strict=True):
        if err > 0:
            parts.append(f'<line class="se" x1="{x(rho):.1f}" x2="{x(rho):.1f}" '
                         f'y1="{y(val - 2 * err):.1f}" y2="{y(val + 2 * err):.1f}" '
                         f'stroke="#08519c"/>')  # fmt: skip
        parts.append(f'<circle class="level" cx="{x(rho):.1f}" cy="{y(val):.1f}" r="4" '
                     f'fill="#08519c"><title>\u03c1 {rho:.4g}: h {val:.4g} (SE {err:.2g})</title>'
                     f"</circle>")  # fmt: skip
    parts.append(f'<rect class="h1" x="{x(1.0) - 4:.1f}" y="{y(fit.h1) - 4:.1f}" width="8" '
                 f'height="8" fill="#31a354"><title>h(1) = mean of {escape(fit.of.split()[0])}^2:'
                 f" {fit.h1:.4g}</title></rect>")  # fmt: skip
    who = escape(fit.of.split()[0])
    parts.append(f'<text class="axis-label x" x="{left + plot_w / 2:.1f}" y="{height - 8}" '
                 f'font-size="12" text-anchor="middle">\u03c1: correlation of the pair x, x\u2032'
                 f"</text>")  # fmt: skip
    parts.append(f'<text class="axis-label y" x="14" y="{top + plot_h / 2:.1f}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 14 {top + plot_h / 2:.1f})">'
                 f"h(\u03c1) = mean {who}(x) {who}(x\u2032)</text>")  # fmt: skip
    parts.append(f'<text x="{left + 8}" y="{top + 14}" font-size="11" fill="#d62728">fit '
                 f"c\u2080 + c\u2081\u03c1 + c\u2082\u03c1\u00b2: c\u2080 + c\u2081 = "
                 f"{fit.linear_part:.4g}</text>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
