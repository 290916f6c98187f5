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

from dicom_node import selftest
from dicom_node.config import FolderDestination, NodeConfig
from dicom_node.db import Database
from dicom_node.db.admin_models import AuditEntry, SelfTestRun, record_audit
from dicom_node.web import auth, ops
from dicom_node.web.deps import admin, client_of, context, editor_write, render, viewer

router = APIRouter()


@router.get("/", include_in_schema=False)
def home() -> Response:
    return RedirectResponse("/operations", status_code=303)


@router.get("/operations", include_in_schema=False)
def operations_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    with context(request).db.session() as session:
        values = {"counts": ops.counts(session), "studies": ops.recent_studies(session),
                  "failed": ops.deliveries(session, "failed", 50), "failed_jobs": ops.failed_jobs(session)}
    return render(request, "operations.html", principal, title="Operations", **values)


@router.get("/studies/{study_id}", include_in_schema=False)
def study_page(request: Request, study_id: int, principal: auth.Principal = Depends(viewer)) -> Response:
    with context(request).db.session() as session:
        study = ops.study_detail(session, study_id)
    if study is None:
        return render(request, "message.html", principal, status_code=404, title="No such study", message="That study is not in the database.")
    return render(request, "study.html", principal, title="Study", study=study)


def retry_deliveries(db: Database, principal: auth.Principal, client: str | None, ids: list[int] | None) -> int:
    """Queue deliveries again (``None``: every failed one); audited as ``retry``."""
    from dicom_node.delivery import retry

    count = retry(db, delivery_ids=ids, all_failed=ids is None)
    with db.write() as session:
        record_audit(session, "retry", username=principal.username, target="all failed deliveries" if ids is None else f"deliveries {ids}",
                     client=client, outcome="ok" if count else "failed", details={"queued": count})
    return count


