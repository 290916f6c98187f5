"""Rule pages: list, editor (check, dry run, save), enable/disable, reorder, delete, history, import/export.

Editing writes to the database rule source (``[rules] source = "database"``).
With the folder source the same pages show the rules and run dry runs, but
saving is refused with a pointer to the folder (or to ``rules import``).
Paths that are not rule names start with ``_`` (a rule name cannot).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.responses import Response

from dicom_node.ops import dryrun, queries
from dicom_node.routing import rule_editing, rule_sources
from dicom_node.web import auth
from dicom_node.web.deps import WebContext, client_of, context, editor_write, render, viewer
from routing_rules import RuleError, dump_rules

router = APIRouter()

NEW_RULE_TEMPLATE = """[[rule]]
name = "my-rule"
description = "what this rule is for"

[rule.match]
Modality = "CT"

[[rule.actions]]
type = "forward"
destinations = [{destinations}]
"""


def annotate(text: str, errors: list[RuleError]) -> tuple[list[dict[str, Any]], list[str]]:
    """Lines of the text with the messages that concern each; messages without a line apart."""
    by_line: dict[int, list[str]] = {}
    loose = []
    count = len(text.split("\n"))
    for error in errors:
        message = f"rule '{error.rule_name}': {error.message}" if error.rule_name else error.message
        if error.line is not None and 1 <= error.line <= count:
            by_line.setdefault(error.line, []).append(message)
        else:
            loose.append(message)
    lines = [{"number": n, "text": line, "errors": by_line.get(n, [])} for n, line in enumerate(text.split("\n"), start=1)]
    return lines, loose


def rule_rows(request: Request) -> tuple[list[dict[str, Any]], Any]:
    """What the list shows: each rule with its saved version and the version the node runs."""
    ctx = context(request)
    ruleset = ctx.ruleset()
    live = {r.name: rule_sources.parse_version_label(r.file) for r in ruleset.rules}
    rows = []
    if ctx.config.rules_source == "database":
        with ctx.db.session() as session:
            versions = rule_sources.latest_versions(session)
        parsed = {r.name: r for r in rule_sources.build_ruleset(versions, set(ctx.config.destinations)).rules}
        for row in versions:
            rule = parsed.get(row.rule_name)
            running = live.get(row.rule_name)
            rows.append({
                "name": row.rule_name, "version": row.version, "enabled": row.enabled, "order": row.order,
                "author": row.author, "saved_at": queries.iso(row.created_at), "note": row.change_note,
                "level": rule.level if rule else "?", "fallback": bool(rule and rule.fallback), "stop": bool(rule and rule.stop),
                "description": rule.description if rule else "", "valid": rule is not None,
                "actions": [a.to_dict() for a in rule.actions] if rule else [],
                "running_version": running[1] if running else None,
            })
    else:
        for rule in ruleset.rules:
            rows.append({
                "name": rule.name, "version": None, "enabled": rule.enabled, "order": rule.order, "author": None,
                "saved_at": None, "note": f"{rule.file}:{rule.line}", "level": rule.level, "fallback": rule.fallback,
                "stop": rule.stop, "description": rule.description, "valid": True,
                "actions": [a.to_dict() for a in rule.actions], "running_version": None,
            })
    return rows, ruleset


@router.get("/rules", include_in_schema=False)
def rules_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    rows, ruleset = rule_rows(request)
    return render(request, "rules.html", principal, title="Rules", rows=rows, errors=[str(e) for e in ruleset.errors],
                  editable=context(request).config.rules_source == "database")


def _editor_values(request: Request, name: str | None) -> dict[str, Any]:
    ctx = context(request)
    with ctx.db.session() as session:
        choices = queries.series_choices(session)
    return {"name": name, "choices": choices, "editable": ctx.config.rules_source == "database"}


def _current_text(request: Request, name: str) -> str | None:
    ctx = context(request)
    if ctx.config.rules_source == "database":
        with ctx.db.session() as session:
            row = rule_sources.latest_version(session, name)
        return row.toml_text if row is not None and not row.deleted else None
    rule = ctx.ruleset().get(name)
    return dump_rules([rule]) if rule is not None else None


@router.get("/rules/_new", include_in_schema=False)
def new_rule_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    destinations = ", ".join(f'"{d}"' for d in sorted(context(request).config.destinations)[:1])
    text = NEW_RULE_TEMPLATE.format(destinations=destinations)
    lines, loose = annotate(text, [])
    return render(request, "rule_edit.html", principal, title="New rule", text=text, lines=lines, loose=loose, note="",
                  result=None, **_editor_values(request, None))


@router.get("/rules/_export.toml", include_in_schema=False)
def export_rules(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    ctx = context(request)
    if ctx.config.rules_source == "database":
        body = "\n".join(f"# ---- {name}\n{text}" for name, text in rule_editing.export_texts(ctx.db))
    else:
        body = dump_rules(ctx.ruleset().rules)
    return PlainTextResponse(body, headers={"Content-Disposition": 'attachment; filename="rules.toml"'})


@router.get("/rules/{name}", include_in_schema=False)
def edit_rule_page(request: Request, name: str, principal: auth.Principal = Depends(viewer)) -> Response:
    text = _current_text(request, name)
    if text is None:
        return render(request, "message.html", principal, status_code=404, title="No such rule", message=f"There is no rule named {name!r}.")
    lines, loose = annotate(text, [])
    return render(request, "rule_edit.html", principal, title=f"Rule {name}", text=text, lines=lines, loose=loose, note="",
                  result=None, **_editor_values(request, name))


async def _uploads(form: Any) -> list[tuple[str, bytes]]:
    files = []
    for value in form.getlist("files"):
        if isinstance(value, (UploadFile, StarletteUpload)) and value.filename:
            files.append((value.filename, await value.read()))
    return files


async def _editor_post(request: Request, principal: auth.Principal, name: str | None) -> Response:
    ctx = context(request)
    form = await request.form()
    text = rule_editing.normalise_text(str(form.get("text", "")))
    note = str(form.get("note", "")).strip()[:500]
    action = str(form.get("action", "check"))
    destinations = set(ctx.config.destinations)
    rule, errors = rule_editing.check_rule_text(text, destinations, expected_name=name)
    result = None
    message = None
    if action == "save" and not errors:
        if ctx.config.rules_source != "database":
            message = f"Rules come from the folder {ctx.config.rules_folder}: edit the files there (or set [rules] source = \"database\" and run `dicom-node rules import`)."
        else:
            saved = await run_in_threadpool(
                rule_editing.save_rule, ctx.db, text, author=principal.username, note=note, destinations=destinations,
                name=name, client=client_of(request),
            )
            if saved.ok and saved.version is not None:
                auth.set_flash(ctx.db, principal, f"Rule {saved.version.rule_name}: " + (
                    "no change, nothing saved." if saved.unchanged else f"saved as version {saved.version.version}; the node uses it within 2 s."))
                return RedirectResponse(f"/rules/{saved.version.rule_name}", status_code=303)
            errors = saved.errors
    if action == "dry_run" and not errors and rule is not None:
        try:
            series_id = str(form.get("series_id", "")).strip()
            uploads = await _uploads(form)
            if uploads:
                data = dryrun.from_uploads(uploads)
            elif series_id.isdigit():
                data = await run_in_threadpool(dryrun.from_stored_series, ctx.db, int(series_id))
            else:
                raise dryrun.DryRunError("choose a stored series or upload DICOM file(s) to dry-run against")
            result = dryrun.explain(dryrun.with_candidate(ctx.ruleset(), rule), data, highlight=rule.name)
        except dryrun.DryRunError as exc:
            message = f"Dry run: {exc}"
    elif action == "check" and not errors:
        message = "No problems found."
    lines, loose = annotate(text, errors)
    return render(request, "rule_edit.html", principal, status_code=422 if errors else 200,
                  title=f"Rule {name}" if name else "New rule", text=text, lines=lines, loose=loose, note=note,
                  result=result, message=message, error_count=len(errors), **_editor_values(request, name))


@router.post("/rules/_new", include_in_schema=False)
async def create_rule(request: Request, principal: auth.Principal = Depends(editor_write)) -> Response:
    return await _editor_post(request, principal, None)


def _require_database(request: Request, principal: auth.Principal) -> Response | None:
    ctx = context(request)
    if ctx.config.rules_source == "database":
        return None
    return render(request, "message.html", principal, status_code=409, title="Rules come from a folder",
                  message=f"This node reads its rules from {ctx.config.rules_folder}; change them there.")


def _back_to_list(ctx: WebContext, principal: auth.Principal, message: str) -> Response:
    """Flash the outcome of a change and go back to the rule list (post/redirect/get)."""
    auth.set_flash(ctx.db, principal, message)
    return RedirectResponse("/rules", status_code=303)


@router.post("/rules/_import", include_in_schema=False)
async def import_rules(request: Request, principal: auth.Principal = Depends(editor_write)) -> Response:
    import tempfile
    from pathlib import Path

    blocked = _require_database(request, principal)
    if blocked:
        return blocked
    ctx = context(request)
    form = await request.form()
    uploads = await _uploads(form)
    with tempfile.TemporaryDirectory(prefix="rules-import-") as tmp:
        for index, (filename, data) in enumerate(uploads):
            safe = "".join(c for c in Path(filename).name if c.isalnum() or c in "._-") or f"upload{index}.toml"
            (Path(tmp) / f"{index:03d}-{safe}").write_bytes(data)
        report = await run_in_threadpool(
            rule_editing.import_from_folder, ctx.db, tmp, author=principal.username, destinations=set(ctx.config.destinations),
            client=client_of(request),
        )
    lines = [f"Import: {report.summary()}."] + [f"Error: {e.message} (line {e.line})" for e in report.errors] + report.warnings
    return _back_to_list(ctx, principal, " ".join(lines))


@router.post("/rules/{name}", include_in_schema=False)
async def update_rule(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> Response:
    return await _editor_post(request, principal, name)


@router.post("/rules/{name}/enable", include_in_schema=False)
@router.post("/rules/{name}/disable", include_in_schema=False)
async def toggle_rule(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> Response:
    blocked = _require_database(request, principal)
    if blocked:
        return blocked
    ctx = context(request)
    enable = request.url.path.endswith("/enable")
    row = await run_in_threadpool(rule_editing.set_enabled, ctx.db, name, enable, author=principal.username, client=client_of(request))
    return _back_to_list(ctx, principal, f"Rule {name} {'enabled' if enable else 'disabled'}." if row else f"No rule {name}.")


@router.post("/rules/{name}/move", include_in_schema=False)
async def move_rule(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> Response:
    blocked = _require_database(request, principal)
    if blocked:
        return blocked
    ctx = context(request)
    form = await request.form()
    offset = -1 if form.get("direction") == "up" else 1
    try:
        changed = await run_in_threadpool(rule_editing.move, ctx.db, name, offset, author=principal.username, client=client_of(request))
    except ValueError as exc:
        return _back_to_list(ctx, principal, f"Cannot reorder: {exc}")
    return _back_to_list(ctx, principal, f"New order saved ({len(changed)} rule(s) renumbered)." if changed else "Order unchanged.")


@router.post("/rules/{name}/delete", include_in_schema=False)
async def delete_rule(request: Request, name: str, principal: auth.Principal = Depends(editor_write)) -> Response:
    blocked = _require_database(request, principal)
    if blocked:
        return blocked
    ctx = context(request)
    form = await request.form()
    row = await run_in_threadpool(rule_editing.delete_rule, ctx.db, name, author=principal.username,
                                  note=str(form.get("note", ""))[:500], client=client_of(request))
    return _back_to_list(ctx, principal, f"Rule {name} deleted (version {row.version} records it)." if row else f"No rule {name}.")


@router.get("/rules/{name}/history", include_in_schema=False)
def rule_history(request: Request, name: str, principal: auth.Principal = Depends(viewer)) -> Response:
    ctx = context(request)
    with ctx.db.session() as session:
        versions = rule_sources.history(session, name)
    if not versions:
        return render(request, "message.html", principal, status_code=404, title="No such rule", message=f"No rule {name!r} was ever saved here.")
    rows = []
    for i, row in enumerate(versions):
        previous = versions[i + 1] if i + 1 < len(versions) else None
        rows.append({
            "version": row.version, "author": row.author, "at": queries.iso(row.created_at), "note": row.change_note,
            "deleted": row.deleted, "enabled": row.enabled, "order": row.order, "text": row.toml_text,
            "diff": rule_editing.text_diff(previous.toml_text if previous else "", row.toml_text,
                                       f"v{previous.version}" if previous else "(new)", f"v{row.version}"),
        })
    return render(request, "rule_history.html", principal, title=f"History of {name}", name=name, rows=rows)
