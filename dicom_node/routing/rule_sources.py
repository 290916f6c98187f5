"""Where the rules in force come from: the rules folder, the database, and the self-test overlay.

Each source offers ``current()`` (the :class:`routing_rules.RuleSet` in
force) and ``reload_if_changed()`` (called every 2 s), so the dispatcher
does not know where rules come from:

* :class:`NodeRules`: ``deploy/rules/*.toml`` (``[rules] source = "folder"``),
  reloaded when a file changes;
* :class:`DatabaseRules`: the newest version of each rule in ``rule_versions``
  (``source = "database"``, edited in the admin app, see
  :mod:`dicom_node.routing.rule_editing`);
* :class:`SelfTestRules`: the rules of running self tests, placed before the
  base source's rules.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_models import available_models
from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Database
from dicom_node.db.admin_models import RuleVersion, SelfTestRun
from dicom_node.db.states import SelfTestState
from dicom_node.routing.actions import NODE_ACTIONS
from routing_rules import RuleSet, load_rules, parse_rules_text
from routing_rules.store import RulesStore

log = logging.getLogger("dicom_node.rules")

_FILE_RE = re.compile(r"^db:(?P<name>.+)@v(?P<version>\d+)$")
# Self-test runs whose rules are in force (SelfTestRun.state).
ACTIVE_STATES = (SelfTestState.WAITING, SelfTestState.RUNNING)


def version_label(name: str, version: int) -> str:
    """The ``file`` a database rule carries in errors and in ``Rule.file``: ``db:NAME@vN``."""
    return f"db:{name}@v{version}"


def parse_version_label(file: str) -> tuple[str, int] | None:
    """(name, version) from a ``db:NAME@vN`` label; None for rules from files."""
    match = _FILE_RE.match(file)
    return (match["name"], int(match["version"])) if match else None


def latest_versions(session: Session, include_deleted: bool = False) -> list[RuleVersion]:
    """The newest version of every rule (deleted rules left out unless asked)."""
    newest = select(RuleVersion.rule_name, func.max(RuleVersion.version).label("v")).group_by(RuleVersion.rule_name).subquery()
    rows = session.scalars(
        select(RuleVersion).join(newest, (RuleVersion.rule_name == newest.c.rule_name) & (RuleVersion.version == newest.c.v))
    ).all()
    rows = [r for r in rows if include_deleted or not r.deleted]
    return sorted(rows, key=lambda r: (r.order, r.rule_name))


def latest_version(session: Session, name: str) -> RuleVersion | None:
    return session.scalar(select(RuleVersion).where(RuleVersion.rule_name == name).order_by(RuleVersion.version.desc()).limit(1))


def history(session: Session, name: str) -> list[RuleVersion]:
    """Every version of a rule, newest first."""
    return list(session.scalars(select(RuleVersion).where(RuleVersion.rule_name == name).order_by(RuleVersion.version.desc())).all())


def build_ruleset(rows: Iterable[RuleVersion], destinations: Iterable[str] | None) -> RuleSet:
    """Parse each stored text on its own and sort the valid rules into evaluation order.

    A stored rule can become invalid without being edited (a destination was
    removed from node.toml): it is then left out and its error reported, as a
    broken rule file would be.
    """
    destinations = None if destinations is None else frozenset(destinations)
    rules, errors = [], []
    for row in rows:
        parsed = parse_rules_text(row.toml_text, version_label(row.rule_name, row.version), destinations, NODE_ACTIONS)
        errors.extend(parsed.errors)
        rules.extend(parsed.rules)
    rules.sort(key=lambda r: (r.order, r.name))
    return RuleSet(rules=rules, errors=errors)


# --- the rule source used by the node ----------------------------------------------------------------


class DatabaseRules:
    """The rules in force, rebuilt when ``rule_versions`` changes (interface of NodeRules)."""

    def __init__(self, db: Database, destinations: Iterable[str] | None) -> None:
        self.db = db
        self.destinations = None if destinations is None else frozenset(destinations)
        self._lock = threading.Lock()
        self._fingerprint: tuple[Any, ...] | None = None
        self._ruleset = RuleSet()
        self.reload_if_changed()

    def _current_fingerprint(self, session: Session) -> tuple[Any, ...]:
        # Versions are only ever added, so the newest id and the count change with every edit.
        return tuple(session.execute(select(func.max(RuleVersion.id), func.count(RuleVersion.id))).one())

    def current(self) -> RuleSet:
        with self._lock:
            return self._ruleset

    def reload_if_changed(self) -> bool:
        with self.db.session() as session:
            fingerprint = self._current_fingerprint(session)
            if fingerprint == self._fingerprint:
                return False
            ruleset = build_ruleset(latest_versions(session), self.destinations)
        with self._lock:
            self._ruleset, self._fingerprint = ruleset, fingerprint
        log.info("rules: %d active from the database", len(ruleset.rules))
        for error in ruleset.errors:
            log.error("rules: %s", error)
        return True


def configured_ruleset(config: Any, db: Database) -> RuleSet:
    """A fresh load of the rules from the configured source (for the CLI and dry runs)."""
    if config.rules_source == "database":
        with db.session() as session:
            return build_ruleset(latest_versions(session), set(config.destinations))
    return load_rules(config.rules_folder, set(config.destinations), NODE_ACTIONS)


def open_rule_source(config: Any, db: Database) -> Any:
    """The node's rule source chosen by ``[rules] source``, with self-test rules on top."""
    if config.rules_source == "database":
        base: Any = DatabaseRules(db, set(config.destinations))
    else:
        base = NodeRules(config)
    return SelfTestRules(base, db)


