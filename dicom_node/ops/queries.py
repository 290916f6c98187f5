"""Read models for the operations pages, the JSON API, ``dicom-node status`` and /metrics, straight from the router's tables.

One set of count functions serves the CLI, the web and the metrics, so the
three agree.  They are bounded: none reads every row of a history table,
however long the node has run.

- States that are work in flight (``receiving``, ``complete``, ``pending``,
  ``sending``, ``running``) and ``failed`` (waiting for an operator) are counted on the
  ``state`` index: the cost grows with the queue, not with the history.
- The finished state of a table (series ``dispatched``, job ``done``,
  delivery ``delivered``, item ``sent``) is the rest: the table's row count
  minus the other states.  The row count is ``MAX(id)``, one index lookup.
  On SQLite that is exact: the node deletes no router rows and SQLite gives
  a rolled-back insert's rowid to the next insert, so ids are dense.  On
  PostgreSQL a rolled-back insert burns a sequence number, so these totals
  (and the finished counts) can be a few high after insert races; if rows
  are ever purged, the totals must come from elsewhere.
- Each count is one SQL statement (a ``UNION ALL`` of the state counts and
  ``MAX(id)``), so it is read from one snapshot and a row changing state
  between two queries cannot be counted twice or not at all.

Only UIDs, modalities, series descriptions, counts, states, errors and
times are shown: no patient names or IDs (the node logs none either).
"""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig
from dicom_node.db import Association, Delivery, DeliveryItem, Dispatch, Instance, Job, Series, Study
from dicom_node.db.states import DeliveryItemState, DeliveryState, JobState, SeriesState, StudyState
from dicom_node.routing.completion import waiting_series

_TOTAL = ""  # the row of a count query that carries MAX(id); never a state


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def total_rows(session: Session, model: Any) -> int:
    """Rows ever inserted into ``model``'s table: ``MAX(id)`` (see the module docstring for why that is exact)."""
    return int(session.scalar(select(func.coalesce(func.max(model.id), 0))) or 0)


def _by_state(session: Session, counted: Any, model: Any, rest: StrEnum) -> dict[str, int]:
    """``{state: count}`` for the states ``counted`` selects, plus ``rest`` = total minus those; zeros left out.

    ``counted`` is a select of (state, count) rows over an index; keys come
    sorted, as a ``GROUP BY state`` over the index gave them before.
    """
    total = select(literal(_TOTAL), func.coalesce(func.max(model.id), 0))
    rows = {str(state): int(n) for state, n in session.execute(union_all(counted, total)).all()}
    out = {state: n for state, n in rows.items() if state != _TOTAL and n}
    remainder = rows.get(_TOTAL, 0) - sum(out.values())
    if remainder:
        out[str(rest)] = remainder
    return dict(sorted(out.items()))


def _state_counts(session: Session, model: Any, active: tuple[StrEnum, ...], rest: StrEnum) -> dict[str, int]:
    counted = select(model.state, func.count()).where(model.state.in_([str(s) for s in active])).group_by(model.state)
    return _by_state(session, counted, model, rest)


def series_counts(session: Session) -> dict[str, int]:
    active = (SeriesState.RECEIVING, SeriesState.COMPLETE, SeriesState.FAILED)
    return _state_counts(session, Series, active, SeriesState.DISPATCHED)


def study_counts(session: Session) -> dict[str, int]:
    return _state_counts(session, Study, (StudyState.RECEIVING, StudyState.COMPLETE, StudyState.FAILED), StudyState.DISPATCHED)


