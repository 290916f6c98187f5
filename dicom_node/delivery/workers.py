"""Delivery workers: threads that claim due deliveries and send them, each ending in its own state.

The items of one batch share one association (:func:`run_deliveries`); each
item is committed as sent right after the peer's success status, and each
delivery then ends delivered, pending with a backoff, or failed with the
reason (:func:`finish`).
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from datetime import timedelta

from sqlalchemy import bindparam, func, select, update

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Database, Delivery, DeliveryItem
from dicom_node.db.states import DeliveryItemState, DeliveryState
from dicom_node.delivery.queue import backoff_seconds, claim_next
from dicom_node.delivery.send import ItemResult, SendError, send

log = logging.getLogger("dicom_node.delivery.workers")

_ITEM_SENT = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(state=DeliveryItemState.SENT, status=bindparam("b_status"), duration_ms=bindparam("b_ms"), sent_at=bindparam("b_at"), error=None)
)
_ITEM_REFUSED = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), duration_ms=bindparam("b_ms"), error=bindparam("b_error"))
)


def run_deliveries(db: Database, config: NodeConfig, delivery_ids: list[int]) -> list[str]:
    """Send the pending items of claimed deliveries (one destination) over one association; returns their new states."""
    with db.session() as session:
        rows = session.execute(select(Delivery.id, Delivery.destination, Delivery.attempts).where(Delivery.id.in_(delivery_ids))).all()
        pending = session.execute(
            select(DeliveryItem.id, DeliveryItem.path)
            .where(DeliveryItem.delivery_id.in_(delivery_ids), DeliveryItem.state == DeliveryItemState.PENDING)
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
    return [finish(db, config, delivery_id, attempts[delivery_id], destination_name, error, permanent) for delivery_id in sorted(attempts)]


def finish(db: Database, config: NodeConfig, delivery_id: int, attempts: int, destination_name: str,
            error: str | None, permanent: bool) -> str:
    """Delivered when nothing is left to send; otherwise retried later or failed, with the reason."""
    with db.write() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        left = session.scalar(
            select(func.count()).select_from(DeliveryItem).where(DeliveryItem.delivery_id == delivery_id, DeliveryItem.state == DeliveryItemState.PENDING)
        )
        now = utcnow()
        if not left:
            error = None  # every object of this delivery is there, whatever happened later in the batch
            delivery.state, delivery.finished_at, delivery.last_error = DeliveryState.DELIVERED, now, None
        else:
            if error is None:
                first = session.scalar(
                    select(DeliveryItem.error).where(DeliveryItem.delivery_id == delivery_id, DeliveryItem.state == DeliveryItemState.PENDING, DeliveryItem.error.is_not(None)).limit(1)
                )
                error = f"{left} object(s) not accepted: {first}"
            delivery.last_error = error
            if permanent or attempts >= config.delivery.max_attempts:
                delivery.state, delivery.finished_at = DeliveryState.FAILED, now
            else:
                delay = backoff_seconds(attempts, config.delivery.retry_initial_seconds, config.delivery.retry_max_seconds)
                delivery.state, delivery.next_attempt_at = DeliveryState.PENDING, now + timedelta(seconds=delay)
        state = delivery.state
    log_fn = log.info if state == DeliveryState.DELIVERED else log.warning
    log_fn("delivery %d to %s: %s (attempt %d)%s", delivery_id, destination_name, state, attempts, f": {error}" if error else "")
    return state


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
                delivery_ids = claim_next(self.db, name, self.config.delivery.batch_size)
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
