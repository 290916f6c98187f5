"""Tables of the web admin: accounts, login sessions, rule versions, audit log, self tests.

They share ``Base.metadata`` with the router's tables (``dicom_node.db``
imports this module) so one Alembic history covers the whole schema; the
revision that creates them is ``0002_admin``.  Times are naive UTC, like the
rest of the schema.

Rule versions are append-only: a save, an enable/disable, a reorder and a
delete each add a row, so every state a rule was ever in can be read back
and compared.  The TOML text is the truth; ``enabled`` and ``order`` repeat
what the text says so that lists can be sorted without parsing.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, Session, mapped_column

from dicom_node.db.models import Base

ROLES = ("viewer", "editor", "admin")


class User(Base):
    """An admin account.  ``password_hash`` is an argon2id hash; ``api_token_hash`` a SHA-256 of the token."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    api_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    api_token_created_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class WebSession(Base):
    """A login.  The cookie holds a random token; only its SHA-256 is stored (``id``)."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    flash: Mapped[str | None] = mapped_column(Text, nullable=True)


class RuleVersion(Base):
    """One saved state of one rule.  ``deleted`` marks the version that removed it."""

    __tablename__ = "rule_versions"
    __table_args__ = (UniqueConstraint("rule_name", "version", name="uq_rule_versions_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    toml_text: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean)
    order: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    change_note: Mapped[str] = mapped_column(Text, default="")


class AuditEntry(Base):
    """Who did what, when, from where, and how it went (``ok``, ``failed``, ``denied``)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    username: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="ok")
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class SelfTestRun(Base):
    """An end-to-end self test.  While ``state`` is ``waiting`` or ``running`` (and not
    expired) the node routes the test study with ``rule_text``, a temporary rule that
    matches only ``study_uid``; ``activated_at`` is set when the node has loaded it."""

    __tablename__ = "selftest_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    author: Mapped[str] = mapped_column(String(64))
    rule_name: Mapped[str] = mapped_column(String(128))
    destination: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    instances: Mapped[int] = mapped_column(Integer)
    rule_text: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="waiting", index=True)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    send_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


def record_audit(
    session: Session,
    action: str,
    *,
    username: str | None,
    target: str | None = None,
    outcome: str = "ok",
    client: str | None = None,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditEntry:
    """Add one audit row to ``session`` (committed with the change it describes)."""
    from dicom_node.clock import utcnow

    entry = AuditEntry(
        at=now or utcnow(), username=username, action=action, target=(target or None) and target[:255],
        outcome=outcome, client=client, details=details,
    )
    session.add(entry)
    return entry