def failed_dispatches(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Series and studies in state ``failed`` (their dispatch raised), newest first, with the reason (state index)."""
    series = session.scalars(select(Series).where(Series.state == SeriesState.FAILED).order_by(Series.id.desc()).limit(limit)).all()
    studies = session.scalars(select(Study).where(Study.state == StudyState.FAILED).order_by(Study.id.desc()).limit(limit)).all()
    return [
        *({"level": "series", "id": s.id, "uid": s.series_instance_uid, "study_id": s.study_id, "modality": s.modality,
           "instances": s.instance_count, "completed_at": iso(s.completed_at), "reason": s.failure_reason} for s in series),
        *({"level": "study", "id": s.id, "uid": s.study_instance_uid, "study_id": s.id, "modality": None,
           "instances": None, "completed_at": iso(s.last_received_at), "reason": s.failure_reason} for s in studies),
    ]


def job_counts(session: Session) -> dict[str, int]:
    return _state_counts(session, Job, (JobState.PENDING, JobState.RUNNING, JobState.FAILED), JobState.DONE)


def delivery_counts(session: Session) -> dict[str, int]:
    active = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.FAILED)
    return _state_counts(session, Delivery, active, DeliveryState.DELIVERED)


def delivery_item_counts(session: Session) -> dict[str, int]:
    """Items by state.  A delivery becomes ``delivered`` only when none of its items is pending, so the
    pending items are found through the unfinished and failed deliveries (state index, then the
    (delivery_id, state) index) and every other item is sent."""
    unfinished = select(Delivery.id).where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.FAILED]))
    counted = (select(DeliveryItem.state, func.count())
               .where(DeliveryItem.delivery_id.in_(unfinished), DeliveryItem.state == DeliveryItemState.PENDING)
               .group_by(DeliveryItem.state))
    return _by_state(session, counted, DeliveryItem, DeliveryItemState.SENT)


def open_associations(session: Session) -> int:
    """Inbound associations not yet ended (``ended_at`` index)."""
    return int(session.scalar(select(func.count(Association.id)).where(Association.ended_at.is_(None))) or 0)


def instances_awaiting_instance_rules(session: Session) -> int:
    """Stored, not yet through the instance-level rules (the partial index holds only those)."""
    return int(session.scalar(select(func.count()).select_from(Instance).where(Instance.routed_version.is_(None))) or 0)


def counts(session: Session) -> dict[str, Any]:
    """The numbers at the top of the operations page (polled by its script)."""
    return {
        "studies": total_rows(session, Study),
        "instances": total_rows(session, Instance),
        "open_associations": open_associations(session),
        "series": series_counts(session),
        "jobs": job_counts(session),
        "deliveries": delivery_counts(session),
    }


def status_report(session: Session, config: NodeConfig, now: datetime) -> dict[str, Any]:
    """What ``dicom-node status`` prints: counts, series waiting for completion, recent jobs and deliveries."""
    status_counts = {
        "studies": total_rows(session, Study),
        "series": series_counts(session),
        "instances": total_rows(session, Instance),
        "instances_awaiting_instance_rules": instances_awaiting_instance_rules(session),
        "deliveries": delivery_counts(session),
        "jobs": job_counts(session),
    }
    jobs = [
        {
            "id": j.id, "rule": j.rule_name, "model": j.action.get("model"), "state": j.state, "run": j.run_number,
            "attempts": j.attempts, "error": j.error, "timings": j.timings, "result": j.result,
        }
        for j in session.scalars(select(Job).order_by(Job.id.desc()).limit(20)).all()
    ]
    waits = [
        {
            "series_instance_uid": w.series_uid, "modality": w.modality, "instances": w.instances,
            "open_associations": w.open_associations, "reason": w.reason,
            "fires_at": w.fires_at.isoformat() + "Z" if w.fires_at else None,
        }
        for w in waiting_series(session, config, now)
    ]
    deliveries = [
        {
            "id": d.id, "destination": d.destination, "rule": d.rule_name, "state": d.state, "attempts": d.attempts,
            "objects": len(d.items), "sent": sum(1 for i in d.items if i.state == DeliveryItemState.SENT),
            "next_attempt_at": d.next_attempt_at.isoformat() + "Z" if d.state == DeliveryState.PENDING else None,
            "last_error": d.last_error, "possible_duplicates": d.possible_duplicates,
        }
        for d in session.scalars(select(Delivery).order_by(Delivery.id.desc()).limit(50)).all()
    ]
    return {"counts": status_counts, "waiting_series": waits, "failed_dispatches": failed_dispatches(session),
            "recent_jobs": jobs, "recent_deliveries": deliveries}


def delivery_row(delivery: Delivery) -> dict[str, Any]:
    items = delivery.items
    durations = [i.duration_ms for i in items if i.duration_ms is not None]
    took = (delivery.finished_at - delivery.created_at).total_seconds() if delivery.finished_at else None
    return {
        "id": delivery.id, "destination": delivery.destination, "rule": delivery.rule_name, "state": delivery.state,
        "attempts": delivery.attempts, "objects": len(items), "sent": sum(1 for i in items if i.state == DeliveryItemState.SENT),
        "created_at": iso(delivery.created_at), "finished_at": iso(delivery.finished_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.state == DeliveryState.PENDING else None,
        "seconds_to_deliver": None if took is None else round(took, 3),
        "mean_item_ms": round(sum(durations) / len(durations), 1) if durations else None,
        "last_error": delivery.last_error, "possible_duplicates": delivery.possible_duplicates,
        "series_id": delivery.series_id, "job_id": delivery.job_id,
    }


def job_row(job: Job) -> dict[str, Any]:
    took = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    action = job.action or {}
    return {
        "id": job.id, "rule": job.rule_name, "model": action.get("model"), "state": job.state, "run": job.run_number,
        "attempts": job.attempts, "created_at": iso(job.created_at), "finished_at": iso(job.finished_at),
        "seconds": None if took is None else round(took, 3), "error": job.error, "timings": job.timings,
    }


def dispatch_row(dispatch: Dispatch) -> dict[str, Any]:
    return {"rule": dispatch.rule_name, "level": dispatch.level, "run": dispatch.run_number, "at": iso(dispatch.created_at),
            "reasons": list(dispatch.reasons or [])}


def recent_studies(session: Session, limit: int = 30) -> list[dict[str, Any]]:
    """Newest studies first, each with its series count, rules fired and delivery outcome."""
    studies = session.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(limit)).all()
    out = []
    for study in studies:
        series_ids = [s.id for s in study.series]
        rules = sorted(set(session.scalars(select(Dispatch.rule_name).where(
            (Dispatch.study_id == study.id) | Dispatch.series_id.in_(series_ids or [-1]))).all()))
        deliveries = _grouped_where(session, Delivery.state, Delivery.series_id.in_(series_ids or [-1]))
        jobs = _grouped_where(session, Job.state, (Job.study_id == study.id) | Job.series_id.in_(series_ids or [-1]))
        out.append({
            "id": study.id, "study_uid": study.study_instance_uid, "state": study.state,
            "first_received_at": iso(study.first_received_at), "last_received_at": iso(study.last_received_at),
            "series": len(study.series), "instances": sum(s.instance_count for s in study.series),
            "modalities": sorted({s.modality for s in study.series if s.modality}), "rules": rules,
            "deliveries": deliveries, "jobs": jobs,
        })
    return out


def _grouped_where(session: Session, column: Any, condition: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in session.execute(select(column, func.count()).where(condition).group_by(column)).all()}


def study_detail(session: Session, study_id: int) -> dict[str, Any] | None:
    """One study: every series with its timings, the rules that fired, jobs and deliveries."""
    study = session.get(Study, study_id)
    if study is None:
        return None
    series_out = []
    for series in sorted(study.series, key=lambda s: s.first_received_at):
        wait = (series.dispatched_at - series.last_received_at).total_seconds() if series.dispatched_at else None
        series_out.append({
            "id": series.id, "series_uid": series.series_instance_uid, "modality": series.modality,
            "description": series.series_description, "state": series.state, "instances": series.instance_count,
            "duplicates": series.duplicate_count, "late": series.late_count, "runs": series.run_count,
            "calling_ae": series.calling_ae, "first_received_at": iso(series.first_received_at),
            "last_received_at": iso(series.last_received_at), "completed_at": iso(series.completed_at),
            "completion_reason": series.completion_reason, "dispatched_at": iso(series.dispatched_at),
            "failure_reason": series.failure_reason,
            "seconds_to_route": None if wait is None else round(wait, 3),
            "dispatches": [dispatch_row(d) for d in session.scalars(select(Dispatch).where(Dispatch.series_id == series.id).order_by(Dispatch.id))],
            "jobs": [job_row(j) for j in session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.id))],
            "deliveries": [delivery_row(d) for d in session.scalars(select(Delivery).where(Delivery.series_id == series.id).order_by(Delivery.id))],
        })
    study_level = {
        "dispatches": [dispatch_row(d) for d in session.scalars(select(Dispatch).where(Dispatch.study_id == study.id, Dispatch.series_id.is_(None)))],
        "jobs": [job_row(j) for j in session.scalars(select(Job).where(Job.study_id == study.id, Job.series_id.is_(None)))],
    }
    return {
        "id": study.id, "study_uid": study.study_instance_uid, "state": study.state, "runs": study.run_count,
        "first_received_at": iso(study.first_received_at), "last_received_at": iso(study.last_received_at),
        "completed_at": iso(study.completed_at), "failure_reason": study.failure_reason, "series": series_out, "study_level": study_level,
    }


def deliveries(session: Session, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state:
        query = query.where(Delivery.state == state)
    return [delivery_row(d) for d in session.scalars(query)]


def failed_jobs(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    return [job_row(j) for j in session.scalars(select(Job).where(Job.state == JobState.FAILED).order_by(Job.id.desc()).limit(limit))]


def series_choices(session: Session, limit: int = 25) -> list[dict[str, Any]]:
    """Recent stored series to dry-run rules against."""
    rows = session.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit)).all()
    return [{"id": s.id, "label": f"{s.modality or '?'} {s.series_description or ''} ({s.instance_count} inst., {iso(s.last_received_at)})".replace("  ", " "),
             "series_uid": s.series_instance_uid} for s in rows]


def item_paths(session: Session, series_ids: list[int], limit: int) -> list[str]:
    return list(session.scalars(select(Instance.path).where(Instance.series_id.in_(series_ids)).order_by(Instance.id).limit(limit)).all())

