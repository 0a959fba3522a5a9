"""``/audit``: the transparency log's head and the sessions, as server-rendered HTML.

Templates are Jinja2 files in ``prover_service/templates``; charts are inline SVG drawn by
:mod:`prover_service.audit_page`. Private transcripts stay private: unless the operator made
transcripts public, the page shows the tree head only (a browser does not sign requests), and
a session page answers 404 as for any unknown session.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from prover_service.api.deps import ServiceDep
from prover_service.api.schemas import HTML_READ_ERRORS
from prover_service.audit_page import bounds_chart
from prover_service.audit_summary import attribution_payload, iso_date, summary, trust
from prover_service.errors import NotFound

router = APIRouter(tags=["audit"])
templates = Jinja2Templates(directory=Path(__file__).parents[2] / "templates")
templates.env.filters["date"] = iso_date


@router.get("/audit", response_class=HTMLResponse, responses=HTML_READ_ERRORS,
            summary="The audit page: tree head, log size, sessions")  # fmt: skip
def audit_index(request: Request, service: ServiceDep) -> HTMLResponse:
    """Server-rendered HTML; the sessions are listed only where transcripts are public."""
    public = service.settings.public_transcripts
    rows = service.sessions.list(None, None, None, None) if public else []
    sessions = [summary(r, service) for r in reversed(rows)]
    return templates.TemplateResponse(request, "audit.html", {
        "prover_key": service.public_key, "head": service.log.head(), "public": public,
        "sessions": sessions,
    })  # fmt: skip


@router.get("/audit/sessions/{session_id}", response_class=HTMLResponse, responses=HTML_READ_ERRORS,
            summary="One session's audit, every check recomputed")  # fmt: skip
def audit_session_page(session_id: str, request: Request, service: ServiceDep) -> HTMLResponse:
    """Checks, per-target bounds chart, inclusion proofs and links to the raw messages."""
    if not service.settings.public_transcripts:
        raise NotFound(f"unknown session {session_id!r}")
    row = service.sessions.read(session_id, None)
    rep = service.audits.audit(service, row)  # a decided session's audit is computed once
    s = summary(row, service)
    chart = bounds_chart(rep.certificate, s["epsilon"]) if rep.certificate is not None else ""
    arrays = []
    if row.response_json:
        payload = json.loads(row.response_json)["payload"]
        arrays = [(name, payload[name]["sha256"]) for name in ("values", "probes")]
    return templates.TemplateResponse(request, "session.html", {
        "prover_key": service.public_key, "s": s, "rep": rep, "chart": chart, "arrays": arrays,
        "trust": trust(s, rep, attribution_payload(service, row)),
    })  # fmt: skip
