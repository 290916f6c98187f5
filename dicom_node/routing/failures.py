"""Series and studies that could not be dispatched: marking them failed, and the operator's retry and dismiss.

The sweep dispatches series and studies one after another.  If one raised
and stayed ``complete``, it would raise again at every sweep, and being
first in id order it would hold up every series and study after it,
across restarts too.  So a dispatch that raises puts its series or study
in state ``failed`` with the reason (:func:`mark_failed`), logged once,
and the sweep goes on.  A failed series also keeps its study from being
dispatched (a study waits until all its series are dispatched).

An operator then either retries it (:func:`retry_failed`: a series back to
``complete``, a study back to ``receiving``, so the next sweep tries
again, for example after the file was replaced by a good copy or the
rules were fixed), or dismisses it (:func:`dismiss_failed`: state
``dispatched`` with nothing queued, so its study goes on; the reason is
kept, prefixed with who dismissed it).  New objects of a failed series are
stored and wait with it; a retry includes them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from dicom_node.db import Series, Study
from dicom_node.db.states import SeriesState, StudyState

Level = Literal["series", "study"]
REASON_CHARS = 1000  # a reason is for a person to read; a long exception text is cut


def _row(session: Session, level: Level, row_id: int) -> Series | Study | None:
    if level == "series":
        return session.get(Series, row_id)
    return session.get(Study, row_id)


def mark_failed(session: Session, level: Level, row_id: int, reason: str, expected: str) -> bool:
    """Put a series or study in state ``failed`` with ``reason`` if it is still in state ``expected``.

    Returns False when it changed meanwhile (a new instance put a series
    back to ``receiving``: it will complete and be tried again).
    """
    row = _row(session, level, row_id)
    if row is None or row.state != expected:
        return False
    row.state, row.failure_reason = SeriesState.FAILED, reason[:REASON_CHARS]
    return True


def retry_failed(session: Session, level: Level, row_id: int) -> bool:
    """A failed series back to ``complete``, a failed study back to ``receiving``: the next sweep dispatches it again."""
    row = _row(session, level, row_id)
    if row is None or row.state != SeriesState.FAILED:
        return False
    row.state = SeriesState.COMPLETE if level == "series" else StudyState.RECEIVING
    row.failure_reason = None
    return True


def dismiss_failed(session: Session, level: Level, row_id: int, actor: str, note: str | None, now: datetime) -> bool:
    """A failed series or study to ``dispatched`` with nothing queued; the reason is kept, with who dismissed it and why."""
    row = _row(session, level, row_id)
    if row is None or row.state != SeriesState.FAILED:
        return False
    said = f" ({note})" if note else ""
    row.state = SeriesState.DISPATCHED
    row.failure_reason = f"dismissed by {actor} at {now:%Y-%m-%d %H:%M:%S} UTC{said}: {row.failure_reason or ''}"[:REASON_CHARS]
    return True
