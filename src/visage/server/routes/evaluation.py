"""``/v1/eval``: run ``eval verify`` on an uploaded pairs file and photos archive, read the
last report and its figures (admin scope; :mod:`visage.server.evaluation` bounds the upload)."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response

from ...errors import NotFound
from ..bodies import EVAL_BODY
from ..deps import AdminKey, EvalBody, EventsDep, PipelineDep, Purpose, ServicesDep
from ..evaluation import Report, input_hash, run_verify
from ..problems import problem_responses
from ..schemas import EvalReportOut

router = APIRouter(prefix="/v1/eval", tags=["evaluation"], responses=problem_responses())

PREFIX = "/v1/eval/last/"


def _out(report: Report, seq: int) -> EvalReportOut:
    return EvalReportOut(
        created_at=report.created_at,
        actor=report.actor,
        audit_seq=seq,
        figures={name: f"{PREFIX}{name}.png" for name in report.figures},
        report=report.document,
    )


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
        upload.pairs.data,
        upload.pairs.filename,
        io.BytesIO(upload.photos.data),
        pipeline,
        actor=key.id,
        scratch=services.settings.eval_scratch,
    )
    summary = report.document
    seq = events.record(
        "eval.verify",
        actor=key.id,
        purpose=purpose,
        input_hash=input_hash(upload.pairs.data, upload.photos.data),
        protocol=summary["protocol"],
        photos=summary["acquisition"]["photos"],
        accuracy=summary["accuracy"]["mean"],
    )
    services.evaluations.set(report, seq)
    return _out(report, seq)


@router.get("/last", response_model=EvalReportOut, responses=problem_responses([404]))
def eval_last(_key: AdminKey, services: ServicesDep) -> EvalReportOut:
    """The last report this server process made (404 before any run)."""
    last = services.evaluations.get()
    if last is None:
        raise NotFound("no evaluation has run on this server process yet")
    return _out(*last)


@router.get(
    "/last/{figure}.png",
    responses={200: {"content": {"image/png": {}}}, **problem_responses([404])},
    response_class=Response,
)
def eval_last_figure(
    _key: AdminKey,
    services: ServicesDep,
    figure: Annotated[str, PathParam(pattern=r"^[a-z_]{1,40}$", description="roc, det, scores")],
) -> Response:
    """One PNG figure of the last report."""
    last = services.evaluations.get()
    png = last[0].figures.get(figure) if last is not None else None
    if png is None:
        raise NotFound(f"no figure {figure!r} in the last evaluation")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
