"""Accounts, passwords, login sessions and API tokens (no web framework here).

* Passwords are stored as argon2id hashes (argon2-cffi defaults).  A login
  for an unknown name still runs one hash verification, so response time
  does not tell which names exist.
* A login creates a server-side session row; the browser gets a random
  token in an HttpOnly, SameSite=Strict cookie and the database keeps only
  its SHA-256, so a leaked database does not hand out live sessions.  Each
  session has its own CSRF token (synchronizer token pattern).
* An API token (one per user, shown once) authenticates scripts with
  ``Authorization: Bearer``; requests made that way carry no cookie, so they
  need no CSRF token.
* Failed logins are throttled per (client address, name): ten within 15
  minutes lock that name *for that address* for the rest of the window, so a
  stranger cannot lock the owner out.  A name-wide limit (100) stops guessers
  spread over many addresses, except from addresses that logged in as that
  name before.  Counted from the audit log, so it holds across restarts; each
  attempt is written (as a failure) *before* its password check, in a
  transaction that also counts, so concurrent guesses cannot overrun the
  limit (PostgreSQL: under an advisory lock per name, also across processes).
* At most a few password checks run at once (argon2id needs 64 MiB each), a
  few more wait, and the rest get :class:`PasswordChecksBusy` (HTTP 429).
  See docs/security.md.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from dicom_node import defaults
from dicom_node.clock import utcnow
from dicom_node.config import WebSettings
from dicom_node.db import Database
from dicom_node.db.admin_models import ROLES, AuditEntry, User, WebSession, record_audit

RANK = {role: rank for rank, role in enumerate(ROLES)}
MIN_PASSWORD = 8
LOCKOUT_FAILURES = defaults.LOGIN_FAILURES_PER_ADDRESS
NAME_LOCKOUT_FAILURES = defaults.LOGIN_FAILURES_PER_NAME
LOCKOUT_WINDOW = timedelta(seconds=defaults.LOGIN_WINDOW_SECONDS)
KNOWN_ADDRESS = timedelta(days=defaults.LOGIN_KNOWN_ADDRESS_DAYS)
LOCKED_MESSAGE = "too many failed logins for this name; try again in 15 minutes"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_hasher = PasswordHasher()
_dummy: dict[PasswordHasher, str] = {}


def _dummy_hash() -> str:
    """A hash to verify against for unknown names (made once per hasher, when first needed)."""
    if _hasher not in _dummy:
        _dummy[_hasher] = _hasher.hash(secrets.token_hex(16))
    return _dummy[_hasher]


class AccountError(ValueError):
    """A user cannot be created or changed; the message says why."""


class PasswordChecksBusy(Exception):
    """More logins are waiting for a password check than the queue holds (or one waited too long)."""


class PasswordGate:
    """At most ``running`` password checks at once, at most ``waiting`` more queued for a slot.

    An argon2id check allocates 64 MiB for its duration: without a bound, 40
    concurrent logins (the web thread pool) took the node to ~2.5 GB.  Unknown
    names are checked against a dummy hash through the same gate, so they cost
    the same time and the same slot.
    """

    def __init__(self, running: int, waiting: int = defaults.PASSWORD_CHECK_QUEUE,
                 wait_seconds: float = defaults.PASSWORD_CHECK_WAIT_SECONDS) -> None:
        self._slots = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self._admitted = 0
        self._limit = running + waiting
        self._wait = wait_seconds

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a check slot for the block; :class:`PasswordChecksBusy` if the queue is full or the wait ran out."""
        with self._lock:
            if self._admitted >= self._limit:
                raise PasswordChecksBusy()
            self._admitted += 1
        try:
            if not self._slots.acquire(timeout=self._wait):
                raise PasswordChecksBusy()
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1


shared_gate = PasswordGate(WebSettings().max_concurrent_password_checks)
"""For callers that pass no gate (tests, scripts); the web app makes its own from its ``[web]`` settings."""


@dataclass(frozen=True)
class Principal:
    """Who is making a request, and how they proved it (``session`` or ``token``)."""

    user_id: int
    username: str
    role: str
    via: str
    session_id: str | None = None
    csrf_token: str | None = None

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise AccountError("the password is too long (at most 1024 characters)")


