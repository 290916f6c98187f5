"""The JSON API behind the pages (documented at /docs and /openapi.json, login required).

Authentication: the browser session cookie plus the ``X-CSRF-Token``
header for changes, or ``Authorization: Bearer <API token>`` (made on the
Account page) for scripts.  Reads need the viewer role, changes the editor
role, the audit log the admin role.  Paths below ``/api/rules/`` that start
with ``_`` are operations, not rule names (a rule name cannot start so).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from dicom_node import __version__
from dicom_node.ops import admin_actions, dryrun, queries, selftest
from dicom_node.routing import rule_editing, rule_sources
from dicom_node.web import auth
from dicom_node.web.deps import admin, client_of, context, editor_write, viewer
from dicom_node.web.views_rules import rule_rows
from routing_rules import RuleError

router = APIRouter(prefix="/api")


class RuleText(BaseModel):
    text: str = Field(description="TOML text of exactly one [[rule]] (format: docs/rules.md)")
    note: str = Field("", description="why the change was made (kept with the version)")


class EnabledBody(BaseModel):
    enabled: bool


class OrderBody(BaseModel):
    names: list[str] = Field(description="rule names in the new evaluation order; they get order 10, 20, ...")


class DryRunBody(BaseModel):
    series_id: int = Field(description="id of a stored series (see /api/dry-run-series)")
    text: str | None = Field(None, description="a draft rule to evaluate in place of its saved version; omitted: the rules in force")


class ImportBody(BaseModel):
    files: dict[str, str] = Field(description="file name -> TOML text, as in a rules folder")
    delete_missing: bool = Field(False, description="delete rules that are in none of the files")


class SelfTestBody(BaseModel):
    rule: str
    destination: str


def _errors(errors: list[RuleError]) -> list[dict[str, Any]]:
    return [{"line": e.line, "rule": e.rule_name, "message": e.message} for e in errors]


def _database_only(request: Request) -> None:
    config = context(request).config
    if config.rules_source != "database":
        raise HTTPException(409, f"rules come from the folder {config.rules_folder}; edit the files there")


@router.get("/status", tags=["status"])
def status(request: Request, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    """Counts by state, and the rules in force."""
    ctx = context(request)
    with ctx.db.session() as session:
        counts = queries.counts(session)
    ruleset = ctx.ruleset()
    in_force = {}  # rule name -> version the node evaluates (None for rules from files)
    for rule in ruleset.rules:
        label = rule_sources.parse_version_label(rule.file)
        in_force[rule.name] = label[1] if label else None
    return {"version": __version__, "counts": counts,
            "rules": {"source": ctx.config.rules_source, "active": len(ruleset.rules), "errors": [str(e) for e in ruleset.errors],
                      "in_force": in_force}}


@router.get("/operations/counts", tags=["status"])
def operation_counts(request: Request, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    """What the operations page polls."""
    with context(request).db.session() as session:
        return queries.counts(session)


@router.get("/studies", tags=["operations"])
def studies(request: Request, limit: int = Query(30, ge=1, le=500), principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    with context(request).db.session() as session:
        return queries.recent_studies(session, limit)


@router.get("/studies/{study_id}", tags=["operations"])
def study(request: Request, study_id: int, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    with context(request).db.session() as session:
        detail = queries.study_detail(session, study_id)
    if detail is None:
        raise HTTPException(404, "no such study")
    return detail


# --- rules -------------------------------------------------------------------------------------------------


@router.get("/rules", tags=["rules"])
def list_rules(request: Request, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    rows, ruleset = rule_rows(request)
    return {"source": context(request).config.rules_source, "rules": rows, "errors": [str(e) for e in ruleset.errors]}


@router.get("/rules/_export", tags=["rules"])
def export_rules(request: Request, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    """Every rule as a file of its own, named in evaluation order (what `dicom-node rules export` writes)."""
    _database_only(request)
    return {"files": dict(rule_editing.export_texts(context(request).db))}


@router.post("/rules/_validate", tags=["rules"])
def validate_rule(request: Request, body: RuleText, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    """Check a draft; errors carry the line they concern."""
    rule, errors = rule_editing.check_rule_text(rule_editing.normalise_text(body.text), set(context(request).config.destinations))
    return {"valid": not errors, "name": rule.name if rule else None, "errors": _errors(errors)}


@router.post("/rules/_dry-run", tags=["rules"])
def dry_run(request: Request, body: DryRunBody, principal: auth.Principal = Depends(editor_write)) -> Any:
    """Which rules would fire for a stored series, and why (with a draft in place of its saved version)."""
    ctx = context(request)
    ruleset = ctx.ruleset()
    highlight = None
    if body.text is not None:
        rule, errors = rule_editing.check_rule_text(rule_editing.normalise_text(body.text), set(ctx.config.destinations))
        if errors:
            return JSONResponse({"errors": _errors(errors)}, status_code=422)
        ruleset, highlight = dryrun.with_candidate(ruleset, rule), rule.name
    try:
        data = dryrun.from_stored_series(ctx.db, body.series_id)
    except dryrun.DryRunError as exc:
        raise HTTPException(404, str(exc)) from None
    return dryrun.explain(ruleset, data, highlight)


@router.post("/rules/_dry-run-upload", tags=["rules"])
async def dry_run_upload(
    request: Request, files: list[UploadFile] = File(...), text: str | None = Form(None),
    principal: auth.Principal = Depends(editor_write),
) -> Any:
    """The same for uploaded DICOM files (multipart: ``files``, optional ``text``)."""
    ctx = context(request)
    ruleset = ctx.ruleset()
    highlight = None
    if text:
        rule, errors = rule_editing.check_rule_text(rule_editing.normalise_text(text), set(ctx.config.destinations))
        if errors:
            return JSONResponse({"errors": _errors(errors)}, status_code=422)
        ruleset, highlight = dryrun.with_candidate(ruleset, rule), rule.name
    try:
        data = dryrun.from_uploads([(f.filename or "upload", await f.read()) for f in files])
    except dryrun.DryRunError as exc:
        raise HTTPException(400, str(exc)) from None
    return dryrun.explain(ruleset, data, highlight)


@router.get("/dry-run-series", tags=["rules"])
def dry_run_series(request: Request, principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    """Recent stored series a dry run can use."""
    with context(request).db.session() as session:
        return queries.series_choices(session)


@router.post("/rules/_import", tags=["rules"])
def import_rules(request: Request, body: ImportBody, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Import rule files (a new version for each changed rule; invalid rules are reported and skipped)."""
    import tempfile
    from pathlib import Path

    _database_only(request)
    ctx = context(request)
    with tempfile.TemporaryDirectory(prefix="rules-import-") as tmp:
        for index, (name, text) in enumerate(sorted(body.files.items())):
            safe = "".join(c for c in Path(name).name if c.isalnum() or c in "._-")
            (Path(tmp) / f"{index:03d}-{safe or 'rules'}{'' if safe.endswith('.toml') else '.toml'}").write_text(text, encoding="utf-8")
        report = rule_editing.import_from_folder(ctx.db, tmp, author=principal.username, destinations=set(ctx.config.destinations),
                                             delete_missing=body.delete_missing, client=client_of(request))
    return {"created": report.created, "updated": report.updated, "unchanged": report.unchanged, "deleted": report.deleted,
            "errors": [str(e) for e in report.errors], "warnings": report.warnings}


