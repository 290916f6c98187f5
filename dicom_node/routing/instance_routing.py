"""Which stored objects still wait for instance-level rules, and marking them done.

Series and study rules wait for completion: the quiet period after the
last association that carried a series.  Instance-level rules (forward
only; see :mod:`routing_rules.rules`) act on each object as soon as it is
stored, as Orthanc's ``OnStoredInstance`` scripts and dcm4chee's
instance-entity export rules do, so a forward reaches the destination
while the sender is still sending.

The receiver does nothing extra for this: a new row, or a duplicate that
replaced one, has ``routed_version`` NULL.  The dispatcher takes those in
id order, applies the rules, and in the same transaction as the deliveries
it queues sets ``routed_version`` to the version it read, so a crash can
neither lose nor repeat a forward.  The version condition makes a copy
that arrived meanwhile (a newer version) stay NULL: it is routed next time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, select, update
from sqlalchemy.orm import Session

from dicom_node.db import Database, Instance, Series
from dicom_node.defaults import INSTANCE_PASS_LIMIT

_MARK = (
    update(Instance)
    .where(Instance.id == bindparam("b_id"), Instance.version == bindparam("b_version"))
    .values(routed_version=bindparam("b_version"))
)


@dataclass(frozen=True)
class Unrouted:
    """One stored object whose current copy has not been through instance-level rules."""

    instance_id: int
    version: int
    path: str
    series_id: int
    series_uid: str
    study_id: int
    run: int  # the run of the series this copy belongs to (its dispatches are recorded under it)


def unrouted(session: Session, limit: int = INSTANCE_PASS_LIMIT) -> list[Unrouted]:
    """The oldest objects waiting for instance-level rules (uses the partial index on NULL)."""
    rows = session.execute(
        select(Instance.id, Instance.version, Instance.path, Instance.series_id, Series.series_instance_uid, Series.study_id,
               Series.run_count + 1)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.routed_version.is_(None))
        .order_by(Instance.id)
        .limit(limit)
    ).all()
    return [Unrouted(*row) for row in rows]


def mark_routed(session: Session, objects: list[Unrouted]) -> None:
    """Record that these copies went through the rules (caller commits with the deliveries)."""
    if objects:
        session.connection().execute(_MARK, [{"b_id": o.instance_id, "b_version": o.version} for o in objects])


def mark_all_routed(db: Database) -> int:
    """With no instance-level rules in force: mark whatever is waiting, so a rule added later starts from then.

    Returns how many objects were marked.  Reads first: a sweep that finds
    nothing waiting takes no write lock.
    """
    with db.session() as session:
        if session.scalar(select(Instance.id).where(Instance.routed_version.is_(None)).limit(1)) is None:
            return 0
    with db.write() as session:
        return cast(CursorResult[Any], session.execute(
            update(Instance).where(Instance.routed_version.is_(None)).values(routed_version=Instance.version)
        )).rowcount  # an UPDATE's result is a CursorResult
