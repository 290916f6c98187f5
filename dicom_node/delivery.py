"""The delivery queue: rows in ``deliveries`` / ``delivery_items``, worked by sender threads.

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
import threading
from collections import defaultdict, deque
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig
from dicom_node.db import Database, Delivery, DeliveryItem
from dicom_node.sender import ItemResult, SendError, send

log = logging.getLogger("dicom_node.delivery")

# Most deliveries one worker sends over one association (same destination, all due).
BATCH = 32


_ITEM_SENT = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(state="sent", status=bindparam("b_status"), duration_ms=bindparam("b_ms"), sent_at=bindparam("b_at"), error=None)
)
_ITEM_REFUSED = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), duration_ms=bindparam("b_ms"), error=bindparam("b_error"))
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
        state="pending", attempts=0, next_attempt_at=now, created_at=now, possible_duplicates=0,
    )
    session.add(delivery)
    session.flush()
    session.add_all(
        DeliveryItem(delivery_id=delivery.id, sop_instance_uid=uid, path=path, instance_version=version, state="pending")
        for uid, path, version in items
    )
    return delivery


def recover(db: Database) -> int:
    """Return deliveries a dead process left in ``sending`` to ``pending`` (at start-up)."""
    with db.write() as session:
        stuck = session.scalars(select(Delivery).where(Delivery.state == "sending")).all()
        for delivery in stuck:
            delivery.state = "pending"
            delivery.possible_duplicates += 1
            delivery.next_attempt_at = utcnow()
        if stuck:
            log.warning("recovered %d interrupted deliveries; each may have sent one object twice", len(stuck))
        return len(stuck)


def claim_next(db: Database, worker: str) -> list[int]:
    """Claim the next due delivery and the other due ones to the same destination (at most :data:`BATCH`).

    They then share one association: per series, one object each, a
    burst of radiographs would otherwise open and release an association
    per image.  Returns the claimed ids, oldest first (empty: nothing due).
    """
    now = utcnow()
    due = (Delivery.state == "pending", Delivery.next_attempt_at <= now)
    with db.write() as session:
        first = session.scalar(select(Delivery.destination).where(*due).order_by(Delivery.next_attempt_at, Delivery.id).limit(1))
        if first is None:
            return []
        candidates = session.scalars(
            select(Delivery.id).where(*due, Delivery.destination == first).order_by(Delivery.next_attempt_at, Delivery.id).limit(BATCH)
        ).all()
        return [
            delivery_id for delivery_id in candidates
            if session.execute(
                update(Delivery).where(Delivery.id == delivery_id, Delivery.state == "pending")
                .values(state="sending", started_at=now, attempts=Delivery.attempts + 1)
            ).rowcount
        ]


def run_deliveries(db: Database, config: NodeConfig, delivery_ids: list[int]) -> list[str]:
    """Send the pending items of claimed deliveries (one destination) over one association; returns their new states."""
    with db.session() as session:
        rows = session.execute(select(Delivery.id, Delivery.destination, Delivery.attempts).where(Delivery.id.in_(delivery_ids))).all()
        pending = session.execute(
            select(DeliveryItem.id, DeliveryItem.path)
            .where(DeliveryItem.delivery_id.in_(delivery_ids), DeliveryItem.state == "pending")
            .order_by(DeliveryItem.delivery_id, DeliveryItem.id)
        ).all()
    attempts = {row.id: row.attempts for row in rows}
    destination_name = rows[0].destination
    by_path: dict[str, deque[int]] = defaultdict(deque)  # the same file may be in two deliveries of the batch
    for item_id, path in pending:
        by_path[path].append(item_id)
    destination = config.destinations.get(destination_name)
    error: str | None = None
    permanent = False
    if destination is None:
        error, permanent = f"destination {destination_name!r} is not configured", True
    elif pending:
        def on_result(result: ItemResult) -> None:
            # A pre-built Core UPDATE per object (about 0.1 ms): the ORM's load-modify-flush, or even
            # building the statement each time, cost about 1 ms, more than sending a CT slice.
            params = {"b_id": by_path[result.path].popleft(), "b_status": result.status, "b_ms": result.duration_ms}
            with db.write_connection() as conn:
                if result.ok:
                    conn.execute(_ITEM_SENT, {**params, "b_at": utcnow()})
                else:
                    conn.execute(_ITEM_REFUSED, {**params, "b_error": result.error})
        try:
            send(destination, [path for _, path in pending], config.ae_title, on_result)
        except SendError as exc:
            error, permanent = str(exc), exc.permanent
        except Exception as exc:  # noqa: BLE001 - a delivery must always end in a state
            error = f"{type(exc).__name__}: {exc}"
    return [_finish(db, config, delivery_id, attempts[delivery_id], destination_name, error, permanent) for delivery_id in sorted(attempts)]


def _finish(db: Database, config: NodeConfig, delivery_id: int, attempts: int, destination_name: str,
            error: str | None, permanent: bool) -> str:
    """Delivered when nothing is left to send; otherwise retried later or failed, with the reason."""
    with db.write() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        left = session.scalar(
            select(func.count()).select_from(DeliveryItem).where(DeliveryItem.delivery_id == delivery_id, DeliveryItem.state == "pending")
        )
        now = utcnow()
        if not left:
            error = None  # every object of this delivery is there, whatever happened later in the batch
            delivery.state, delivery.finished_at, delivery.last_error = "delivered", now, None
        else:
            if error is None:
                first = session.scalar(
                    select(DeliveryItem.error).where(DeliveryItem.delivery_id == delivery_id, DeliveryItem.state == "pending", DeliveryItem.error.is_not(None)).limit(1)
                )
                error = f"{left} object(s) not accepted: {first}"
            delivery.last_error = error
            if permanent or attempts >= config.delivery.max_attempts:
                delivery.state, delivery.finished_at = "failed", now
            else:
                delay = backoff_seconds(attempts, config.delivery.retry_initial_seconds, config.delivery.retry_max_seconds)
                delivery.state, delivery.next_attempt_at = "pending", now + timedelta(seconds=delay)
        state = delivery.state
    log_fn = log.info if state == "delivered" else log.warning
    log_fn("delivery %d to %s: %s (attempt %d)%s", delivery_id, destination_name, state, attempts, f": {error}" if error else "")
    return state


def retry(db: Database, *, delivery_ids: list[int] | None = None, all_failed: bool = False) -> int:
    """Put failed (or chosen) deliveries back in the queue now; returns how many."""
    with db.write() as session:
        query = select(Delivery)
        if delivery_ids:
            query = query.where(Delivery.id.in_(delivery_ids))
        elif all_failed:
            query = query.where(Delivery.state == "failed")
        else:
            return 0
        rows = [d for d in session.scalars(query).all() if d.state in ("failed", "pending")]
        for delivery in rows:
            delivery.state, delivery.attempts, delivery.next_attempt_at, delivery.finished_at = "pending", 0, utcnow(), None
        return len(rows)


class DeliveryWorkers:
    """N threads that claim and run deliveries until stopped."""

    def __init__(self, db: Database, config: NodeConfig) -> None:
        self.db, self.config = db, config
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"delivery-{i}", args=(f"delivery-{i}",), daemon=True)
            for i in range(config.delivery.workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                delivery_ids = claim_next(self.db, name)
            except Exception:  # noqa: BLE001 - a DB hiccup must not kill the worker
                log.exception("claiming a delivery failed")
                delivery_ids = []
            if not delivery_ids:
                self._wake.wait(self.config.delivery.poll_seconds)
                self._wake.clear()
                continue
            run_deliveries(self.db, self.config, delivery_ids)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
