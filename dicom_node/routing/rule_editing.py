"""Editing the rules kept in the database: save, enable, reorder, delete, import, export, each a new version.

Each rule is stored as the TOML text of one ``[[rule]]`` (the same format
as rule files, see docs/rules.md); every change adds a row to
``rule_versions`` (who, when, why) and an audit entry; the newest
non-deleted version of each rule is the one in force
(:class:`dicom_node.routing.rule_sources.DatabaseRules` reads it).

Evaluation order is ``order`` then rule name (a rules folder breaks ties by
file name; :func:`export_to_folder` numbers the files in evaluation order so
the exported folder routes the same way).  :func:`import_from_folder` and
:func:`export_to_folder` let the rules live in git as well.
"""
from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.clock import utcnow
from dicom_node.db import Database
from dicom_node.db.admin_models import RuleVersion, record_audit
from dicom_node.routing.actions import NODE_ACTIONS
from dicom_node.routing.rule_sources import latest_version, latest_versions
from routing_rules import RuleError, RuleSet, dump_rules, load_rules, parse_rules_text, rule_files

log = logging.getLogger("dicom_node.rules")

_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]\s*(#.*)?$")
_TABLE_HEADER = re.compile(r"^\s*\[")
_NAME_LINE = re.compile(r"^\s*name\s*=")


def normalise_text(text: str) -> str:
    """Browser textareas send CRLF; store LF and exactly one final newline."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"


def text_diff(old: str, new: str, old_label: str = "before", new_label: str = "after") -> str:
    """A unified diff, as stored in the audit log and shown in the history."""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_label, new_label))


@dataclass
class SaveResult:
    """Outcome of a save: the new version, or the errors (with lines) that prevented it."""

    version: RuleVersion | None = None
    errors: list[RuleError] = field(default_factory=list)
    unchanged: bool = False
    diff: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def _line_of(text: str, pattern: re.Pattern[str]) -> int | None:
    for number, line in enumerate(text.split("\n"), start=1):
        if pattern.match(line):
            return number
    return None


def check_rule_text(
    text: str, destinations: Iterable[str] | None, *, label: str = "<editor>", expected_name: str | None = None
) -> tuple[Any, list[RuleError]]:
    """Validate the text of one rule: (the rule or None, errors with line numbers)."""
    parsed = parse_rules_text(text, label, destinations, NODE_ACTIONS)
    errors = list(parsed.errors)
    if errors:
        return None, errors
    if len(parsed.rules) != 1:
        what = "no rule" if not parsed.rules else f"{len(parsed.rules)} rules"
        return None, [RuleError(label, _line_of(text, _RULE_HEADER) or 1, None, f"the text holds {what}; write exactly one [[rule]] here")]
    rule = parsed.rules[0]
    if expected_name is not None and rule.name != expected_name:
        message = f"the name cannot change here (this rule is '{expected_name}'); create a new rule with the new name and delete this one"
        return None, [RuleError(label, _line_of(text, _NAME_LINE), rule.name, message)]
    return rule, []


def _next_version(session: Session, name: str) -> int:
    return (session.scalar(select(func.max(RuleVersion.version)).where(RuleVersion.rule_name == name)) or 0) + 1


def _add_version(session: Session, rule: Any, text: str, author: str, note: str, *, deleted: bool = False) -> RuleVersion:
    row = RuleVersion(
        rule_name=rule.name, version=_next_version(session, rule.name), toml_text=text, enabled=rule.enabled,
        order=rule.order, deleted=deleted, author=author, created_at=utcnow(), change_note=note,
    )
    session.add(row)
    session.flush()
    return row


def save_rule(
    db: Database,
    text: str,
    *,
    author: str,
    note: str = "",
    destinations: Iterable[str] | None,
    name: str | None = None,
    client: str | None = None,
    audit_action: str | None = None,
) -> SaveResult:
    """Create (``name`` None) or edit rule ``name`` from its TOML text; audited.

    Creating fails if a rule of that name exists; editing keeps the name.
    Saving the text in force again adds no version (``unchanged``).
    """
    text = normalise_text(text)
    rule, errors = check_rule_text(text, destinations, expected_name=name)
    if errors:
        return SaveResult(errors=errors)
    with db.write() as session:
        current = latest_version(session, rule.name)
        exists = current is not None and not current.deleted
        if name is None and exists:
            line = _line_of(text, _NAME_LINE)
            return SaveResult(errors=[RuleError("<editor>", line, rule.name, f"a rule named '{rule.name}' exists already; edit it instead")])
        if name is not None and not exists:
            return SaveResult(errors=[RuleError("<editor>", None, name, f"rule '{name}' does not exist (deleted meanwhile?)")])
        old_text = current.toml_text if exists and current is not None else ""
        if exists and current is not None and old_text == text:
            return SaveResult(version=current, unchanged=True)
        row = _add_version(session, rule, text, author, note)
        diff = text_diff(old_text, text, f"v{row.version - 1}" if exists else "(new)", f"v{row.version}")
        record_audit(
            session, audit_action or ("rule.edit" if exists else "rule.create"), username=author, target=rule.name, client=client,
            details={"version": row.version, "note": note, "diff": diff},
        )
        return SaveResult(version=row, diff=diff)


def set_top_key(text: str, key: str, value: str) -> str:
    """Set ``key = value`` among the rule's own keys (before its first sub-table), keeping the rest verbatim."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if _RULE_HEADER.match(line)), None)
    if start is None:
        raise ValueError("no [[rule]] header line")
    end = next((i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines))
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if key_re.match(lines[i]):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines)
    after = next((i for i in range(start + 1, end) if _NAME_LINE.match(lines[i])), start)
    lines.insert(after + 1, f"{key} = {value}")
    return "\n".join(lines)