@router.post("/deliveries/{delivery_id}/retry", include_in_schema=False)
async def retry_one(request: Request, delivery_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    count = await run_in_threadpool(retry_deliveries, ctx.db, principal, client_of(request), [delivery_id])
    auth.set_flash(ctx.db, principal, f"Delivery {delivery_id} queued again." if count else f"Delivery {delivery_id} cannot be retried (not failed or pending).")
    back = str(form.get("back", ""))
    return RedirectResponse(back if back.startswith("/") and not back.startswith("//") else "/operations", status_code=303)


def retry_model_jobs(db: Database, principal: auth.Principal, client: str | None, ids: list[int]) -> int:
    """Run failed (or finished) model jobs again; audited as ``retry``."""
    from dicom_node.jobs import retry_jobs

    count = retry_jobs(db, ids)
    with db.write() as session:
        record_audit(session, "retry", username=principal.username, target=f"jobs {ids}", client=client,
                     outcome="ok" if count else "failed", details={"queued": count})
    return count


@router.post("/jobs/{job_id}/retry", include_in_schema=False)
async def retry_job(request: Request, job_id: int, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    count = await run_in_threadpool(retry_model_jobs, ctx.db, principal, client_of(request), [job_id])
    auth.set_flash(ctx.db, principal, f"Job {job_id} queued again." if count else f"Job {job_id} cannot be run again (not failed or done).")
    return RedirectResponse("/operations", status_code=303)


@router.post("/deliveries/_retry-failed", include_in_schema=False)
async def retry_all(request: Request, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    count = await run_in_threadpool(retry_deliveries, ctx.db, principal, client_of(request), None)
    auth.set_flash(ctx.db, principal, f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again.")
    return RedirectResponse("/operations", status_code=303)


# --- destinations and models ---------------------------------------------------------------------------


def destination_rows(config: NodeConfig) -> list[dict[str, Any]]:
    rows = []
    for name, dest in sorted(config.destinations.items()):
        if isinstance(dest, FolderDestination):
            rows.append({"name": name, "type": "folder", "where": str(dest.path)})
        else:
            rows.append({"name": name, "type": "dicom", "where": f"{dest.ae_title}@{dest.host}:{dest.port}",
                         "calling": dest.calling_ae_title or config.ae_title, "timeout": dest.timeout_seconds})
    return rows


def echo_destination(config: NodeConfig, db: Database, name: str, principal: auth.Principal, client: str | None) -> tuple[bool, str]:
    """C-ECHO a DICOM destination, or check that a folder destination is writable; audited as ``echo``."""
    import os

    from dicom_node.sender import echo

    dest = config.destinations.get(name)
    if dest is None:
        ok, message = False, f"unknown destination {name!r}"
    elif isinstance(dest, FolderDestination):
        folder = dest.path if dest.path.exists() else dest.path.parent
        ok = folder.is_dir() and os.access(folder, os.W_OK)
        message = f"folder {dest.path} {'is writable' if ok else 'is missing or not writable'}"
    else:
        try:
            ok, message = echo(dest, config.ae_title)
        except Exception as exc:  # noqa: BLE001 - report any network error to the page
            ok, message = False, f"C-ECHO failed: {exc}"
    with db.write() as session:
        record_audit(session, "echo", username=principal.username, target=name, client=client, outcome="ok" if ok else "failed",
                     details={"result": message})
    return ok, message


@router.get("/destinations", include_in_schema=False)
def destinations_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    return render(request, "destinations.html", principal, title="Destinations", rows=destination_rows(context(request).config))


@router.post("/destinations/{name}/echo", include_in_schema=False)
async def echo_page(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    ok, message = await run_in_threadpool(echo_destination, ctx.config, ctx.db, name, principal, client_of(request))
    auth.set_flash(ctx.db, principal, f"{name}: {'OK' if ok else 'FAILED'}: {message}")
    return RedirectResponse("/destinations", status_code=303)


def model_rows(config: NodeConfig, ruleset: Any = None) -> list[dict[str, Any]]:
    """Every model with its weight state and, given the rules in force, the rules that run it."""
    from ai_models.cli import describe_models

    used_by: dict[str, list[str]] = {}
    for rule in ruleset.rules if ruleset is not None else []:
        for action in rule.actions:
            if action.type == "model" and isinstance(action.params.get("model"), str):
                used_by.setdefault(action.params["model"], []).append(rule.name)
    rows = describe_models(config.weights_dir)
    for row in rows:
        bad = any(w["found"] and w["valid"] is False for w in row["weights"])
        row["state"] = "ready" if row["available"] else "bad weights" if bad else "no weights"
        row["rules"] = used_by.get(row["name"], [])
    return rows


@router.get("/models", include_in_schema=False)
async def models_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    ctx = context(request)
    config = ctx.config
    rows = await run_in_threadpool(model_rows, config, ctx.ruleset())
    return render(request, "models.html", principal, title="Models", rows=rows, weights_dir=str(config.weights_dir))


# --- self test -------------------------------------------------------------------------------------------


@router.get("/selftest", include_in_schema=False)
def selftest_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    ctx = context(request)
    with ctx.db.session() as session:
        runs = [{"id": r.id, "rule": r.rule_name, "destination": r.destination, "state": r.state, "author": r.author,
                 "created_at": ops.iso(r.created_at), "error": r.error}
                for r in session.scalars(select(SelfTestRun).order_by(SelfTestRun.id.desc()).limit(20))]
    rules = [r.name for r in ctx.ruleset().rules]
    return render(request, "selftest.html", principal, title="Self test", runs=runs, rules=rules,
                  destinations=sorted(ctx.config.destinations), run=None)


def start_selftest(request: Request, principal: auth.Principal, rule: str, destination: str) -> int:
    ctx = context(request)
    ruleset = ctx.ruleset()
    run_id = selftest.create_run(ctx.config, ctx.db, ruleset, rule, destination, author=principal.username, client=client_of(request))
    selftest.start_in_background(ctx.config, ctx.db, run_id, ruleset)
    return run_id


@router.post("/selftest", include_in_schema=False)
async def selftest_start(request: Request, principal: auth.Principal = Depends(editor_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    try:
        run_id = await run_in_threadpool(start_selftest, request, principal, str(form.get("rule", "")), str(form.get("destination", "")))
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

AUDIT_FIELDS = ("id", "at", "username", "action", "target", "outcome", "client", "details")


def audit_rows(db: Database, action: str | None = None, username: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action.startswith(action))
    if username:
        query = query.where(AuditEntry.username == username)
    with db.session() as session:
        return [{"id": e.id, "at": ops.iso(e.at), "username": e.username, "action": e.action, "target": e.target,
                 "outcome": e.outcome, "client": e.client, "details": e.details} for e in session.scalars(query)]


def _audit_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    limit = params.get("limit", "500")
    return {"action": params.get("action") or None, "username": params.get("user") or None,
            "limit": max(1, min(int(limit) if limit.isdigit() else 500, 100_000))}


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    filters = _audit_filters(request)
    rows = audit_rows(context(request).db, **filters)
    return render(request, "audit.html", principal, title="Audit log", rows=rows, filters=filters, query=request.url.query)


@router.get("/audit.csv", include_in_schema=False)
def audit_csv(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=AUDIT_FIELDS)
    writer.writeheader()
    for row in audit_rows(context(request).db, **_audit_filters(request)):
        writer.writerow({**row, "details": json.dumps(row["details"]) if row["details"] is not None else ""})
    return Response(buffer.getvalue(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="audit.csv"'})


@router.get("/audit.json", include_in_schema=False)
def audit_json(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    body = json.dumps(audit_rows(context(request).db, **_audit_filters(request)), indent=1)
    return Response(body, media_type="application/json", headers={"Content-Disposition": 'attachment; filename="audit.json"'})
