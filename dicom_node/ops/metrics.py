"""Prometheus metrics, computed from the database at each scrape.

The database already is the record of everything the node did (instances,
series, jobs, deliveries with their timings), so the metrics are queries
over it rather than counters kept in memory: they survive restarts, agree
with ``dicom-node status`` and the operations page, and are the same
whichever process serves them.  The text follows the Prometheus exposition
format 0.0.4 (``# HELP`` / ``# TYPE`` lines, cumulative histogram buckets).

Counters are totals since the database was created; "currently in this
state" numbers are gauges labelled by state.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dicom_node import __version__
from dicom_node.db import Association, Database, Delivery, DeliveryItem, Instance, Job, Series, Study
from dicom_node.clock import utcnow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ITEM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
SERIES_STATES = ("receiving", "complete", "dispatched")
JOB_STATES = ("pending", "running", "done", "failed")
DELIVERY_STATES = ("pending", "sending", "delivered", "failed")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items()) + "}"


def _number(value: float | int | None) -> str:
    if value is None:
        return "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)


class Exposition:
    """Collects metric families and writes them in the text format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float | int | None, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def gauge(self, name: str, help_text: str, value: float | int | None) -> None:
        self.family(name, "gauge", help_text)
        self.sample(name, value)

    def counter(self, name: str, help_text: str, value: float | int | None) -> None:
        self.family(name, "counter", help_text)
        self.sample(name, value)

    def by_state(self, name: str, help_text: str, counts: dict[str, int], states: Sequence[str], label: str = "state") -> None:
        """A gauge per state; known states are always written (as 0) so dashboards see them."""
        self.family(name, "gauge", help_text)
        for state in sorted(set(states) | set(counts)):
            self.sample(name, counts.get(state, 0), **{label: state})

    def histogram(self, name: str, help_text: str, values: Iterable[float], buckets: Sequence[float]) -> None:
        counts = [0] * len(buckets)
        total, count = 0.0, 0
        for value in values:
            count += 1
            total += value
            for i, bound in enumerate(buckets):
                if value <= bound:
                    counts[i] += 1
        self.family(name, "histogram", help_text)
        for bound, bucket_count in zip(buckets, counts, strict=True):
            self.sample(f"{name}_bucket", bucket_count, le=_number(float(bound)))
        self.sample(f"{name}_bucket", count, le="+Inf")
        self.sample(f"{name}_sum", round(total, 6))
        self.sample(f"{name}_count", count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _grouped(session: Session, column: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in session.execute(select(column, func.count()).group_by(column)).all()}


def _seconds_between(session: Session, start: Any, end: Any, *where: Any) -> Iterable[float]:
    """(end - start) in seconds for rows where both are set; computed in Python to work on SQLite and PostgreSQL alike."""
    query = select(start, end).where(start.is_not(None), end.is_not(None), *where).execution_options(yield_per=2000)
    for begin, finish in session.execute(query):
        if isinstance(begin, datetime) and isinstance(finish, datetime):
            yield max(0.0, (finish - begin).total_seconds())


def render_metrics(db: Database, rules: Any = None) -> str:
    """The metrics page.  ``rules`` (the node's rule source, if in this process) adds rule counts."""
    out = Exposition()
    with db.session() as session:
        out.family("dicom_node_info", "gauge", "Version of the node serving these metrics.")
        out.sample("dicom_node_info", 1, version=__version__)

        received, store_failures = session.execute(
            select(func.coalesce(func.sum(Association.instances_received), 0), func.coalesce(func.sum(Association.failures), 0))
        ).one()
        out.counter("dicom_node_instances_received_total", "Instances acknowledged by the receiver (duplicates included).", received)
        out.counter("dicom_node_store_failures_total", "C-STORE requests answered with a failure status.", store_failures)
        out.gauge("dicom_node_instances_stored", "Instances currently recorded in the spool.", session.scalar(select(func.count(Instance.id))))
        out.gauge("dicom_node_associations_open", "Inbound associations not yet ended.",
                  session.scalar(select(func.count(Association.id)).where(Association.ended_at.is_(None))))

        series = _grouped(session, Series.state)
        out.by_state("dicom_node_series", "Series by state.", series, SERIES_STATES)
        out.counter("dicom_node_series_completed_total", "Series that reached completion at least once.",
                    session.scalar(select(func.count(Series.id)).where(Series.completed_at.is_not(None))))
        out.by_state("dicom_node_studies", "Studies by state.", _grouped(session, Study.state), ("receiving", "dispatched"))
        jobs = _grouped(session, Job.state)
        out.by_state("dicom_node_jobs", "Model jobs by state.", jobs, JOB_STATES)
        deliveries = _grouped(session, Delivery.state)
        out.by_state("dicom_node_deliveries", "Deliveries (one batch for one destination) by state.", deliveries, DELIVERY_STATES)
        out.by_state("dicom_node_delivery_items", "Objects in deliveries by state.", _grouped(session, DeliveryItem.state), ("pending", "sent"))

        out.family("dicom_node_failures", "gauge", "Things that ended failed and wait for an operator (retry from the operations page).")
        out.sample("dicom_node_failures", deliveries.get("failed", 0), kind="delivery")
        out.sample("dicom_node_failures", jobs.get("failed", 0), kind="job")

        out.family("dicom_node_queue_depth", "gauge", "Work waiting: series still receiving, complete series not yet routed, jobs and deliveries not finished.")
        out.sample("dicom_node_queue_depth", series.get("receiving", 0), queue="series_waiting")
        out.sample("dicom_node_queue_depth", series.get("complete", 0), queue="series_to_dispatch")
        out.sample("dicom_node_queue_depth", jobs.get("pending", 0) + jobs.get("running", 0), queue="jobs")
        out.sample("dicom_node_queue_depth", deliveries.get("pending", 0) + deliveries.get("sending", 0), queue="deliveries")
        oldest = session.scalar(select(func.min(Delivery.created_at)).where(Delivery.state.in_(("pending", "sending"))))
        out.gauge("dicom_node_oldest_pending_delivery_age_seconds", "Age of the oldest unfinished delivery (0 when none).",
                  round((utcnow() - oldest).total_seconds(), 3) if oldest else 0)

        durations = session.scalars(
            select(DeliveryItem.duration_ms).where(DeliveryItem.state == "sent", DeliveryItem.duration_ms.is_not(None)).execution_options(yield_per=5000)
        )
        out.histogram("dicom_node_delivery_item_duration_seconds", "Time to send one object (C-STORE round trip or folder copy).",
                      (ms / 1000.0 for ms in durations), ITEM_BUCKETS)
        out.histogram("dicom_node_delivery_latency_seconds", "From a delivery being queued to it being delivered (retries included).",
                      _seconds_between(session, Delivery.created_at, Delivery.finished_at, Delivery.state == "delivered"), LATENCY_BUCKETS)
        out.histogram("dicom_node_series_routing_latency_seconds", "From the last instance of a series to its rules being applied (quiet period included).",
                      _seconds_between(session, Series.last_received_at, Series.dispatched_at), LATENCY_BUCKETS)
        out.histogram("dicom_node_job_duration_seconds", "Model job run time, for jobs that finished.",
                      _seconds_between(session, Job.started_at, Job.finished_at, Job.state.in_(("done", "failed"))), LATENCY_BUCKETS)
        sent_late = session.scalar(select(func.coalesce(func.sum(case((Series.late_count > 0, 1), else_=0)), 0)))
        out.gauge("dicom_node_series_with_late_instances", "Series that received instances after they were routed.", sent_late)

    if rules is not None:
        ruleset = rules.current()
        out.gauge("dicom_node_rules_active", "Valid rules in force (enabled or not).", len(ruleset.rules))
        out.gauge("dicom_node_rules_enabled", "Enabled rules in force.", sum(1 for r in ruleset.rules if r.enabled))
        out.gauge("dicom_node_rule_errors", "Problems found when loading rules (such rules do not route).", len(ruleset.errors))
    return out.text()