# --- changing rules --------------------------------------------------------------------------------


class SelfTestRules:
    """A rule source with the active self-test rules placed before the base source's rules."""

    def __init__(self, base: Any, db: Database) -> None:
        self.base, self.db = base, db
        self._lock = threading.Lock()
        self._ids: tuple[int, ...] = ()
        self._rules: list[Any] = []
        self._combined: tuple[Any, RuleSet] | None = None
        self._reload_own()

    def current(self) -> RuleSet:
        base = self.base.current()
        with self._lock:
            if not self._rules:
                return base
            if self._combined is None or self._combined[0] is not base:
                self._combined = (base, RuleSet(rules=self._rules + list(base.rules), errors=list(base.errors)))
            return self._combined[1]

    def reload_if_changed(self) -> bool:
        changed = self.base.reload_if_changed()
        return self._reload_own() or changed

    def _reload_own(self) -> bool:
        now = utcnow()
        with self.db.session() as session:
            runs = session.scalars(
                select(SelfTestRun).where(SelfTestRun.state.in_(ACTIVE_STATES), SelfTestRun.expires_at > now).order_by(SelfTestRun.id)
            ).all()
        ids = tuple(r.id for r in runs)
        if ids == self._ids:
            return False
        rules = []
        for run in runs:
            parsed = parse_rules_text(run.rule_text, f"selftest:{run.id}", None, NODE_ACTIONS)
            rules.extend(parsed.rules)
            for error in parsed.errors:
                log.error("self test %d: %s", run.id, error)
        with self._lock:
            self._ids, self._rules, self._combined = ids, rules, None
        fresh = [r.id for r in runs if r.activated_at is None]
        if fresh:
            with self.db.write() as session:
                for run_id in fresh:
                    row = session.get(SelfTestRun, run_id)
                    if row is not None and row.activated_at is None:
                        row.activated_at = utcnow()
        return True


class NodeRules:
    """Holds the current :class:`routing_rules.RuleSet`, reloaded when files change."""

    def __init__(self, config: NodeConfig) -> None:
        self._watcher = RulesStore(
            config.rules_folder, destinations=set(config.destinations), registry=NODE_ACTIONS,
            known_models={m.name for m in available_models()},
        )
        self._lock = threading.Lock()
        self._ruleset = self._watcher.ruleset
        self._report(self._ruleset)

    def _report(self, ruleset: Any) -> None:
        log.info("rules: %d active from %s", len(ruleset.rules), self._watcher.folder)
        for error in ruleset.errors:
            log.error("rules: %s", error)

    def current(self) -> Any:
        with self._lock:
            return self._ruleset

    def reload_if_changed(self) -> bool:
        with self._lock:
            changed = self._watcher.reload_if_changed()
            if changed:
                self._ruleset = self._watcher.ruleset
        if changed:
            self._report(self._ruleset)
        return changed
