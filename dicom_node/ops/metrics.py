"""Prometheus metrics, computed from the database at each scrape by a custom prometheus-client collector.

The database already is the record of everything the node did (instances,
series, jobs, deliveries with their timings), so the metrics are queries
over it rather than counters kept in memory: they survive restarts, agree
with ``dicom-node status`` and the operations page (the counts are the
functions of :mod:`dicom_node.ops.queries`), and are the same whichever
process serves them.  prometheus-client writes the exposition text
(format 0.0.4) from a registry of our own, not the library's global one.

A scrape is bounded: no query reads every row of a history table, so it
costs the same after a million instances as after ten.

- Gauges by state and the queue depths: :mod:`dicom_node.ops.queries`
  (unfinished and failed states on the state index, the finished state as
  ``MAX(id)`` minus the others; its docstring says why that is exact).
- ``dicom_node_instances_stored`` is ``MAX(instances.id)``;
  ``dicom_node_series_completed_total`` is all series minus those receiving
  that never completed (state index).
- ``dicom_node_instances_received_total`` and ``dicom_node_store_failures_total``
  are sums over associations, which the receiver writes once, when an
  association ends, and never changes after.  :class:`AssociationTotals`
  keeps the sums of ended associations and, on each scrape, reads only the
  associations it has not folded in yet (by primary key) plus the ones that
  were open last time: a process's first scrape reads the table once, every
  later one reads what arrived since.
- The histograms and ``dicom_node_series_with_late_instances`` describe the
  newest rows only (the last ``WINDOW`` rows of their table by id, a primary
  key range), as their HELP text says.  Over all history they would need
  full scans, and for alerting the recent distribution is the useful one.
  They are therefore not monotonic: read them with ``histogram_quantile``
  on the raw buckets, not through ``rate()``.

Histogram ``le`` labels are written as before the move to prometheus-client
(``"30"``, not ``"30.0"``), so that stored series keep their identity.
"""
from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from dicom_node import __version__
from dicom_node.clock import utcnow
from dicom_node.db import Association, Database, Delivery, DeliveryItem, Instance, Job, Series
from dicom_node.db.states import DeliveryItemState, DeliveryState, JobState, SeriesState, StudyState
from dicom_node.ops import queries

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
ITEM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Rows the recent-window metrics look at: the newest by id of their table.
WINDOW = {"delivery_items": 10_000, "deliveries": 1_000, "series": 1_000, "jobs": 1_000}
# An association is folded into the running totals only once it started this long ago: on PostgreSQL,
# ids are taken before commit, so a lower id may become visible after a higher one for a moment.
SETTLED = timedelta(seconds=60)
STUDY_STATES = (StudyState.RECEIVING, StudyState.DISPATCHED, StudyState.FAILED)


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _histogram(name: str, help_text: str, values: Iterable[float], buckets: Sequence[float]) -> HistogramMetricFamily:
    """Cumulative buckets of ``values`` (a value equal to a bound falls in that bucket, as in Prometheus)."""
    counts = [0] * (len(buckets) + 1)
    total = 0.0
    for value in values:
        counts[bisect_left(buckets, value)] += 1
        total += value
    cumulative, running = [], 0
    for bound, n in zip([*map(_le, buckets), "+Inf"], counts, strict=True):
        running += n
        cumulative.append((bound, running))
    return HistogramMetricFamily(name, help_text, buckets=cumulative, sum_value=total)


def _by_state(name: str, help_text: str, counts: dict[str, int], states: Iterable[str]) -> GaugeMetricFamily:
    """A gauge per state; known states are always written (as 0) so dashboards see them."""
    family = GaugeMetricFamily(name, help_text, labels=["state"])
    for state in sorted({str(s) for s in states} | set(counts)):
        family.add_metric([state], counts.get(state, 0))
    return family


def _newest(model: Any, table: str) -> Any:
    """``id > MAX(id) - WINDOW[table]``: the newest rows, found by primary key."""
    return model.id > select(func.coalesce(func.max(model.id), 0)).scalar_subquery() - WINDOW[table]