def _rewritten(rule: Any, text: str, destinations: Iterable[str] | None, **changes: Any) -> str:
    """The text with ``enabled``/``order`` changed; comments and layout kept when possible."""
    try:
        new = text
        for key, value in changes.items():
            new = set_top_key(new, key, "true" if value is True else "false" if value is False else str(value))
        checked, errors = check_rule_text(new, destinations, expected_name=rule.name)
        if not errors and all(getattr(checked, k) == v for k, v in changes.items()):
            return normalise_text(new)
    except ValueError:
        pass
    # An unusual layout (inline tables, multi-line strings): write the rule out canonically.
    return normalise_text(dump_rules([replace(rule, **changes)]))


def set_enabled(db: Database, name: str, enabled: bool, *, author: str, client: str | None = None) -> RuleVersion | None:
    """Enable or disable a rule (a new version); None if it does not exist.

    Destinations are not checked: disabling a rule whose destination left
    node.toml must stay possible.
    """
    with db.write() as session:
        current = latest_version(session, name)
        if current is None or current.deleted:
            return None
        rule, errors = check_rule_text(current.toml_text, None, expected_name=name)
        if rule is None:
            raise ValueError("; ".join(str(e) for e in errors))
        if rule.enabled == enabled:
            return current
        text = _rewritten(rule, current.toml_text, None, enabled=enabled)
        row = _add_version(session, replace(rule, enabled=enabled), text, author, "enabled" if enabled else "disabled")
        record_audit(session, "rule.enable" if enabled else "rule.disable", username=author, target=name, client=client,
                     details={"version": row.version, "diff": text_diff(current.toml_text, text, f"v{current.version}", f"v{row.version}")})
        return row


def reorder(db: Database, names: list[str], *, author: str, client: str | None = None, step: int = 10) -> list[str]:
    """Give the rules ``names`` (in that order) orders 10, 20, ...; returns the rules that changed.

    Rules not named keep their order.  Each changed rule gets a new version.
    """
    if len(set(names)) != len(names):
        raise ValueError("a rule is named twice in the new order")
    changed = []
    with db.write() as session:
        current = {r.rule_name: r for r in latest_versions(session)}
        unknown = [n for n in names if n not in current]
        if unknown:
            raise ValueError(f"unknown rule(s): {', '.join(unknown)}")
        for position, name in enumerate(names, start=1):
            row = current[name]
            wanted = position * step
            if row.order == wanted:
                continue
            rule, errors = check_rule_text(row.toml_text, None, expected_name=name)
            if rule is None:
                raise ValueError("; ".join(str(e) for e in errors))
            text = _rewritten(rule, row.toml_text, None, order=wanted)
            _add_version(session, replace(rule, order=wanted), text, author, f"order {row.order} -> {wanted}")
            changed.append(name)
        if changed:
            record_audit(session, "rule.reorder", username=author, target=", ".join(changed)[:255], client=client,
                         details={"order": names, "changed": changed})
    return changed


def move(db: Database, name: str, offset: int, *, author: str, client: str | None = None) -> list[str]:
    """Move a rule ``offset`` places in the evaluation order (negative: earlier)."""
    with db.session() as session:
        names = [r.rule_name for r in latest_versions(session)]
    if name not in names:
        raise ValueError(f"unknown rule: {name}")
    index = names.index(name)
    target = max(0, min(len(names) - 1, index + offset))
    names.insert(target, names.pop(index))
    return reorder(db, names, author=author, client=client)


