"""The job queue: ``jobs`` rows, claimed by worker processes with a conditional UPDATE.

A job is inserted by the dispatcher (:mod:`dicom_node.routing.actions`);
any number of workers in any number of processes claim it with
``state='pending'`` -> ``'running'``, so no job runs twice at once.
Retries by an operator and recovery after a restart put jobs back here.
"""
from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from dicom_node.clock import utcnow
from dicom_node.db import Database, Job
from dicom_node.db.states import JobState


def claim_next_job(db: Database, worker: str) -> int | None:
    """Claim the oldest pending job for ``worker``; ``None`` when there is none."""
    now = utcnow()
    with db.write() as session:
        for job_id in session.scalars(select(Job.id).where(Job.state == JobState.PENDING).order_by(Job.id).limit(5)).all():
            claimed = cast(CursorResult[Any], session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.PENDING)
                .values(state=JobState.RUNNING, started_at=now, attempts=Job.attempts + 1, worker=worker)
            )).rowcount  # an UPDATE's result is a CursorResult
            if claimed:
                return job_id
    return None


def recover(db: Database, max_attempts: int) -> int:
    """Jobs left ``running`` by a previous process go back to the queue (or fail when out of attempts)."""
    with db.write() as session:
        jobs = session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
        for job in jobs:
            if job.attempts >= max_attempts:
                job.state, job.error, job.finished_at = JobState.FAILED, "interrupted by a node restart", utcnow()
            else:
                job.state = JobState.PENDING
    return len(jobs)


def retry_jobs(db: Database, job_ids: list[int]) -> int:
    """Queue jobs again (an operator's retry); returns how many."""
    with db.write() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids), Job.state.in_((JobState.FAILED, JobState.DONE)))).all()
        for job in jobs:
            job.state, job.attempts, job.error, job.finished_at = JobState.PENDING, 0, None, None
        return len(jobs)
