"""The delivery queue: rows in ``deliveries`` / ``delivery_items``, worked by :mod:`dicom_node.delivery.workers`.

Claiming is a conditional UPDATE (``state='pending'`` -> ``'sending'``), so
any number of workers, in any number of processes, never send the same
batch twice.  A worker claims the next due delivery together with the
other due deliveries to the same destination and sends them all over one
association.  Each item is committed as ``sent`` right after the peer's
success status: after a crash only the item whose response was in flight
can reach the destination twice, and the delivery counts that as a
possible duplicate when it is recovered.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from dicom_node.clock import utcnow
from dicom_node.db import Database, Delivery, DeliveryItem
from dicom_node.db.states import DeliveryItemState, DeliveryState

log = logging.getLogger("dicom_node.delivery.queue")

def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Capped exponential backoff: initial, 2x, 4x ... up to maximum."""
    return min(maximum, initial * (2 ** max(0, attempts - 1)))


def enqueue(
    session: Session,
    *,
    dispatch_key: str,
    destination: str,
    rule_name: str,
    items: list[tuple[str, str, int]],
    now: datetime,
    series_id: int | None = None,
    job_id: int | None = None,
) -> Delivery | None:
    """Queue ``items`` (sop uid, path, version) unless this dispatch key was queued before."""
    if session.scalar(select(Delivery.id).where(Delivery.dispatch_key == dispatch_key)) is not None:
        return None
    delivery = Delivery(
        dispatch_key=dispatch_key, destination=destination, rule_name=rule_name, series_id=series_id, job_id=job_id,
        state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, created_at=now, possible_duplicates=0,
    )
    session.add(delivery)
    session.flush()
    session.add_all(
        DeliveryItem(delivery_id=delivery.id, sop_instance_uid=uid, path=path, instance_version=version, state=DeliveryItemState.PENDING)
        for uid, path, version in items
    )
    return delivery


def recover(db: Database) -> int:
    """Return deliveries a dead process left in ``sending`` to ``pending`` (at start-up)."""
    with db.write() as session:
        stuck = session.scalars(select(Delivery).where(Delivery.state == DeliveryState.SENDING)).all()
        for delivery in stuck:
            delivery.state = DeliveryState.PENDING
            delivery.possible_duplicates += 1
            delivery.next_attempt_at = utcnow()
        if stuck:
            log.warning("recovered %d interrupted deliveries; each may have sent one object twice", len(stuck))
        return len(stuck)


def claim_next(db: Database, worker: str, batch_size: int) -> list[int]:
    """Claim the next due delivery and the other due ones to the same destination (at most ``batch_size``).

    They then share one association: per series, one object each, a
    burst of radiographs would otherwise open and release an association
    per image.  Returns the claimed ids, oldest first (empty: nothing due).
    """
    now = utcnow()
    due = (Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
    with db.write() as session:
        first = session.scalar(select(Delivery.destination).where(*due).order_by(Delivery.next_attempt_at, Delivery.id).limit(1))
        if first is None:
            return []
        candidates = session.scalars(
            select(Delivery.id).where(*due, Delivery.destination == first).order_by(Delivery.next_attempt_at, Delivery.id).limit(batch_size)
        ).all()
        return [
            delivery_id for delivery_id in candidates
            if cast(CursorResult[Any], session.execute(
                update(Delivery).where(Delivery.id == delivery_id, Delivery.state == DeliveryState.PENDING)
                .values(state=DeliveryState.SENDING, started_at=now, attempts=Delivery.attempts + 1)
            )).rowcount  # an UPDATE's result is a CursorResult
        ]


def retry(db: Database, *, delivery_ids: list[int] | None = None, all_failed: bool = False) -> int:
    """Put failed (or chosen) deliveries back in the queue now; returns how many."""
    with db.write() as session:
        query = select(Delivery)
        if delivery_ids:
            query = query.where(Delivery.id.in_(delivery_ids))
        elif all_failed:
            query = query.where(Delivery.state == DeliveryState.FAILED)
        else:
            return 0
        rows = [d for d in session.scalars(query).all() if d.state in (DeliveryState.FAILED, DeliveryState.PENDING)]
        for delivery in rows:
            delivery.state, delivery.attempts, delivery.next_attempt_at, delivery.finished_at = DeliveryState.PENDING, 0, utcnow(), None
        return len(rows)
