"""What the ``/audit`` page shows: each session's checks recomputed here, and its charts as SVG.

The recomputation uses the protocol only (the service never imports the Verifier's client):
signatures (:func:`protocol.signing.open_signed`), hashes, the spot-check commitment, the
opened spot-checks re-trained (:func:`protocol.evaluation.run_task`,
:func:`protocol.checkequiv.check_equiv`), the certificate (:func:`protocol.certificate.certify`,
the same call as the Verifier's ``certify_challenge``), the decision
(:func:`protocol.decision.decide`), and each message's inclusion in the transparency log.
A transcript altered in the database fails here, visibly, whatever its stored verdict says.

Charts are drawn as inline SVG strings on the server: no JavaScript, no build step. Two per
session: the per-target bounds of the certificate (:func:`bounds_chart`) and the noise-stability
fit it rests on (:func:`stability_chart`). The signed verdict carries only the certificate's
scalars, not the fit's points, so :func:`stability_fit` derives them here from the signed
response values, the committed datamodel and the challenge's design, with the protocol's own
pair layout: the page says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from protocol.certificate import Certificate, _members
from protocol.checkequiv import check_equiv
from protocol.datamodel import Datamodel
from protocol.decision import certify_challenge, decide
from protocol.errors import ProtocolError
from protocol.evaluation import run_task
from protocol.messages import (
    AttributionManifest,
    Challenge,
    ResponseManifest,
    Verdict,
    array_from_npy,
    commit_spot_checks,
)
from protocol.residual import StabilityDesign, fit_nonnegative
from protocol.signing import SignedMessage, open_signed
from protocol.transparency import leaf_hash, log_entry, verify_inclusion
from prover_service.audit_summary import summary
from prover_service.errors import ServiceError
from prover_service.store import SessionRow

__all__ = [
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
    values: np.ndarray,  # type: ignore[type-arg]
    predictions: np.ndarray | None,  # type: ignore[type-arg]
    design: StabilityDesign,
) -> StabilityFit:
    """The fit from the reported values (|E|, Z), the datamodel's predictions on the same
    masks (None: fit f itself, the residual estimator) and the design (either layout)."""
    f = np.asarray(values, dtype=np.float64)
    r = f if predictions is None else f - np.asarray(predictions, dtype=np.float64)
    rhos, arrange = _members(design, r.shape[0])  # the protocol's pair layout, both designs
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
    """The recomputed checks of one session, its figures and its log proofs."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    recorded: str | None = None
    recomputed: str | None = None
    certificate: Certificate | None = None
    stability: StabilityFit | None = None
    proofs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks) and self.recorded == self.recomputed

    def stability_svg(self) -> str:
        """The noise-stability chart (inline SVG), or "" when the transcript has no values."""
        return stability_chart(self.stability) if self.stability is not None else ""


def _log_checks(rep: SessionAudit, svc: Any, messages: dict[str, SignedMessage]) -> None:
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


