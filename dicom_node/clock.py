"""The node's one clock: naive UTC datetimes, as every table stores them.

Columns are ``DateTime`` without a zone (SQLite keeps no zone, and
PostgreSQL's ``timestamp`` must compare equal to what SQLite returns), so
every stage takes its "now" from here rather than mixing aware and naive
values.  A leaf module: it imports nothing from the node.
"""
from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time in UTC, without tzinfo (the database's convention)."""
    return datetime.now(UTC).replace(tzinfo=None)
