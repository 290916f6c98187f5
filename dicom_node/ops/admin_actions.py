"""What an operator does to the node, audited: retry deliveries and jobs, retry or dismiss failed series and studies, echo destinations; and the rows they look at.

Shared by the web pages, the JSON API and the CLI, so that each operation
is implemented and audited once.  ``actor`` is the user name recorded in
the audit log.
"""
from __future__ import annotations

import os
from typing import Any

from sqlalchemy import select

from ai_models.catalog import describe_models
from dicom_node.clock import utcnow
from dicom_node.config import FolderDestination, NodeConfig
from dicom_node.db import Database
from dicom_node.db.admin_models import AuditEntry, record_audit
from dicom_node.delivery.queue import retry
from dicom_node.delivery.send import echo
from dicom_node.jobs.queue import retry_jobs
from dicom_node.ops.queries import iso
from dicom_node.routing.failures import Level, dismiss_failed, retry_failed


def retry_deliveries(db: Database, actor: str, client: str | None, ids: list[int] | None) -> int:
    """Queue deliveries again (``None``: every failed one); audited as ``retry``."""
    count = retry(db, delivery_ids=ids, all_failed=ids is None)
    with db.write() as session:
        record_audit(session, "retry", username=actor, target="all failed deliveries" if ids is None else f"deliveries {ids}",
                     client=client, outcome="ok" if count else "failed", details={"queued": count})
    return count


def retry_model_jobs(db: Database, actor: str, client: str | None, ids: list[int]) -> int:
    """Run failed (or finished) model jobs again; audited as ``retry``."""
    count = retry_jobs(db, ids)
    with db.write() as session:
        record_audit(session, "retry", username=actor, target=f"jobs {ids}", client=client,
                     outcome="ok" if count else "failed", details={"queued": count})
    return count


def destination_rows(config: NodeConfig) -> list[dict[str, Any]]:
    """Every destination with where it points, for the destinations page and the API."""
    rows: list[dict[str, Any]] = []
    for name, dest in sorted(config.destinations.items()):
        if isinstance(dest, FolderDestination):
            rows.append({"name": name, "type": "folder", "where": str(dest.path)})
        else:
            rows.append({"name": name, "type": "dicom", "where": f"{dest.ae_title}@{dest.host}:{dest.port}",
                         "calling": dest.calling_ae_title or config.ae_title, "timeout": dest.timeout_seconds})
    return rows


def echo_destination(config: NodeConfig, db: Database, name: str, actor: str, client: str | None) -> tuple[bool, str]:
    """C-ECHO a DICOM destination, or check that a folder destination is writable; audited as ``echo``."""
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
        record_audit(session, "echo", username=actor, target=name, client=client, outcome="ok" if ok else "failed",
                     details={"result": message})
    return ok, message


def model_rows(config: NodeConfig, ruleset: Any = None) -> list[dict[str, Any]]:
    """Every model with its weight state and, given the rules in force, the rules that run it."""
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


AUDIT_FIELDS = ("id", "at", "username", "action", "target", "outcome", "client", "details")


def audit_rows(db: Database, action: str | None = None, username: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """The newest audit entries (``limit`` at most), optionally of one action prefix or one user."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action.startswith(action))
    if username:
        query = query.where(AuditEntry.username == username)
    with db.session() as session:
        return [{"id": e.id, "at": iso(e.at), "username": e.username, "action": e.action, "target": e.target,
                 "outcome": e.outcome, "client": e.client, "details": e.details} for e in session.scalars(query)]


def retry_dispatch(db: Database, actor: str, client: str | None, level: Level, row_id: int) -> bool:
    """A failed series back to ``complete`` (a failed study back to ``receiving``) for the next sweep; audited as ``retry``."""
    with db.write() as session:
        ok = retry_failed(session, level, row_id)
        record_audit(session, "retry", username=actor, target=f"{level} {row_id}", client=client,
                     outcome="ok" if ok else "failed", details={"result": "dispatched again by the next sweep" if ok else "not failed"})
    return ok


def dismiss_dispatch(db: Database, actor: str, client: str | None, level: Level, row_id: int, note: str | None = None) -> bool:
    """A failed series or study to ``dispatched`` with nothing queued (the reason kept, with the note); audited as ``dismiss``."""
    note = (note or "").strip()[:200] or None
    with db.write() as session:
        ok = dismiss_failed(session, level, row_id, actor, note, utcnow())
        record_audit(session, "dismiss", username=actor, target=f"{level} {row_id}", client=client,
                     outcome="ok" if ok else "failed", details={"note": note, "result": "dismissed" if ok else "not failed"})
    return ok