def audit_session(svc: Any, row: SessionRow) -> SessionAudit:
    """Every check of the audit, recomputed from what the database holds (module doc)."""
    rep = SessionAudit()
    key = svc.public_key
    task = svc.tasks.get(row.task_hash)
    messages: dict[str, SignedMessage] = {}
    try:
        a_signed, dm_bytes = svc.attribution(row.attribution_hash)
        messages["attribution"] = a_signed
        attribution = open_signed(a_signed, AttributionManifest, signer=key)
        model = Datamodel.from_bytes(dm_bytes)
        rep.add("attribution signed by the Prover; datamodel matches its hash",
                model.content_hash == attribution.content_hash)  # fmt: skip
        c_signed = SignedMessage.model_validate_json(row.challenge_json)
        messages["challenge"] = c_signed
        challenge = open_signed(c_signed, Challenge)
        rep.add("challenge signed by the key it names", c_signed.signer == challenge.verifier_key)
        rep.add("challenge names this attribution and task",
                challenge.attribution_hash == attribution.content_hash
                and challenge.task_hash == attribution.task_hash == row.task_hash)  # fmt: skip
        if row.response_json is None or row.verdict_json is None or task is None:
            rep.add("transcript complete (response and verdict)", False, "missing messages")
            _log_checks(rep, svc, messages)
            return rep
        r_signed = SignedMessage.model_validate_json(row.response_json)
        messages["response"] = r_signed
        response = open_signed(r_signed, ResponseManifest, signer=key)
        rep.add("response answers this challenge", response.challenge_digest == c_signed.digest)
        values = array_from_npy(response.values, svc.arrays.get(response.values.sha256))
        probes = array_from_npy(response.probes, svc.arrays.get(response.probes.sha256))
        rep.add("response arrays match their signed hashes", True)
        v_signed = SignedMessage.model_validate_json(row.verdict_json)
        messages["verdict"] = v_signed
        verdict = open_signed(v_signed, Verdict, signer=challenge.verifier_key)
        rep.recorded = f"{verdict.verdict}:{verdict.reason}"
        rep.add("verdict names this challenge and response",
                (verdict.challenge_digest, verdict.response_digest)
                == (c_signed.digest, r_signed.digest))  # fmt: skip
        opened = commit_spot_checks(verdict.spot_check_indices, bytes.fromhex(verdict.salt))
        rep.add("spot-check commitment opens", opened == challenge.spot_check_commitment)
    except (ProtocolError, ServiceError, KeyError, ValueError) as exc:
        rep.add("signatures, hashes and formats", False, str(exc))
        _log_checks(rep, svc, messages)
        return rep

    design = challenge.design(task.n_train)
    values = values.astype(np.float64)
    idx = np.array(verdict.spot_check_indices, dtype=np.int64)
    masks = np.stack([design.masks(int(i), int(i) + 1)[0] for i in idx]) if len(idx) else \
        np.zeros((0, task.n_train), dtype=bool)  # fmt: skip
    seeds = design.seeds()[idx] if len(idx) else np.zeros(0, dtype=np.uint64)
    local = run_task(task, masks, seeds)
    spot = check_equiv(values[idx], probes[idx].astype(np.float32), local.values, local.probes,
                       challenge.tau)  # fmt: skip
    rep.add("spot-checks re-trained here agree with the verdict's count",
            spot.mismatches == int(verdict.figures.get("spot_mismatches", 0)),
            f"{spot.mismatches} mismatches here")  # fmt: skip
    predictions = model.predict(design.masks())
    try:
        gap = challenge.estimator != "residual"
        rep.stability = stability_fit(values, predictions if gap else None, design)
    except (ProtocolError, ValueError) as exc:
        rep.add("noise-stability fit from the signed values", False, str(exc))
    cert = None
    if spot.all_match and challenge.estimator != "residual":
        try:
            cert = certify_challenge(challenge, task.bound, model, design, values, idx.tolist())
        except ProtocolError as exc:  # e.g. a clt challenge at a size clt is now refused at
            rep.add("certificate recomputed from the transcript", False, str(exc))
            rep.recomputed = "refused"
            _log_checks(rep, svc, messages)
            return rep
        rep.certificate = cert
        recorded = verdict.figures.get("certified_epsilon", math.inf)
        here = cert.certified_epsilon
        rep.add("certificate recomputed from the transcript",
                math.isclose(here, recorded, rel_tol=1e-9, abs_tol=1e-12),
                f"certified err {here:.6g} here, {recorded:.6g} recorded")  # fmt: skip
    decision = decide(epsilon=challenge.epsilon, delta=challenge.delta, certificate=cert,
                      spot=spot)  # fmt: skip
    rep.recomputed = f"{decision.verdict}:{decision.reason}"
    rep.add("decision reproduces the recorded verdict", rep.recomputed == rep.recorded,
            f"recomputed {rep.recomputed}, recorded {rep.recorded}")  # fmt: skip
    _log_checks(rep, svc, messages)
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
        return top + plot_h * (1.0 - (v - lo) / (hi - lo))

    def line(xs: np.ndarray, cls: str, dash: str = "") -> str:  # type: ignore[type-arg]
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