def delete_rule(db: Database, name: str, *, author: str, note: str = "", client: str | None = None) -> RuleVersion | None:
    """Delete a rule: a last version marked deleted (the history stays readable)."""
    with db.write() as session:
        current = latest_version(session, name)
        if current is None or current.deleted:
            return None
        row = RuleVersion(
            rule_name=name, version=current.version + 1, toml_text=current.toml_text, enabled=False, order=current.order,
            deleted=True, author=author, created_at=utcnow(), change_note=note or "deleted",
        )
        session.add(row)
        session.flush()
        record_audit(session, "rule.delete", username=author, target=name, client=client, details={"version": row.version, "text": current.toml_text})
        return row


# --- folders (git) ---------------------------------------------------------------------------------


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.created)} created, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
                f"{len(self.deleted)} deleted, {len(self.errors)} error(s)")


def _texts_of_folder(folder: Path, destinations: Iterable[str] | None) -> tuple[list[tuple[Any, str]], RuleSet]:
    """Each valid rule of a folder with its own text: a one-rule file verbatim, else written out."""
    ruleset = load_rules(folder, destinations, NODE_ACTIONS)
    verbatim: dict[str, str] = {}
    for path in rule_files(folder):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # load_rules reported it
        alone = parse_rules_text(text, str(path), None, NODE_ACTIONS)
        if len(alone.rules) == 1 and not alone.errors:
            verbatim[str(path)] = normalise_text(text)
    out = []
    for rule in ruleset.rules:
        text = verbatim.get(rule.file) or normalise_text(dump_rules([replace(rule, file="", line=None)]))
        out.append((rule, text))
    return out, ruleset


def import_from_folder(
    db: Database, folder: str | Path, *, author: str, destinations: Iterable[str] | None,
    delete_missing: bool = False, client: str | None = None,
) -> ImportReport:
    """Bring the rules of a folder into the database (a new version for each changed rule).

    Invalid rules are reported and skipped; valid ones are imported.  With
    ``delete_missing`` rules that are not in the folder are deleted, so the
    database ends up equal to the folder.
    """
    folder = Path(folder)
    report = ImportReport()
    pairs, ruleset = _texts_of_folder(folder, destinations)
    report.errors = list(ruleset.errors)
    if ruleset.errors and not ruleset.rules and not folder.is_dir():
        return report
    folder_order = [rule.name for rule, _ in pairs]
    db_order = [rule.name for rule, _ in sorted(pairs, key=lambda p: (p[0].order, p[0].name))]
    if folder_order != db_order:
        report.warnings.append(
            "rules with equal 'order' run in file-name order in a folder but in name order in the database; "
            f"folder order: {', '.join(folder_order)}; give them distinct 'order' values to keep it"
        )
    with db.write() as session:
        for rule, text in pairs:
            current = latest_version(session, rule.name)
            exists = current is not None and not current.deleted
            if exists and current is not None and current.toml_text == text:
                report.unchanged.append(rule.name)
                continue
            _add_version(session, rule, text, author, f"imported from {folder}")
            (report.updated if exists else report.created).append(rule.name)
        if delete_missing:
            keep = set(folder_order)
            for row in latest_versions(session):
                if row.rule_name not in keep:
                    session.add(RuleVersion(
                        rule_name=row.rule_name, version=row.version + 1, toml_text=row.toml_text, enabled=False, order=row.order,
                        deleted=True, author=author, created_at=utcnow(), change_note=f"not in {folder} (import)",
                    ))
                    report.deleted.append(row.rule_name)
        record_audit(
            session, "rule.import", username=author, target=str(folder), client=client,
            outcome="ok" if not report.errors else "partial",
            details={"created": report.created, "updated": report.updated, "deleted": report.deleted,
                     "errors": [str(e) for e in report.errors], "warnings": report.warnings},
        )
    return report


def export_texts(db: Database) -> list[tuple[str, str]]:
    """(file name, text) of every rule in force, numbered in evaluation order."""
    with db.session() as session:
        rows = latest_versions(session)
    return [(f"{i:03d}-{row.rule_name}.toml", row.toml_text) for i, row in enumerate(rows, start=1)]


def export_to_folder(db: Database, folder: str | Path, *, author: str | None = None, client: str | None = None) -> list[Path]:
    """Write one file per rule, ``NNN-<rule>.toml`` in evaluation order.

    Files of an earlier export (``NNN-<a rule this database knows>.toml``)
    that are not rewritten now are removed, so a moved or deleted rule does
    not linger twice; any other file in the folder is left alone.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    texts = export_texts(db)
    keep = {name for name, _ in texts}
    with db.session() as session:
        known = set(session.scalars(select(RuleVersion.rule_name).distinct()).all())
    for stale in folder.glob("[0-9][0-9][0-9]-*.toml"):
        if stale.name not in keep and stale.stem[4:] in known:
            stale.unlink()
    for name, text in texts:
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if author is not None:
        with db.write() as session:
            record_audit(session, "rule.export", username=author, target=str(folder), client=client, details={"files": len(written)})
    return written
