"""Delivery workers: threads that claim due deliveries and send them, each ending in its own state.

The items of one batch share one association (:func:`run_deliveries`); each
item is committed as sent right after the peer's success status, and each
delivery then ends delivered, pending with a backoff, or failed with the
reason (:func:`finish`).

Before each object goes out, :func:`_Verifier` compares the copy opened
with the instance row: an item whose instance has a newer copy queued for
the same destination on its own is ``superseded`` and not sent (an older
copy never follows its successor); one whose newer copy has no item of its
own sends that newer copy and records its version.

A database error never ends a worker: a commit that fails after the peer
accepted an object is retried when the delivery finishes, and a batch that
cannot be finished is released back to the queue, counting the objects
that were accepted without being recorded as possible duplicates (they
are sent again).  A supervisor restarts any worker thread that dies anyway.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Database, Delivery, DeliveryItem, Instance
from dicom_node.db.states import DeliveryItemState, DeliveryState
from dicom_node.delivery.queue import backoff_seconds, claim_next
from dicom_node.delivery.send import ItemResult, SendError, send
from dicom_node.receive.file_meta import FileInfo

log = logging.getLogger("dicom_node.delivery.workers")

# Worker threads the supervisor restarted since this process started (for the metrics page and tests).
worker_restarts = 0

_ITEM_SENT = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(state=DeliveryItemState.SENT, status=bindparam("b_status"), duration_ms=bindparam("b_ms"), sent_at=bindparam("b_at"),
            instance_version=bindparam("b_version"), error=None)
)
_ITEM_REFUSED = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), duration_ms=bindparam("b_ms"), error=bindparam("b_error"))
)
_ITEM_SUPERSEDED = (
    update(DeliveryItem).where(DeliveryItem.id == bindparam("b_id"))
    .values(state=DeliveryItemState.SUPERSEDED, error=bindparam("b_error"))
)
_CURRENT_COPY = select(Instance.version, Instance.digest).where(Instance.sop_instance_uid == bindparam("b_uid"))
_NEWER_ITEM = (
    select(DeliveryItem.instance_version).join(Delivery, Delivery.id == DeliveryItem.delivery_id)
    .where(DeliveryItem.sop_instance_uid == bindparam("b_uid"), DeliveryItem.instance_version > bindparam("b_version"),
           Delivery.destination == bindparam("b_destination"), DeliveryItem.state != DeliveryItemState.SUPERSEDED)
    .limit(1)
)
_RELEASE = (
    update(Delivery).where(Delivery.id == bindparam("b_id"), Delivery.state == DeliveryState.SENDING)
    .values(state=DeliveryState.PENDING, next_attempt_at=bindparam("b_at"),
            possible_duplicates=Delivery.possible_duplicates + bindparam("b_dupes"))
)


class StrandedDeliveries(Exception):
    """Claimed deliveries a database error left in ``sending``: id -> objects possibly sent twice."""

    def __init__(self, stranded: dict[int, int]) -> None:
        super().__init__(f"deliveries {sorted(stranded)} could not be finished")
        self.stranded = stranded


class _Verifier:
    """``verify`` for :func:`send`: the copy about to go out must be the item's instance, not an outdated one."""

    def __init__(self, db: Database, destination: str, items: Sequence[Any]) -> None:
        self.db, self.destination, self.items = db, destination, items
        self.versions: dict[int, int] = {}  # index -> the instance version actually sent, when newer than the item's

    def __call__(self, index: int, info: FileInfo | None, digest: str | None) -> str | None:
        item = self.items[index]
        with self.db.session() as session:
            row = session.execute(_CURRENT_COPY, {"b_uid": item.sop_instance_uid}).first()
            if row is None:  # not a received instance (a model's output): nothing can supersede it
                return None
            newer = None
            if row.version > item.instance_version:
                newer = session.scalar(_NEWER_ITEM, {"b_uid": item.sop_instance_uid, "b_version": item.instance_version,
                                                     "b_destination": self.destination})
        if newer is not None:
            return f"superseded: version {newer} of this instance is queued for {self.destination} on its own"
        if info is None:
            return None  # a plain failure: the file cannot be read
        if row.version == item.instance_version and digest and row.digest and digest != row.digest:
            return "superseded: a newer copy replaced this one in the spool while the delivery waited"
        if row.version > item.instance_version:
            self.versions[index] = row.version  # newest wins: the destination gets the copy stored now
        return None


def run_deliveries(db: Database, config: NodeConfig, delivery_ids: list[int]) -> list[str]:
    """Send the pending items of claimed deliveries (one destination) over one association; returns their new states.

    Raises :class:`StrandedDeliveries` if a database error keeps it from finishing them.
    """
    unrecorded: dict[int, list[dict[str, Any]]] = defaultdict(list)  # delivery id -> accepted, commit failed
    finished: set[int] = set()
    try:
        return _run(db, config, delivery_ids, unrecorded, finished)
    except Exception as exc:
        raise StrandedDeliveries({d: len(unrecorded[d]) for d in delivery_ids if d not in finished}) from exc