def create_user(db: Database, username: str, password: str, role: str, *, created_by: str | None, client: str | None = None) -> User:
    """Create an active account; audited as ``user.create``."""
    if not _USERNAME.match(username):
        raise AccountError("the user name must be 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    if role not in RANK:
        raise AccountError(f"the role must be one of {', '.join(ROLES)}")
    check_password_policy(password)
    with db.write() as session:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise AccountError(f"a user named '{username}' exists already")
        user = User(username=username, password_hash=_hasher.hash(password), role=role, active=True, created_at=utcnow(), created_by=created_by)
        session.add(user)
        session.flush()
        record_audit(session, "user.create", username=created_by, target=username, client=client, details={"role": role})
        return user


def update_user(db: Database, user_id: int, *, by: str, client: str | None = None, role: str | None = None,
                active: bool | None = None, password: str | None = None) -> User:
    """Change a user's role, active flag or password; ends their sessions when access shrinks."""
    with db.write() as session:
        user = session.get(User, user_id)
        if user is None:
            raise AccountError("no such user")
        changes: dict[str, object] = {}
        if role is not None and role != user.role:
            if role not in RANK:
                raise AccountError(f"the role must be one of {', '.join(ROLES)}")
            if user.role == "admin" and role != "admin" and _other_active_admins(session, user.id) == 0:
                raise AccountError("the last active admin cannot lose the admin role")
            changes["role"] = [user.role, role]
            user.role = role
        if active is not None and active != user.active:
            if not active and user.role == "admin" and _other_active_admins(session, user.id) == 0:
                raise AccountError("the last active admin cannot be disabled")
            changes["active"] = active
            user.active = active
        if password is not None:
            check_password_policy(password)
            user.password_hash = _hasher.hash(password)
            changes["password"] = "changed"
        if changes:
            session.execute(delete(WebSession).where(WebSession.user_id == user.id))
            if "password" in changes or "active" in changes:
                user.api_token_hash, user.api_token_created_at = None, None
            record_audit(session, "user.update", username=by, target=user.username, client=client, details=changes)
        return user


def _other_active_admins(session, user_id: int) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count(User.id)).where(User.role == "admin", User.active.is_(True), User.id != user_id)) or 0


def login(db: Database, username: str, password: str, *, hours: float, client: str | None,
          gate: PasswordGate | None = None) -> tuple[str, Principal] | str:
    """Check a password and open a session: (cookie token, principal), or a message for the login page.

    Raises :class:`PasswordChecksBusy` when no password-check slot is free in time.
    """
    attempt = _begin_attempt(db, username[:64], client)
    if attempt is None:
        return LOCKED_MESSAGE
    try:
        with (gate or shared_gate).slot():
            with db.session() as session:
                user = session.scalar(select(User).where(User.username == username))
            good = _verify(user.password_hash if user is not None else _dummy_hash(), password)
    except PasswordChecksBusy:
        _settle(db, attempt, "denied", "server busy")  # not a failure: no password was checked
        raise
    if user is None or not good or not user.active:
        _settle(db, attempt, "failed", "unknown user" if user is None else "account disabled" if good else "wrong password")
        return "wrong user name or password"
    now = utcnow()
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    with db.write() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at < now))
        session.add(WebSession(id=digest(token), user_id=user.id, csrf_token=csrf, created_at=now,
                               expires_at=now + timedelta(hours=hours), client=client))
        row = session.get(User, user.id)
        if row is not None:
            row.last_login_at = now
            if _hasher.check_needs_rehash(row.password_hash):
                row.password_hash = _hasher.hash(password)
        entry = session.get(AuditEntry, attempt)
        if entry is not None:
            entry.username, entry.outcome, entry.details = user.username, "ok", None
    return token, Principal(user.id, user.username, user.role, "session", digest(token), csrf)


def _verify(stored: str, password: str) -> bool:
    good: bool  # argon2 types verify() as Literal[True]: a mismatch raises
    try:
        good = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        good = False
    return good


def _begin_attempt(db: Database, name: str, client: str | None) -> int | None:
    """Record a login attempt as failed before its password is checked; its audit id, or None when throttled.

    Recording and counting are one transaction: on SQLite the insert takes the
    write lock first (one writer, across processes too); on PostgreSQL an
    advisory lock per name serialises attempts for that name.  So N concurrent
    guesses run at most the limit of password checks; the row is corrected to
    its real outcome after the check (a crash mid-check leaves a failure).
    """
    now = utcnow()
    with db.write() as session:
        if not db.is_sqlite:
            key = int.from_bytes(hashlib.sha256(b"login:" + name.encode()).digest()[:8], "big", signed=True)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        entry = record_audit(session, "login", username=name, outcome="failed", client=client, details={"reason": "checking"}, now=now)
        session.flush()
        here = _failures(session, name, now, entry.id, client=client, by_address=True)
        if here >= LOCKOUT_FAILURES:
            entry.outcome, entry.details = "denied", {"reason": "too many failed attempts from this address"}
            return None
        if _failures(session, name, now, entry.id) >= NAME_LOCKOUT_FAILURES and not _usual_address(session, name, client, now):
            entry.outcome, entry.details = "denied", {"reason": "too many failed attempts for this name"}
            return None
        return entry.id