@router.put("/rules/_order", tags=["rules"])
def set_order(request: Request, body: OrderBody, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    _database_only(request)
    try:
        changed = rule_editing.reorder(context(request).db, body.names, author=principal.username, client=client_of(request))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"changed": changed}


@router.post("/rules", tags=["rules"], status_code=201)
def create_rule(request: Request, body: RuleText, principal: auth.Principal = Depends(editor_write)) -> Any:
    return _save(request, body, principal, None)


def _save(request: Request, body: RuleText, principal: auth.Principal, name: str | None) -> Any:
    _database_only(request)
    ctx = context(request)
    result = rule_editing.save_rule(ctx.db, body.text, author=principal.username, note=body.note, destinations=set(ctx.config.destinations),
                                name=name, client=client_of(request))
    if not result.ok or result.version is None:
        return JSONResponse({"errors": _errors(result.errors)}, status_code=422)
    return {"name": result.version.rule_name, "version": result.version.version, "unchanged": result.unchanged, "diff": result.diff}


@router.get("/rules/{name}", tags=["rules"])
def get_rule(request: Request, name: str, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    _database_only(request)
    with context(request).db.session() as session:
        row = rule_sources.latest_version(session, name)
    if row is None or row.deleted:
        raise HTTPException(404, "no such rule")
    running = {r.name: r.file for r in context(request).ruleset().rules}.get(name)
    parsed = rule_sources.parse_version_label(running) if running else None
    return {"name": name, "version": row.version, "text": row.toml_text, "enabled": row.enabled, "order": row.order,
            "author": row.author, "saved_at": queries.iso(row.created_at), "note": row.change_note,
            "running_version": parsed[1] if parsed else None}


@router.put("/rules/{name}", tags=["rules"])
def update_rule(request: Request, name: str, body: RuleText, principal: auth.Principal = Depends(editor_write)) -> Any:
    return _save(request, body, principal, name)


@router.delete("/rules/{name}", tags=["rules"])
def delete_rule(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    _database_only(request)
    row = rule_editing.delete_rule(context(request).db, name, author=principal.username, client=client_of(request))
    if row is None:
        raise HTTPException(404, "no such rule")
    return {"name": name, "version": row.version, "deleted": True}


@router.post("/rules/{name}/enabled", tags=["rules"])
def set_enabled(request: Request, name: str, body: EnabledBody, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    _database_only(request)
    ctx = context(request)
    row = rule_editing.set_enabled(ctx.db, name, body.enabled, author=principal.username, client=client_of(request))
    if row is None:
        raise HTTPException(404, "no such rule")
    return {"name": name, "version": row.version, "enabled": row.enabled}


@router.get("/rules/{name}/versions", tags=["rules"])
def rule_versions(request: Request, name: str, principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    with context(request).db.session() as session:
        rows = rule_sources.history(session, name)
    if not rows:
        raise HTTPException(404, "no such rule")
    return [{"version": r.version, "author": r.author, "at": queries.iso(r.created_at), "note": r.change_note, "deleted": r.deleted,
             "enabled": r.enabled, "order": r.order, "text": r.toml_text} for r in rows]


# --- destinations, deliveries, models, self test, audit -------------------------------------------------------


@router.get("/destinations", tags=["destinations"])
def destinations(request: Request, principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return admin_actions.destination_rows(context(request).config)


@router.post("/destinations/{name}/echo", tags=["destinations"])
def echo(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """C-ECHO a DICOM destination (or check a folder destination is writable)."""
    ctx = context(request)
    if name not in ctx.config.destinations:
        raise HTTPException(404, "no such destination")
    ok, message = admin_actions.echo_destination(ctx.config, ctx.db, name, principal.username, client_of(request))
    return {"destination": name, "ok": ok, "message": message}


@router.get("/deliveries", tags=["deliveries"])
def deliveries(request: Request, state: str | None = None, limit: int = Query(100, ge=1, le=1000),
               principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    with context(request).db.session() as session:
        return queries.deliveries(session, state, limit)


@router.post("/deliveries/_retry-failed", tags=["deliveries"])
def retry_failed(request: Request, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    return {"queued": admin_actions.retry_deliveries(context(request).db, principal.username, client_of(request), None)}


@router.post("/deliveries/{delivery_id}/retry", tags=["deliveries"])
def retry(request: Request, delivery_id: int, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    return {"queued": admin_actions.retry_deliveries(context(request).db, principal.username, client_of(request), [delivery_id])}


@router.post("/jobs/{job_id}/retry", tags=["deliveries"])
def retry_job(request: Request, job_id: int, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Run a failed model job again."""
    return {"queued": admin_actions.retry_model_jobs(context(request).db, principal.username, client_of(request), [job_id])}


class DismissBody(BaseModel):
    note: str = Field("", description="why it is dismissed (kept with the series or study, and in the audit log)")


@router.get("/failed-dispatches", tags=["operations"])
def failed_dispatches(request: Request, principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    """Series and studies whose dispatch failed, with the reason; they wait for a retry or a dismiss."""
    with context(request).db.session() as session:
        return queries.failed_dispatches(session)


@router.post("/series/{series_id}/retry", tags=["operations"])
def retry_series(request: Request, series_id: int, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Put a failed series back to ``complete``: the next sweep dispatches it again."""
    return {"retried": admin_actions.retry_dispatch(context(request).db, principal.username, client_of(request), "series", series_id)}


@router.post("/series/{series_id}/dismiss", tags=["operations"])
def dismiss_series(request: Request, series_id: int, body: DismissBody | None = None,
                   principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Mark a failed series dispatched with nothing queued (its study goes on)."""
    note = body.note if body else ""
    return {"dismissed": admin_actions.dismiss_dispatch(context(request).db, principal.username, client_of(request), "series", series_id, note)}


@router.post("/studies/{study_id}/retry", tags=["operations"])
def retry_study(request: Request, study_id: int, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Put a failed study back to ``receiving``: the next sweep dispatches it again."""
    return {"retried": admin_actions.retry_dispatch(context(request).db, principal.username, client_of(request), "study", study_id)}


@router.post("/studies/{study_id}/dismiss", tags=["operations"])
def dismiss_study(request: Request, study_id: int, body: DismissBody | None = None,
                  principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Mark a failed study dispatched with nothing queued."""
    note = body.note if body else ""
    return {"dismissed": admin_actions.dismiss_dispatch(context(request).db, principal.username, client_of(request), "study", study_id, note)}


@router.get("/models", tags=["models"])
async def models(request: Request, principal: auth.Principal = Depends(viewer)) -> list[dict[str, Any]]:
    ctx = context(request)
    return await run_in_threadpool(admin_actions.model_rows, ctx.config, ctx.ruleset())


@router.post("/selftest", tags=["self test"], status_code=202)
def start_selftest(request: Request, body: SelfTestBody, principal: auth.Principal = Depends(editor_write)) -> dict[str, Any]:
    """Start a self test; poll GET /api/selftest/{id} for its steps."""
    ctx = context(request)
    try:
        return {"id": selftest.start(ctx.config, ctx.db, ctx.ruleset(), body.rule, body.destination,
                                     author=principal.username, client=client_of(request))}
    except selftest.SelfTestError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/selftest/{run_id}", tags=["self test"])
def selftest_state(request: Request, run_id: int, principal: auth.Principal = Depends(viewer)) -> dict[str, Any]:
    report = selftest.run_report(context(request).db, run_id)
    if report is None:
        raise HTTPException(404, "no such self test")
    return report


@router.get("/audit", tags=["audit"])
def audit(request: Request, action: str | None = None, user: str | None = None, limit: int = Query(500, ge=1, le=100_000),
          principal: auth.Principal = Depends(admin)) -> list[dict[str, Any]]:
    return admin_actions.audit_rows(context(request).db, action, user, limit)