def _run(db: Database, config: NodeConfig, delivery_ids: list[int], unrecorded: dict[int, list[dict[str, Any]]],
         finished: set[int]) -> list[str]:
    with db.session() as session:
        rows = session.execute(select(Delivery.id, Delivery.destination, Delivery.attempts).where(Delivery.id.in_(delivery_ids))).all()
        pending = session.execute(
            select(DeliveryItem.id, DeliveryItem.delivery_id, DeliveryItem.path, DeliveryItem.sop_instance_uid, DeliveryItem.instance_version)
            .where(DeliveryItem.delivery_id.in_(delivery_ids), DeliveryItem.state == DeliveryItemState.PENDING)
            .order_by(DeliveryItem.delivery_id, DeliveryItem.id)
        ).all()
    attempts = {row.id: row.attempts for row in rows}
    destination_name = rows[0].destination
    destination = config.destinations.get(destination_name)
    error: str | None = None
    permanent = False
    if destination is None:
        error, permanent = f"destination {destination_name!r} is not configured", True
    elif pending:
        verifier = _Verifier(db, destination_name, pending)

        def on_result(result: ItemResult) -> None:
            # A pre-built Core UPDATE per object (about 0.1 ms): the ORM's load-modify-flush, or even
            # building the statement each time, cost about 1 ms, more than sending a CT slice.
            item = pending[result.index]
            params: dict[str, Any] = {"b_id": item.id}
            if result.skipped:
                statement, params["b_error"] = _ITEM_SUPERSEDED, result.error
            elif result.ok:
                statement = _ITEM_SENT
                params.update(b_status=result.status, b_ms=result.duration_ms, b_at=utcnow(),
                              b_version=verifier.versions.get(result.index, item.instance_version))
            else:
                statement = _ITEM_REFUSED
                params.update(b_status=result.status, b_ms=result.duration_ms, b_error=result.error)
            try:
                with db.write_connection() as conn:
                    conn.execute(statement, params)
            except Exception:  # noqa: BLE001 - the object is at the destination: record it when the delivery finishes
                if not result.ok:
                    raise
                log.exception("recording object %d of delivery %d as sent failed; retried when the delivery finishes", item.id, item.delivery_id)
                unrecorded[item.delivery_id].append(params)
        try:
            send(destination, [item.path for item in pending], config.ae_title, on_result, verifier)
        except SendError as exc:
            error, permanent = str(exc), exc.permanent
        except Exception as exc:  # noqa: BLE001 - a delivery must always end in a state
            error = f"{type(exc).__name__}: {exc}"
    states = []
    for delivery_id in sorted(attempts):
        states.append(finish(db, config, delivery_id, attempts[delivery_id], destination_name, error, permanent, unrecorded[delivery_id]))
        finished.add(delivery_id)
    return states


def finish(db: Database, config: NodeConfig, delivery_id: int, attempts: int, destination_name: str,
            error: str | None, permanent: bool, unrecorded: list[dict[str, Any]] | None = None) -> str:
    """Delivered when nothing is left to send; otherwise retried later or failed, with the reason.

    ``unrecorded``: parameters of objects the peer accepted whose own commit failed; recorded here first.
    """
    with db.write() as session:
        for params in unrecorded or ():
            session.execute(_ITEM_SENT, params)
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
    """N threads that claim and run deliveries until stopped, and a supervisor that restarts any that dies."""

    def __init__(self, db: Database, config: NodeConfig) -> None:
        self.db, self.config = db, config
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [self._thread(i) for i in range(config.delivery.workers)]
        self._supervisor = threading.Thread(target=self._supervise, name="delivery-supervisor", daemon=True)
        self._stranded: dict[int, int] = {}  # delivery id -> possible duplicates, to release to the queue
        self._stranded_lock = threading.Lock()

    def _thread(self, number: int) -> threading.Thread:
        name = f"delivery-{number}"
        return threading.Thread(target=self._loop, name=name, args=(name,), daemon=True)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._supervisor.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self, name: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._release_stranded()
                delivery_ids = claim_next(self.db, name, self.config.delivery.batch_size)
                if delivery_ids:
                    run_deliveries(self.db, self.config, delivery_ids)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the worker
                if isinstance(exc, StrandedDeliveries):
                    with self._stranded_lock:
                        for delivery_id, dupes in exc.stranded.items():
                            self._stranded[delivery_id] = self._stranded.get(delivery_id, 0) + dupes
                failures += 1
                delay = backoff_seconds(failures, self.config.delivery.poll_seconds, self.config.delivery.retry_initial_seconds)
                log.exception("%s: delivery loop failed (%d in a row); next try in %.1f s", name, failures, delay)
                self._stop.wait(delay)
                continue
            if not delivery_ids:
                self._wake.wait(self.config.delivery.poll_seconds)
                self._wake.clear()

    def _release_stranded(self) -> None:
        """Put deliveries a failed batch left in ``sending`` back in the queue, with their possible duplicates."""
        with self._stranded_lock:
            if not self._stranded:
                return
            stranded, self._stranded = self._stranded, {}
        try:
            with self.db.write_connection() as conn:
                for delivery_id, dupes in stranded.items():
                    conn.execute(_RELEASE, {"b_id": delivery_id, "b_at": utcnow(), "b_dupes": dupes})
        except Exception:
            with self._stranded_lock:
                for delivery_id, dupes in stranded.items():
                    self._stranded[delivery_id] = self._stranded.get(delivery_id, 0) + dupes
            raise
        log.warning("deliveries %s released back to the queue (possible duplicates: %d)", sorted(stranded), sum(stranded.values()))

    def _supervise(self) -> None:
        global worker_restarts
        while not self._stop.wait(self.config.delivery.poll_seconds):
            for number, thread in enumerate(self._threads):
                if not thread.is_alive() and not self._stop.is_set():
                    log.error("%s died; restarting it", thread.name)
                    worker_restarts += 1
                    self._threads[number] = self._thread(number)
                    self._threads[number].start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._supervisor.join(timeout=30)
        for thread in self._threads:
            thread.join(timeout=30)
