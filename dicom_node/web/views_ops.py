"""Operations, destinations, models, self test and audit pages."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dicom_node.db.admin_models import SelfTestRun
from dicom_node.db.states import DeliveryState
from dicom_node.ops import admin_actions, queries, selftest
from dicom_node.routing.failures import Level
from dicom_node.web import auth
from dicom_node.web.deps import admin, client_of, context, editor_write, render, viewer

router = APIRouter()


@router.get("/", include_in_schema=False)
def home() -> Response:
    return RedirectResponse("/operations", status_code=303)


@router.get("/operations", include_in_schema=False)
def operations_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    with context(request).db.session() as session:
        values: dict[str, Any] = {"counts": queries.counts(session), "studies": queries.recent_studies(session),
                  "failed": queries.deliveries(session, DeliveryState.FAILED, 50), "failed_jobs": queries.failed_jobs(session),
                  "failed_dispatches": queries.failed_dispatches(session)}
    return render(request, "operations.html", principal, title="Operations", **values)


@router.get("/studies/{study_id}", include_in_schema=False)
def study_page(request: Request, study_id: int, principal: auth.Principal = Depends(viewer)) -> Response:
    with context(request).db.session() as session:
        study = queries.study_detail(session, study_id)
    if study is None:
        return render(request, "message.html", principal, status_code=404, title="No such study", message="That study is not in the database.")
    return render(request, "study.html", principal, title="Study", study=study)


@router.post("/deliveries/{delivery_id}/retry", include_in_schema=False)
async def retry_one(request: Request, delivery_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    count = await run_in_threadpool(admin_actions.retry_deliveries, ctx.db, principal.username, client_of(request), [delivery_id])
    auth.set_flash(ctx.db, principal, f"Delivery {delivery_id} queued again." if count else f"Delivery {delivery_id} cannot be retried (not failed or pending).")
    back = str(form.get("back", ""))
    return RedirectResponse(back if back.startswith("/") and not back.startswith("//") else "/operations", status_code=303)


@router.post("/jobs/{job_id}/retry", include_in_schema=False)
async def retry_job(request: Request, job_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    count = await run_in_threadpool(admin_actions.retry_model_jobs, ctx.db, principal.username, client_of(request), [job_id])
    auth.set_flash(ctx.db, principal, f"Job {job_id} queued again." if count else f"Job {job_id} cannot be run again (not failed or done).")
    return RedirectResponse("/operations", status_code=303)


async def _failed_dispatch(request: Request, principal: auth.Principal, level: Level, row_id: int, dismiss: bool) -> Response:
    """Retry or dismiss one failed series or study from the operations page (the note comes from the form)."""
    ctx = context(request)
    form = await request.form()
    if dismiss:
        ok = await run_in_threadpool(admin_actions.dismiss_dispatch, ctx.db, principal.username, client_of(request), level, row_id,
                                     str(form.get("note", "")))
        done = "dismissed: marked dispatched, nothing queued"
    else:
        ok = await run_in_threadpool(admin_actions.retry_dispatch, ctx.db, principal.username, client_of(request), level, row_id)
        done = "will be dispatched again by the next sweep"
    auth.set_flash(ctx.db, principal, f"{level.capitalize()} {row_id} {done}." if ok else f"{level.capitalize()} {row_id} is not failed: nothing done.")
    return RedirectResponse("/operations", status_code=303)


@router.post("/series/{series_id}/retry", include_in_schema=False)
async def retry_series(request: Request, series_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    return await _failed_dispatch(request, principal, "series", series_id, dismiss=False)


@router.post("/series/{series_id}/dismiss", include_in_schema=False)
async def dismiss_series(request: Request, series_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    return await _failed_dispatch(request, principal, "series", series_id, dismiss=True)


@router.post("/studies/{study_id}/retry", include_in_schema=False)
async def retry_study(request: Request, study_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    return await _failed_dispatch(request, principal, "study", study_id, dismiss=False)


@router.post("/studies/{study_id}/dismiss", include_in_schema=False)
async def dismiss_study(request: Request, study_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    return await _failed_dispatch(request, principal, "study", study_id, dismiss=True)


@router.post("/deliveries/_retry-failed", include_in_schema=False)
async def retry_all(request: Request, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    count = await run_in_threadpool(admin_actions.retry_deliveries, ctx.db, principal.username, client_of(request), None)
    auth.set_flash(ctx.db, principal, f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again.")
    return RedirectResponse("/operations", status_code=303)


# --- destinations and models ---------------------------------------------------------------------------


@router.get("/destinations", include_in_schema=False)
def destinations_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    return render(request, "destinations.html", principal, title="Destinations", rows=admin_actions.destination_rows(context(request).config))


@router.post("/destinations/{name}/echo", include_in_schema=False)
async def echo_page(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    ok, message = await run_in_threadpool(admin_actions.echo_destination, ctx.config, ctx.db, name, principal.username, client_of(request))
    auth.set_flash(ctx.db, principal, f"{name}: {'OK' if ok else 'FAILED'}: {message}")
    return RedirectResponse("/destinations", status_code=303)


@router.get("/models", include_in_schema=False)
async def models_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    ctx = context(request)
    config = ctx.config
    rows = await run_in_threadpool(admin_actions.model_rows, config, ctx.ruleset())
    return render(request, "models.html", principal, title="Models", rows=rows, weights_dir=str(config.weights_dir))


# --- self test -------------------------------------------------------------------------------------------


@router.get("/selftest", include_in_schema=False)
def selftest_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    ctx = context(request)
    with ctx.db.session() as session:
        runs = [{"id": r.id, "rule": r.rule_name, "destination": r.destination, "state": r.state, "author": r.author,
                 "created_at": queries.iso(r.created_at), "error": r.error}
                for r in session.scalars(select(SelfTestRun).order_by(SelfTestRun.id.desc()).limit(20))]
    rules = [r.name for r in ctx.ruleset().rules]
    return render(request, "selftest.html", principal, title="Self test", runs=runs, rules=rules,
                  destinations=sorted(ctx.config.destinations), run=None)


@router.post("/selftest", include_in_schema=False)
async def selftest_start(request: Request, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    try:
        run_id = await run_in_threadpool(selftest.start, ctx.config, ctx.db, ctx.ruleset(), str(form.get("rule", "")),
                                         str(form.get("destination", "")), author=principal.username, client=client_of(request))
    except selftest.SelfTestError as exc:
        auth.set_flash(ctx.db, principal, f"Self test not started: {exc}")
        return RedirectResponse("/selftest", status_code=303)
    return RedirectResponse(f"/selftest/{run_id}", status_code=303)


@router.get("/selftest/{run_id}", include_in_schema=False)
def selftest_run_page(request: Request, run_id: int, principal: auth.Principal = Depends(viewer)) -> Response:
    report = selftest.run_report(context(request).db, run_id)
    if report is None:
        return render(request, "message.html", principal, status_code=404, title="No such self test", message="That run does not exist.")
    return render(request, "selftest_run.html", principal, title=f"Self test {run_id}", run=report)


# --- audit -------------------------------------------------------------------------------------------------

def _audit_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    limit = params.get("limit", "500")
    return {"action": params.get("action") or None, "username": params.get("user") or None,
            "limit": max(1, min(int(limit) if limit.isdigit() else 500, 100_000))}


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    filters = _audit_filters(request)
    rows = admin_actions.audit_rows(context(request).db, **filters)
    return render(request, "audit.html", principal, title="Audit log", rows=rows, filters=filters, query=request.url.query)


@router.get("/audit.csv", include_in_schema=False)
def audit_csv(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    """The audit log as CSV; cells that a spreadsheet would run as a formula get a leading ``'`` (OWASP).

    A failed login writes whatever name was typed, so ``=HYPERLINK(...)`` from
    an anonymous visitor must reach the admin's spreadsheet as text.
    """

    def cell(value: object) -> object:
        if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
            return "'" + value
        return value

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=admin_actions.AUDIT_FIELDS)
    writer.writeheader()
    for row in admin_actions.audit_rows(context(request).db, **_audit_filters(request)):
        row = {**row, "details": json.dumps(row["details"]) if row["details"] is not None else ""}
        writer.writerow({key: cell(value) for key, value in row.items()})
    return Response(buffer.getvalue(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="audit.csv"'})


@router.get("/audit.json", include_in_schema=False)
def audit_json(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    body = json.dumps(admin_actions.audit_rows(context(request).db, **_audit_filters(request)), indent=1)
    return Response(body, media_type="application/json", headers={"Content-Disposition": 'attachment; filename="audit.json"'})
