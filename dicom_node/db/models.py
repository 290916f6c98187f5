"""SQLAlchemy models.  States are plain strings so that operators can read them in SQL.

Series states: ``receiving`` (instances arriving or quiet period running),
``complete`` (quiet period over, rules not yet applied), ``dispatched``
(rules applied; actions queued), ``failed`` (the rules could not be applied:
``failure_reason`` says why; an operator retries or dismisses it).  Deliveries and jobs have their own
state machines documented on the classes.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    called_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it is failed, or was dismissed
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    series_description: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    called_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_count: Mapped[int] = mapped_column(Integer, default=0)
    late_count: Mapped[int] = mapped_column(Integer, default=0)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completion_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it is failed, or was dismissed
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Association(Base):
    """One inbound association.  ``ended_at`` is NULL while it is open.

    ``receiver_pid`` lets a restarted node close associations that a killed
    receiver left open, so completion timers do not wait for them forever.
    """

    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    end_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    receiver_pid: Mapped[int] = mapped_column(Integer)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class Instance(Base):
    """A stored instance.  ``version`` counts copies received under the same UID.

    ``routed_version`` is the copy that instance-level rules have been
    applied to; NULL while the latest copy still waits for them (a new
    instance, or a duplicate that replaced one).  The partial index keeps
    finding those cheap however many instances the node holds.  ``digest``
    identifies the stored copy's content (see :mod:`dicom_node.receive.spool`).
    """

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_unrouted", "id", sqlite_where=text("routed_version IS NULL"),
              postgresql_where=text("routed_version IS NULL")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), index=True, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    late: Mapped[bool] = mapped_column(default=False)
    routed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # SHA-256 (first 16 bytes) of the stored dataset bytes (hex; NULL for copies stored before digests were kept):
    # a byte-identical resend is a duplicate that changes nothing
    digest: Mapped[str | None] = mapped_column(String(32), nullable=True)
    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """A model run: ``pending`` -> ``running`` -> ``done`` | ``failed``."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True, nullable=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True, nullable=True)
    rule_name: Mapped[str] = mapped_column(String(128))
    action: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    run_number: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    findings_applied: Mapped[bool] = mapped_column(default=False, server_default="0")


class Delivery(Base):
    """A batch of objects for one destination, sent on one association.

    ``pending`` (waiting for ``next_attempt_at``) -> ``sending`` -> ``delivered``
    | back to ``pending`` with backoff | ``failed`` after ``max_attempts`` or a
    permanent error.  ``dispatch_key`` makes dispatching idempotent: the same
    rule, destination and series run never queue twice.
    """

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("dispatch_key", name="uq_delivery_dispatch_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dispatch_key: Mapped[str] = mapped_column(String(255))
    destination: Mapped[str] = mapped_column(String(64), index=True)
    rule_name: Mapped[str] = mapped_column(String(128))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True, nullable=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    possible_duplicates: Mapped[int] = mapped_column(Integer, default=0)
    items: Mapped[list[DeliveryItem]] = relationship(back_populates="delivery", order_by="DeliveryItem.id")


class DeliveryItem(Base):
    """One object of a delivery; ``sent`` is committed right after the peer's success status."""

    __tablename__ = "delivery_items"
    __table_args__ = (Index("ix_delivery_items_delivery_state", "delivery_id", "state"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"))
    # indexed: every forward checks which copies a destination already has, by UID
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    instance_version: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    delivery: Mapped[Delivery] = relationship(back_populates="items")


class Dispatch(Base):
    """A rule that fired on a series or study run: the audit trail of routing decisions."""

    __tablename__ = "dispatches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(8))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True, nullable=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True, nullable=True)
    rule_name: Mapped[str] = mapped_column(String(128))
    run_number: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