def _seconds(session: Session, start: Any, end: Any, *where: Any) -> Iterator[float]:
    """(end - start) in seconds where both are set; computed in Python to work on SQLite and PostgreSQL alike."""
    for begin, finish in session.execute(select(start, end).where(start.is_not(None), end.is_not(None), *where)):
        if isinstance(begin, datetime) and isinstance(finish, datetime):
            yield max(0.0, (finish - begin).total_seconds())


class AssociationTotals:
    """Instances received and store failures summed over all associations, without rereading them.

    The receiver writes an association's counts when it ends and never
    touches the row again, so ended rows are folded into running sums once.
    Each read fetches, by primary key, the rows above the highest folded id
    and the folded-range rows that were still open; open and young rows
    are added to the answer but not folded (see ``SETTLED``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._high = 0  # every association with id <= _high is folded in or listed in _open
        self._open: frozenset[int] = frozenset()
        self._received = 0
        self._failures = 0

    def read(self, session: Session, now: datetime) -> tuple[int, int]:
        with self._lock:
            rows = session.execute(
                select(Association.id, Association.started_at, Association.ended_at, Association.instances_received, Association.failures)
                .where(or_(Association.id > self._high, Association.id.in_(sorted(self._open))))
            ).all()
            settled = [r.id for r in rows if r.started_at <= now - SETTLED]
            high = max([self._high, *settled])
            received, failures, still_open = self._received, self._failures, set()
            for row in rows:
                if row.ended_at is not None and row.id <= high:
                    self._received += row.instances_received
                    self._failures += row.failures
                elif row.id <= high:
                    still_open.add(row.id)
                received += row.instances_received
                failures += row.failures
            self._high, self._open = high, frozenset(still_open)
            return received, failures


class NodeCollector(Collector):
    """The node's metric families, read from the database at each ``collect``."""

    def __init__(self, db: Database, rules: Any = None) -> None:
        self.db = db
        self.rules = rules  # the node's rule source, if in this process: adds rule counts
        self.associations = AssociationTotals()

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with self.db.session() as session:
            yield InfoMetricFamily("dicom_node", "Version of the node serving these metrics.", value={"version": __version__})
            yield from self._receiving(session, now)
            yield from self._states(session, now)
            yield from self._timings(session)
        if self.rules is not None:
            ruleset = self.rules.current()
            yield GaugeMetricFamily("dicom_node_rules_active", "Valid rules in force (enabled or not).", value=len(ruleset.rules))
            yield GaugeMetricFamily("dicom_node_rules_enabled", "Enabled rules in force.", value=sum(1 for r in ruleset.rules if r.enabled))
            yield GaugeMetricFamily("dicom_node_rule_errors", "Problems found when loading rules (such rules do not route).",
                                    value=len(ruleset.errors))

    def _receiving(self, session: Session, now: datetime) -> Iterator[Metric]:
        received, store_failures = self.associations.read(session, now)
        yield CounterMetricFamily("dicom_node_instances_received_total", "Instances acknowledged by the receiver (duplicates included), "
                                  "counted when their association ends.", value=received)
        yield CounterMetricFamily("dicom_node_store_failures_total", "C-STORE requests answered with a failure status.", value=store_failures)
        yield GaugeMetricFamily("dicom_node_instances_stored", "Instances currently recorded in the spool.",
                                value=queries.total_rows(session, Instance))
        yield GaugeMetricFamily("dicom_node_associations_open", "Inbound associations not yet ended.", value=queries.open_associations(session))

    def _states(self, session: Session, now: datetime) -> Iterator[Metric]:
        series = queries.series_counts(session)
        jobs = queries.job_counts(session)
        deliveries = queries.delivery_counts(session)
        yield _by_state("dicom_node_series", "Series by state.", series, SeriesState)
        never_completed = select(func.count()).select_from(Series).where(
            Series.state == SeriesState.RECEIVING, Series.completed_at.is_(None)).scalar_subquery()
        completed = session.scalar(select(func.coalesce(func.max(Series.id), 0) - never_completed))
        yield CounterMetricFamily("dicom_node_series_completed_total", "Series that reached completion at least once.", value=completed or 0)
        studies = queries.study_counts(session)
        yield _by_state("dicom_node_studies", "Studies by state.", studies, STUDY_STATES)
        yield _by_state("dicom_node_jobs", "Model jobs by state.", jobs, JobState)
        yield _by_state("dicom_node_deliveries", "Deliveries (one batch for one destination) by state.", deliveries, DeliveryState)
        items = queries.delivery_item_counts(session)
        yield _by_state("dicom_node_delivery_items", "Objects in deliveries by state.", items, DeliveryItemState)

        failures = GaugeMetricFamily("dicom_node_failures", "Things that ended failed and wait for an operator (retry or dismiss "
                                     "from the operations page): deliveries, jobs, series and studies that could not be dispatched.",
                                     labels=["kind"])
        failures.add_metric(["delivery"], deliveries.get(DeliveryState.FAILED, 0))
        failures.add_metric(["job"], jobs.get(JobState.FAILED, 0))
        failures.add_metric(["series"], series.get(SeriesState.FAILED, 0))
        failures.add_metric(["study"], studies.get(StudyState.FAILED, 0))
        yield failures

        depth = GaugeMetricFamily("dicom_node_queue_depth", "Work waiting: series still receiving, complete series not yet routed, "
                                  "jobs and deliveries not finished.", labels=["queue"])
        depth.add_metric(["series_waiting"], series.get(SeriesState.RECEIVING, 0))
        depth.add_metric(["series_to_dispatch"], series.get(SeriesState.COMPLETE, 0))
        depth.add_metric(["jobs"], jobs.get(JobState.PENDING, 0) + jobs.get(JobState.RUNNING, 0))
        depth.add_metric(["deliveries"], deliveries.get(DeliveryState.PENDING, 0) + deliveries.get(DeliveryState.SENDING, 0))
        yield depth
        unfinished = Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING])
        oldest = session.scalar(select(func.min(Delivery.created_at)).where(unfinished))
        yield GaugeMetricFamily("dicom_node_oldest_pending_delivery_age_seconds", "Age of the oldest unfinished delivery (0 when none).",
                                value=round((now - oldest).total_seconds(), 3) if oldest else 0)

    def _timings(self, session: Session) -> Iterator[Metric]:
        durations = session.scalars(select(DeliveryItem.duration_ms).where(
            _newest(DeliveryItem, "delivery_items"), DeliveryItem.state == DeliveryItemState.SENT, DeliveryItem.duration_ms.is_not(None)))
        yield _histogram("dicom_node_delivery_item_duration_seconds", "Time to send one object (C-STORE round trip or folder copy), "
                         f"over the newest {WINDOW['delivery_items']} delivery items.",
                         (ms / 1000.0 for ms in durations if ms is not None), ITEM_BUCKETS)
        yield _histogram("dicom_node_delivery_latency_seconds", "From a delivery being queued to it being delivered (retries included), "
                         f"over the newest {WINDOW['deliveries']} deliveries.",
                         _seconds(session, Delivery.created_at, Delivery.finished_at, _newest(Delivery, "deliveries"),
                                  Delivery.state == DeliveryState.DELIVERED), LATENCY_BUCKETS)
        yield _histogram("dicom_node_series_routing_latency_seconds", "From the last instance of a series to its rules being applied "
                         f"(quiet period included), over the newest {WINDOW['series']} series.",
                         _seconds(session, Series.last_received_at, Series.dispatched_at, _newest(Series, "series")), LATENCY_BUCKETS)
        finished = Job.state.in_([JobState.DONE, JobState.FAILED])
        yield _histogram("dicom_node_job_duration_seconds", f"Model job run time, for jobs that finished, over the newest {WINDOW['jobs']} jobs.",
                         _seconds(session, Job.started_at, Job.finished_at, _newest(Job, "jobs"), finished), LATENCY_BUCKETS)
        late = session.scalar(select(func.coalesce(func.sum(case((Series.late_count > 0, 1), else_=0)), 0)).where(_newest(Series, "series")))
        yield GaugeMetricFamily("dicom_node_series_with_late_instances", "Series that received instances after they were routed, "
                                f"among the newest {WINDOW['series']} series.", value=late or 0)


class MetricsPage:
    """A registry of its own holding the node's collector; keep one per process (it holds the association totals)."""

    def __init__(self, db: Database, rules: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(db, rules))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render_metrics(db: Database, rules: Any = None) -> str:
    """The metrics page once, for a caller that scrapes once (tests, scripts)."""
    return MetricsPage(db, rules).render().decode()
