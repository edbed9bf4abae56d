"""``/v1/eval``: run ``eval verify`` or ``eval identify`` on uploaded lists and a photos
archive, read the last report and its figures (admin scope; :mod:`visage.server.evaluation`
bounds the upload and keeps the report)."""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response

from ...errors import NotFound
from ..bodies import EVAL_BODY, EVAL_IDENTIFY_BODY
from ..deps import (
    AdminKey,
    EvalBody,
    EventsDep,
    IdentifyEvalBody,
    PipelineDep,
    Purpose,
    ServicesDep,
)
from ..evaluation import Report, input_hash, run_identify, run_verify
from ..events import EventLog
from ..problems import problem_responses
from ..schemas import EvalReportOut
from ..services import Services

router = APIRouter(prefix="/v1/eval", tags=["evaluation"], responses=problem_responses())

PREFIX = "/v1/eval/last/"


def _out(report: Report, seq: int) -> EvalReportOut:
    return EvalReportOut(
        kind=report.kind,
        created_at=report.created_at,
        actor=report.actor,
        audit_seq=seq,
        figures={name: f"{PREFIX}{name}.png" for name in report.figures},
        report=report.document,
    )


def _keep(
    report: Report,
    services: Services,
    events: EventLog,
    *,
    purpose: str | None,
    sent: tuple[bytes, ...],
    **summary: Any,
) -> EvalReportOut:
    """Audit the run (``eval.<kind>``, the hash of what was sent) and keep it as the last."""
    seq = events.record(
        f"eval.{report.kind}",
        actor=report.actor,
        purpose=purpose,
        input_hash=input_hash(*sent),
        photos=report.document["acquisition"]["photos"],
        **summary,
    )
    services.evaluations.set(report, seq)
    return _out(report, seq)


@router.post(
    "/verify",
    response_model=EvalReportOut,
    openapi_extra=EVAL_BODY,
    responses=problem_responses([413, 415]),
)
def eval_verify(
    key: AdminKey,
    upload: EvalBody,
    services: ServicesDep,
    pipeline: PipelineDep,
    events: EventsDep,
    purpose: Purpose = None,
) -> EvalReportOut:
    """Run the pairs protocol over the zipped photos as ``visage eval verify`` does and keep
    its report as the last one; the photos and embeddings are deleted when it ends. Runs in a
    worker thread: about 40 ms per distinct photo (pairs_dev's 600 pairs, 418 photos: 17 s)."""
    report = run_verify(
        upload.pairs,
        io.BytesIO(upload.photos.data),
        pipeline,
        actor=key.id,
        scratch=services.settings.eval_scratch,
    )
    return _keep(
        report,
        services,
        events,
        purpose=purpose,
        sent=(upload.pairs.data, upload.photos.data),
        protocol=report.document["protocol"],
        accuracy=report.document["accuracy"]["mean"],
    )


@router.post(
    "/identify",
    response_model=EvalReportOut,
    openapi_extra=EVAL_IDENTIFY_BODY,
    responses=problem_responses([413, 415]),
)
def eval_identify(
    key: AdminKey,
    upload: IdentifyEvalBody,
    services: ServicesDep,
    pipeline: PipelineDep,
    events: EventsDep,
    purpose: Purpose = None,
) -> EvalReportOut:
    """Search the probe list against the gallery list over the zipped photos as ``visage eval
    identify`` does (rank-1, rank-5, CMC, FNIR at FPIR, the gallery's own decision) and keep
    its report as the last one; the photos, embeddings and the throw-away gallery are deleted
    when it ends. Runs in a worker thread: about 40 ms per distinct photo."""
    report = run_identify(
        upload.gallery,
        upload.probes,
        io.BytesIO(upload.photos.data),
        pipeline,
        actor=key.id,
        scratch=services.settings.eval_scratch,
    )
    return _keep(
        report,
        services,
        events,
        purpose=purpose,
        sent=(upload.gallery.data, upload.probes.data, upload.photos.data),
        persons=report.document["persons"],
        rank1=report.document["rank1"],
    )


@router.get("/last", response_model=EvalReportOut, responses=problem_responses([404]))
def eval_last(_key: AdminKey, services: ServicesDep) -> EvalReportOut:
    """The last report any process on this store made, verify or identify (404 before any)."""
    last = services.evaluations.get()
    if last is None:
        raise NotFound("no evaluation has run on this server yet")
    return _out(*last)


@router.get(
    "/last/{figure}.png",
    responses={200: {"content": {"image/png": {}}}, **problem_responses([404])},
    response_class=Response,
)
def eval_last_figure(
    _key: AdminKey,
    services: ServicesDep,
    figure: Annotated[
        str,
        PathParam(
            pattern=r"^[a-z_]{1,40}$",
            description="verify: roc, det, scores; identify: cmc, operating_curve, "
            "search_scores (those its report lists)",
        ),
    ],
) -> Response:
    """One PNG figure of the last report."""
    last = services.evaluations.get()
    png = last[0].figures.get(figure) if last is not None else None
    if png is None:
        raise NotFound(f"no figure {figure!r} in the last evaluation")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
