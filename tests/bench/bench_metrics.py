#!/usr/bin/env python
"""Benchmark: one /metrics scrape over a database of a million instances, the bounded collector against the old page.

Builds a SQLite database with ``dicom_node.db.Database`` (so the schema is the
migrated one, indexes included) holding ``--instances`` instance rows and, in
proportion, studies (1 per 1000 instances), series and associations (1 per
200), deliveries and jobs (1 per series) and delivery items (1 per instance),
nearly all finished, a few in every unfinished state.  Rows go in with Core
``executemany`` in batches.  Then it times ``--scrapes`` scrapes of:

- ``new``: ``dicom_node.ops.metrics.MetricsPage`` kept across scrapes, as the
  web app keeps it (its first scrape, which folds every ended association
  into running totals once, is shown apart);
- ``old``: the hand-written exposition that /metrics served before
  prometheus-client, copied below unchanged as the reference, run in the same
  process on the same database.

It prints the median and best scrape of each and the ratio old/new, and checks
that the two agree on the values that are not windowed.

    .venv/bin/python tests/bench/bench_metrics.py                       # 1,000,000 instances, 5 scrapes
    .venv/bin/python tests/bench/bench_metrics.py --instances 100000 --scrapes 3 --db /tmp/m.db
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import case, func, insert, select
from sqlalchemy.orm import Session

from dicom_node import __version__
from dicom_node.clock import utcnow
from dicom_node.db import Association, Database, Delivery, DeliveryItem, Instance, Job, Series, Study
from dicom_node.ops.metrics import MetricsPage

BATCH = 50_000
PER_SERIES = 200
SERIES_PER_STUDY = 5
UNFINISHED = 10  # of each unfinished state, among the newest rows


def _batches(rows: Iterable[dict[str, Any]], size: int = BATCH) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build(db: Database, instances: int) -> None:
    """Fill the router tables; the newest rows hold the unfinished states, as on a running node."""
    n_series = max(1, instances // PER_SERIES)
    n_studies = max(1, n_series // SERIES_PER_STUDY)
    t0 = utcnow() - timedelta(days=365)

    def at(i: int, n: int) -> datetime:  # spread over the year, oldest first
        return t0 + timedelta(seconds=365 * 86400 * i / n)

    def tail_state(i: int, n: int, states: Sequence[str], finished: str) -> str:
        from_end = n - i
        return states[from_end // UNFINISHED] if from_end // UNFINISHED < len(states) else finished

    tables: list[tuple[Any, Iterable[dict[str, Any]]]] = [
        (Study, ({"id": i, "study_instance_uid": f"2.25.1.{i}", "state": "dispatched" if i < n_studies - 2 else "receiving",
                  "first_received_at": at(i, n_studies), "last_received_at": at(i, n_studies), "run_count": 1}
                 for i in range(1, n_studies + 1))),
        (Association, ({"id": i, "calling_ae": "STORESCU", "called_ae": "DICOM_NODE", "peer_host": "127.0.0.1", "peer_port": 1000,
                        "started_at": at(i, n_series), "ended_at": None if i == n_series else at(i, n_series) + timedelta(seconds=30),
                        "end_reason": "released", "receiver_pid": 1, "instances_received": PER_SERIES, "failures": int(i % 7 == 0)}
                       for i in range(1, n_series + 1))),
    ]
    for model, rows in tables:
        _insert(db, model, rows)
    series_states = ("receiving", "complete")

    def series_row(i: int) -> dict[str, Any]:
        state = tail_state(i, n_series, series_states, "dispatched")
        last = at(i, n_series)
        done = state == "dispatched"
        return {"id": i, "study_id": min(n_studies, 1 + (i - 1) // SERIES_PER_STUDY), "series_instance_uid": f"2.25.2.{i}",
                "modality": "CT", "state": state, "instance_count": PER_SERIES, "duplicate_count": 0, "late_count": int(i % 97 == 0),
                "run_count": 1, "first_received_at": last - timedelta(seconds=60), "last_received_at": last,
                "completed_at": last + timedelta(seconds=10) if state != "receiving" else None,
                "dispatched_at": last + timedelta(seconds=11 + i % 5) if done else None}

    _insert(db, Series, (series_row(i) for i in range(1, n_series + 1)))
    _insert(db, Instance, ({"id": i, "series_id": 1 + (i - 1) // PER_SERIES if i <= n_series * PER_SERIES else n_series,
                            "sop_instance_uid": f"2.25.3.{i}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": f"/spool/{i}.dcm", "size": 525_000,
                            "received_at": at(i, instances), "association_id": min(n_series, 1 + (i - 1) // PER_SERIES), "version": 1,
                            "late": False, "routed_version": 1} for i in range(1, instances + 1)))
    job_states, delivery_states = ("pending", "running", "failed"), ("pending", "sending", "failed")

    def job_row(i: int) -> dict[str, Any]:
        state = tail_state(i, n_series, job_states, "done")
        start = at(i, n_series) + timedelta(seconds=12)
        return {"id": i, "series_id": i, "study_id": None, "rule_name": "ct-model", "action": {"model": "enhancement-hu"},
                "state": state, "run_number": 1, "attempts": 1, "created_at": start, "started_at": None if state == "pending" else start,
                "finished_at": start + timedelta(seconds=5 + i % 40) if state in ("done", "failed") else None}

    def delivery_row(i: int) -> dict[str, Any]:
        state = tail_state(i, n_series, delivery_states, "delivered")
        created = at(i, n_series) + timedelta(seconds=12)
        return {"id": i, "dispatch_key": f"k{i}", "destination": "pacs", "rule_name": "forward-all", "series_id": i, "state": state,
                "attempts": 1, "next_attempt_at": created, "created_at": created, "possible_duplicates": 0,
                "finished_at": created + timedelta(seconds=3 + i % 20) if state in ("delivered", "failed") else None}

    _insert(db, Job, (job_row(i) for i in range(1, n_series + 1)))
    deliveries = [delivery_row(i) for i in range(1, n_series + 1)]
    _insert(db, Delivery, deliveries)
    unfinished = {d["id"] for d in deliveries if d["state"] != "delivered"}

    def item_row(i: int) -> dict[str, Any]:
        delivery = min(n_series, 1 + (i - 1) // PER_SERIES)
        sent = delivery not in unfinished or i % 2 == 0
        return {"id": i, "delivery_id": delivery, "sop_instance_uid": f"2.25.3.{i}", "path": f"/spool/{i}.dcm", "instance_version": 1,
                "state": "sent" if sent else "pending", "status": 0 if sent else None,
                "sent_at": at(i, instances) if sent else None, "duration_ms": 2.0 + (i % 300) if sent else None}

    _insert(db, DeliveryItem, (item_row(i) for i in range(1, instances + 1)))


def _insert(db: Database, model: Any, rows: Iterable[dict[str, Any]]) -> None:
    started = time.perf_counter()
    count = 0
    for batch in _batches(rows):
        with db.engine.begin() as conn:
            conn.execute(insert(model), batch)
        count += len(batch)
    print(f"  {model.__tablename__:15} {count:>9,} rows in {time.perf_counter() - started:5.1f} s", flush=True)


def _timed(render: Any, scrapes: int) -> tuple[list[float], str]:
    times, text = [], ""
    for _ in range(scrapes):
        started = time.perf_counter()
        text = render()
        times.append(time.perf_counter() - started)
    return times, text


def _comparable(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples whose meaning did not change (no windowed histograms), by name and labels."""
    windowed = ("_seconds_bucket", "_seconds_sum", "_seconds_count", "dicom_node_series_with_late_instances", "dicom_node_oldest_pending")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not any(w in s.name for w in windowed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--db", type=Path, help="database file; built if it does not exist, reused if it does")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "node.db"
        fresh = not path.exists()
        db = Database(f"sqlite:///{path}")
        if fresh:
            print(f"building {path} with {args.instances:,} instances", flush=True)
            started = time.perf_counter()
            build(db, args.instances)
            print(f"  built in {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1e6:.0f} MB", flush=True)
        with db.session() as session:
            print(f"instances {session.scalar(select(func.count()).select_from(Instance)):,}")
        page = MetricsPage(db)
        first = _timed(lambda: page.render().decode(), 1)[0][0]
        new_times, new_text = _timed(lambda: page.render().decode(), args.scrapes)
        old_times, old_text = _timed(lambda: old_render_metrics(db), args.scrapes)
        db.dispose()
    new, old = statistics.median(new_times), statistics.median(old_times)
    print(f"new (prometheus-client collector): first scrape {first * 1000:8.1f} ms, then median {new * 1000:8.1f} ms, "
          f"best {min(new_times) * 1000:8.1f} ms ({args.scrapes} scrapes)")
    print(f"old (hand-written exposition):     median {old * 1000:8.1f} ms, best {min(old_times) * 1000:8.1f} ms")
    print(f"ratio old/new (median): {old / new:.0f}x")
    a, b = _comparable(new_text), _comparable(old_text)
    differ = {key: (a.get(key), b.get(key)) for key in a.keys() & b.keys() if a[key] != b[key]}
    print(f"values that mean the same: {len(a.keys() & b.keys())} samples compared, " + (f"DIFFER: {differ}" if differ else "all equal"))


# --- the reference: /metrics before prometheus-client (dicom_node/ops/metrics.py at that time), unchanged ---

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


def old_render_metrics(db: Database, rules: Any = None) -> str:
    """The metrics page as it was before prometheus-client (reads every row of the history tables)."""
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


if __name__ == "__main__":
    main()