def _failures(session: Session, name: str, now: datetime, exclude: int, *, client: str | None = None, by_address: bool = False) -> int:
    """Failed logins (attempts being checked included) for ``name`` in the window, from ``client`` if ``by_address``."""
    query = select(func.count(AuditEntry.id)).where(
        AuditEntry.action == "login", AuditEntry.outcome == "failed", AuditEntry.username == name,
        AuditEntry.at >= now - LOCKOUT_WINDOW, AuditEntry.id != exclude,
    )
    if by_address:
        query = query.where(AuditEntry.client.is_(None) if client is None else AuditEntry.client == client)
    return session.scalar(query) or 0


def _usual_address(session: Session, name: str, client: str | None, now: datetime) -> bool:
    """Whether ``name`` logged in successfully from ``client`` recently (the name-wide limit spares it)."""
    if client is None:
        return False
    return session.scalar(select(AuditEntry.id).where(
        AuditEntry.action == "login", AuditEntry.outcome == "ok", AuditEntry.username == name,
        AuditEntry.client == client, AuditEntry.at >= now - KNOWN_ADDRESS,
    ).limit(1)) is not None


def _settle(db: Database, attempt: int, outcome: str, reason: str) -> None:
    with db.write() as session:
        entry = session.get(AuditEntry, attempt)
        if entry is not None:
            entry.outcome, entry.details = outcome, {"reason": reason}


def verify_password(db: Database, user_id: int, password: str, gate: PasswordGate | None = None) -> bool:
    """Whether ``password`` is the user's current one (to confirm a password change); may raise PasswordChecksBusy."""
    with db.session() as session:
        user = session.get(User, user_id)
    with (gate or shared_gate).slot():
        return _verify(user.password_hash if user is not None else _dummy_hash(), password) and user is not None


def logout(db: Database, principal: Principal, client: str | None) -> None:
    with db.write() as session:
        if principal.session_id:
            session.execute(delete(WebSession).where(WebSession.id == principal.session_id))
        record_audit(session, "logout", username=principal.username, client=client)


def principal_from_cookie(db: Database, token: str) -> Principal | None:
    with db.session() as session:
        row = session.get(WebSession, digest(token))
        if row is None or row.expires_at < utcnow():
            return None
        user = session.get(User, row.user_id)
        if user is None or not user.active:
            return None
        return Principal(user.id, user.username, user.role, "session", row.id, row.csrf_token)


def principal_from_api_token(db: Database, token: str) -> Principal | None:
    with db.session() as session:
        user = session.scalar(select(User).where(User.api_token_hash == digest(token)))
        if user is None or not user.active:
            return None
        return Principal(user.id, user.username, user.role, "token")


def new_api_token(db: Database, principal: Principal, client: str | None) -> str:
    """A fresh API token for the caller (the previous one stops working); shown once."""
    token = "dn_" + secrets.token_urlsafe(32)
    with db.write() as session:
        user = session.get(User, principal.user_id)
        if user is None:
            raise AccountError("no such user")
        user.api_token_hash, user.api_token_created_at = digest(token), utcnow()
        record_audit(session, "user.api_token", username=principal.username, target=principal.username, client=client)
    return token


def set_flash(db: Database, principal: Principal, message: str) -> None:
    """A one-time message for the next page of this session (post/redirect/get)."""
    if not principal.session_id:
        return
    with db.write() as session:
        row = session.get(WebSession, principal.session_id)
        if row is not None:
            row.flash = message[:4000]


def take_flash(db: Database, principal: Principal) -> str | None:
    if not principal.session_id:
        return None
    with db.session() as session:
        row = session.get(WebSession, principal.session_id)
        message = row.flash if row is not None else None
    if message:
        with db.write() as session:
            row = session.get(WebSession, principal.session_id)
            if row is not None:
                row.flash = None
    return message
