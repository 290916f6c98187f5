"""Read models for the operations pages and the JSON API, straight from the router's tables.

Only UIDs, modalities, series descriptions, counts, states, errors and
times are shown: no patient names or IDs (the node logs none either).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.db import Association, Delivery, Dispatch, Instance, Job, Series, Study


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def _grouped(session: Session, column: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in session.execute(select(column, func.count()).group_by(column)).all()}


def counts(session: Session) -> dict[str, Any]:
    """The numbers at the top of the operations page (polled by its script)."""
    return {
        "studies": session.scalar(select(func.count(Study.id))) or 0,
        "instances": session.scalar(select(func.count(Instance.id))) or 0,
        "open_associations": session.scalar(select(func.count(Association.id)).where(Association.ended_at.is_(None))) or 0,
        "series": _grouped(session, Series.state),
        "jobs": _grouped(session, Job.state),
        "deliveries": _grouped(session, Delivery.state),
    }


def delivery_row(delivery: Delivery) -> dict[str, Any]:
    items = delivery.items
    durations = [i.duration_ms for i in items if i.duration_ms is not None]
    took = (delivery.finished_at - delivery.created_at).total_seconds() if delivery.finished_at else None
    return {
        "id": delivery.id, "destination": delivery.destination, "rule": delivery.rule_name, "state": delivery.state,
        "attempts": delivery.attempts, "objects": len(items), "sent": sum(1 for i in items if i.state == "sent"),
        "created_at": iso(delivery.created_at), "finished_at": iso(delivery.finished_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.state == "pending" else None,
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
        "completed_at": iso(study.completed_at), "series": series_out, "study_level": study_level,
    }


def deliveries(session: Session, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state:
        query = query.where(Delivery.state == state)
    return [delivery_row(d) for d in session.scalars(query)]


def failed_jobs(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    return [job_row(j) for j in session.scalars(select(Job).where(Job.state == "failed").order_by(Job.id.desc()).limit(limit))]


def series_choices(session: Session, limit: int = 25) -> list[dict[str, Any]]:
    """Recent stored series to dry-run rules against."""
    rows = session.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit)).all()
    return [{"id": s.id, "label": f"{s.modality or '?'} {s.series_description or ''} ({s.instance_count} inst., {iso(s.last_received_at)})".replace("  ", " "),
             "series_uid": s.series_instance_uid} for s in rows]


def item_paths(session: Session, series_ids: list[int], limit: int) -> list[str]:
    return list(session.scalars(select(Instance.path).where(Instance.series_id.in_(series_ids)).order_by(Instance.id).limit(limit)).all())

