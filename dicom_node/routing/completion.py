"""Deciding when a series or study is complete, and saying why it is not yet.

DICOM has no "end of series" message, so completion is inferred: a series
is complete when no association that carried it is still open and no
instance arrived for ``series_quiet_seconds`` after the later of its last
instance and the end of the last association that carried it, or at the
latest ``series_max_wait_seconds`` after its first instance (so a sender that
never closes its association cannot hold a series forever).  A study is
complete when all its series are and it has been quiet for
``study_quiet_seconds`` (or its own maximum wait passed).

Everything is computed from the database on each sweep, so the timers
survive a restart with no state of their own: APScheduler only drives the
sweep.  :func:`waiting_series` gives the same computation as text for the
CLI and the admin UI.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig
from dicom_node.db.models import Association, Instance, Series, Study
from dicom_node.db.states import SeriesState, StudyState


@dataclass(frozen=True)
class SeriesWait:
    """Where one receiving series stands."""

    series_id: int
    series_uid: str
    modality: str | None
    instances: int
    open_associations: int
    last_activity: datetime
    fires_at: datetime | None
    max_wait_at: datetime
    due: bool
    reason: str


def _association_facts(session: Session, series_ids: list[int]) -> dict[int, tuple[int, datetime | None]]:
    """Per series: number of open associations that carried it, and the latest association end."""
    if not series_ids:
        return {}
    rows = session.execute(
        select(
            Instance.series_id,
            func.count(func.distinct(Association.id)).filter(Association.ended_at.is_(None)),
            func.max(Association.ended_at),
        )
        .join(Association, Association.id == Instance.association_id)
        .where(Instance.series_id.in_(series_ids))
        .group_by(Instance.series_id)
    ).all()
    return {series_id: (int(open_count or 0), last_end) for series_id, open_count, last_end in rows}


def waiting_series(session: Session, config: NodeConfig, now: datetime) -> list[SeriesWait]:
    """Every series in state ``receiving`` with the reason it waits and when it fires."""
    series_list = session.scalars(select(Series).where(Series.state == SeriesState.RECEIVING).order_by(Series.id)).all()
    facts = _association_facts(session, [s.id for s in series_list])
    out = []
    for series in series_list:
        settings = config.completion_for(series.called_ae)
        open_count, last_end = facts.get(series.id, (0, None))
        last_activity = max(series.last_received_at, last_end) if last_end else series.last_received_at
        max_wait_at = series.first_received_at + timedelta(seconds=settings.series_max_wait_seconds)
        quiet_at = last_activity + timedelta(seconds=settings.series_quiet_seconds)
        if now >= max_wait_at:
            fires_at, due, reason = max_wait_at, True, "maximum wait reached"
        elif open_count:
            fires_at, due = None, False
            reason = (
                f"{open_count} association(s) that carried it still open; then {settings.series_quiet_seconds:g}s quiet "
                f"(fires at the latest at {max_wait_at:%H:%M:%S} UTC, the maximum wait)"
            )
        elif now >= quiet_at:
            fires_at, due, reason = quiet_at, True, "quiet period over"
        else:
            fires_at, due = quiet_at, False
            reason = f"quiet period: no instance for {settings.series_quiet_seconds:g}s after the last activity"
        out.append(SeriesWait(
            series.id, series.series_instance_uid, series.modality, series.instance_count, open_count,
            last_activity, fires_at, max_wait_at, due, reason,
        ))
    return out


@dataclass(frozen=True)
class CompletionSweep:
    """What one completion pass found.

    ``completed``: series moved to ``complete``.  ``next_fire``: the earliest
    time a series still waiting can fire (end of its quiet period, or its
    maximum wait), so the sweep can run at that moment instead of at its
    next tick.  ``quiet``: series with no open association, waiting out
    their quiet period, whose headers can be read ahead.
    """

    completed: list[int]
    next_fire: datetime | None
    quiet: list[int]


def mark_complete_series(session: Session, config: NodeConfig, now: datetime) -> CompletionSweep:
    """Move due series to ``complete`` (caller commits)."""
    done, quiet = [], []
    next_fire: datetime | None = None
    for wait in waiting_series(session, config, now):
        if not wait.due:
            fires = wait.fires_at or wait.max_wait_at
            next_fire = fires if next_fire is None else min(next_fire, fires)
            if not wait.open_associations:
                quiet.append(wait.series_id)
            continue
        series = session.get(Series, wait.series_id)
        assert series is not None
        series.state = SeriesState.COMPLETE
        series.completed_at = now
        series.completion_reason = "max_wait" if wait.reason.startswith("maximum") else "quiet"
        done.append(series.id)
    return CompletionSweep(done, next_fire, quiet)


def due_studies(session: Session, config: NodeConfig, now: datetime) -> list[int]:
    """Studies whose series are all dispatched and that have been quiet long enough."""
    out = []
    studies = session.scalars(select(Study).where(Study.state == StudyState.RECEIVING)).all()
    for study in studies:
        settings = config.completion_for(study.called_ae)
        states = {s.state for s in study.series}
        if states and states <= {SeriesState.DISPATCHED}:
            quiet = now >= study.last_received_at + timedelta(seconds=settings.study_quiet_seconds)
            if quiet or now >= study.first_received_at + timedelta(seconds=settings.study_max_wait_seconds):
                out.append(study.id)
    return out
