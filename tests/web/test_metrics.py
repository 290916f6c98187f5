"""/metrics: Prometheus text computed from the rows the router writes, by queries that read no whole table."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, select, update

from dicom_node.clock import utcnow
from dicom_node.config import load_config
from dicom_node.db import Association, Database, Delivery, DeliveryItem, Instance, Job, Series, Study
from dicom_node.db.states import DeliveryItemState, DeliveryState, JobState, SeriesState
from dicom_node.ops import queries
from dicom_node.ops.metrics import ITEM_BUCKETS, MetricsPage, render_metrics
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.node.conftest import forward_rule, make_node  # noqa: F401 - the real-node fixture
from tests.peers import wait_for
from tests.web.conftest import WebEnv

SAMPLE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{([a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*)?\})? (-?[0-9.e+]+|\+Inf)$')
T0 = datetime(2026, 1, 1, 12, 0, 0)


def _populate(db: Database) -> None:
    with db.write() as s:
        s.add(Association(id=1, calling_ae="STORESCU", called_ae="DICOM_NODE", peer_host="127.0.0.1", peer_port=1, started_at=T0,
                          ended_at=T0, receiver_pid=1, instances_received=7, failures=2))
        s.add(Association(id=2, calling_ae="STORESCU", called_ae="DICOM_NODE", peer_host="127.0.0.1", peer_port=2, started_at=T0,
                          ended_at=None, receiver_pid=1, instances_received=1, failures=0))
        s.add(Study(id=1, study_instance_uid="1.2.3", state="dispatched", first_received_at=T0, last_received_at=T0, run_count=1))
        s.add(Series(id=1, study_id=1, series_instance_uid="1.2.3.1", state="dispatched", instance_count=3, first_received_at=T0,
                     last_received_at=T0, completed_at=T0 + timedelta(seconds=5), dispatched_at=T0 + timedelta(seconds=6)))
        s.add(Series(id=2, study_id=1, series_instance_uid="1.2.3.2", state="receiving", instance_count=1, first_received_at=T0,
                     last_received_at=T0))
        s.flush()  # parents first: the foreign keys are checked on insert
        for i in range(3):
            s.add(Instance(series_id=1, sop_instance_uid=f"1.2.3.1.{i}", sop_class_uid="1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                           path=f"/x/{i}", size=10, received_at=T0, association_id=1))
        s.add(Job(id=1, series_id=1, study_id=1, rule_name="r", action={"model": "m"}, state="failed", created_at=T0,
                  started_at=T0, finished_at=T0 + timedelta(seconds=40), error="boom"))
        s.add(Job(id=2, series_id=1, study_id=1, rule_name="r", action={"model": "m"}, state="pending", created_at=T0))
        s.add(Delivery(id=1, dispatch_key="a", destination="pacs", rule_name="r", series_id=1, state="delivered", next_attempt_at=T0,
                       created_at=T0, finished_at=T0 + timedelta(seconds=2)))
        s.add(Delivery(id=2, dispatch_key="b", destination="pacs", rule_name="r", series_id=1, state="failed", next_attempt_at=T0,
                       created_at=T0, finished_at=T0 + timedelta(seconds=90), last_error="refused"))
        s.add(Delivery(id=3, dispatch_key="c", destination="archive", rule_name="r", series_id=1, state="pending", next_attempt_at=T0,
                       created_at=T0))
        s.flush()
        for i, ms in enumerate((3.0, 40.0, 700.0)):
            s.add(DeliveryItem(delivery_id=1, sop_instance_uid=f"1.2.3.1.{i}", path=f"/x/{i}", state="sent", duration_ms=ms))
        s.add(DeliveryItem(delivery_id=2, sop_instance_uid="1.2.3.1.0", path="/x/0", state="pending", error="0xA700"))


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not exposition format: {line!r}"
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def test_metrics_from_rows(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    _populate(db)
    text = render_metrics(db)
    db.dispose()
    m = _samples(text)
    assert m["dicom_node_instances_received_total"] == 8
    assert m["dicom_node_store_failures_total"] == 2
    assert m["dicom_node_instances_stored"] == 3
    assert m["dicom_node_associations_open"] == 1
    assert m['dicom_node_series{state="receiving"}'] == 1 and m['dicom_node_series{state="complete"}'] == 0
    assert m["dicom_node_series_completed_total"] == 1
    assert m['dicom_node_jobs{state="failed"}'] == 1 and m['dicom_node_jobs{state="running"}'] == 0
    assert m['dicom_node_deliveries{state="delivered"}'] == 1 and m['dicom_node_deliveries{state="failed"}'] == 1
    assert m['dicom_node_failures{kind="delivery"}'] == 1 and m['dicom_node_failures{kind="job"}'] == 1
    assert m['dicom_node_queue_depth{queue="deliveries"}'] == 1
    assert m['dicom_node_queue_depth{queue="jobs"}'] == 1
    assert m['dicom_node_queue_depth{queue="series_waiting"}'] == 1
    assert m["dicom_node_oldest_pending_delivery_age_seconds"] > 0
    # item durations 3 ms, 40 ms, 700 ms: cumulative buckets
    buckets = {float(k.split('le="')[1].rstrip('"}')): v for k, v in m.items()
               if k.startswith("dicom_node_delivery_item_duration_seconds_bucket") and "+Inf" not in k}
    assert sorted(buckets) == list(ITEM_BUCKETS)
    assert buckets[0.005] == 1 and buckets[0.025] == 1 and buckets[0.05] == 2 and buckets[0.5] == 2 and buckets[1.0] == 3
    assert m['dicom_node_delivery_item_duration_seconds_bucket{le="+Inf"}'] == 3
    assert m["dicom_node_delivery_item_duration_seconds_count"] == 3
    assert abs(m["dicom_node_delivery_item_duration_seconds_sum"] - 0.743) < 1e-9
    # only delivered deliveries count for latency: one of 2 s
    assert m["dicom_node_delivery_latency_seconds_count"] == 1 and m["dicom_node_delivery_latency_seconds_sum"] == 2
    assert m["dicom_node_series_routing_latency_seconds_sum"] == 6
    assert m["dicom_node_job_duration_seconds_count"] == 1 and m['dicom_node_job_duration_seconds_bucket{le="30"}'] == 0
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len({name for name, _ in families}) == len(families)  # each family declared once


def test_metrics_endpoint_needs_login_and_serves_text(web_env: WebEnv) -> None:
    _populate(web_env.db)
    assert web_env.client().get("/metrics").status_code == 401
    client, _csrf = web_env.login("prom", "viewer")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert _samples(response.text)["dicom_node_instances_received_total"] == 8


ROUTER_TABLES = ("instances", "series", "studies", "associations", "deliveries", "delivery_items", "jobs")


def _families(exposition: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(exposition)}


def _value(families: dict, name: str, sample: str | None = None, **labels: str) -> float:
    family = families[name]
    wanted = sample or name
    return next(s.value for s in family.samples if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items()))


def _more_rows(db: Database) -> None:
    """Rows in every state, with gaps in which states the newest ids hold."""
    with db.write() as s:
        for i in range(3, 9):
            state = (SeriesState.RECEIVING, SeriesState.COMPLETE, SeriesState.DISPATCHED)[i % 3]
            s.add(Series(id=i, study_id=1, series_instance_uid=f"1.2.3.{i}", state=state, instance_count=0, first_received_at=T0,
                         last_received_at=T0, completed_at=None if state == SeriesState.RECEIVING else T0, late_count=i % 2))
        s.add(Job(id=3, series_id=1, study_id=1, rule_name="r", action={"model": "m"}, state=JobState.RUNNING, created_at=T0))
        s.add(Job(id=4, series_id=1, study_id=1, rule_name="r", action={"model": "m"}, state=JobState.DONE, created_at=T0,
                  started_at=T0, finished_at=T0 + timedelta(seconds=3)))
        s.add(Delivery(id=4, dispatch_key="d", destination="pacs", rule_name="r", series_id=1, state=DeliveryState.SENDING,
                       next_attempt_at=T0, created_at=T0))
        s.flush()
        s.add(DeliveryItem(delivery_id=4, sop_instance_uid="1.2.3.1.1", path="/x/1", state=DeliveryItemState.SENT, duration_ms=5.0))
        s.add(DeliveryItem(delivery_id=4, sop_instance_uid="1.2.3.1.2", path="/x/2", state=DeliveryItemState.PENDING))


def test_counts_agree_with_a_full_group_by(tmp_path: Path) -> None:
    """The bounded counts (state index + MAX(id)) give what counting every row gives."""
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    _populate(db)
    _more_rows(db)
    with db.session() as s:
        def full(model) -> dict[str, int]:
            return dict(sorted(s.execute(select(model.state, func.count()).group_by(model.state)).all()))

        assert queries.series_counts(s) == full(Series)
        assert queries.study_counts(s) == full(Study)
        assert queries.job_counts(s) == full(Job)
        assert queries.delivery_counts(s) == full(Delivery) == {"delivered": 1, "failed": 1, "pending": 1, "sending": 1}
        assert queries.delivery_item_counts(s) == full(DeliveryItem) == {"pending": 2, "sent": 4}
        assert queries.total_rows(s, Instance) == s.scalar(select(func.count()).select_from(Instance)) == 3
    m = _samples(render_metrics(db))
    db.dispose()
    assert m["dicom_node_series_completed_total"] == 5  # series 1 and the four of 3..8 not receiving
    assert m['dicom_node_delivery_items{state="sent"}'] == 4 and m['dicom_node_delivery_items{state="pending"}'] == 2
    assert m["dicom_node_series_with_late_instances"] == 3  # series 3, 5, 7


def test_a_scrape_reads_no_whole_table(tmp_path: Path) -> None:
    """Every statement of a scrape finds its rows by index or primary key: SQLite's plan has no SCAN of a router table."""
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    _populate(db)
    _more_rows(db)
    page = MetricsPage(db)
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not statement.startswith("EXPLAIN"):
            statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    page.render()
    page.render()  # the second scrape reads associations from where the first stopped
    event.remove(db.engine, "before_cursor_execute", capture)
    scans = []
    with db.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()]
            scans += [(line, statement) for line in plan if re.match(rf"SCAN ({'|'.join(ROUTER_TABLES)})\b", line)]
    db.dispose()
    assert len(statements) >= 15
    assert scans == []


def test_association_totals_count_each_association_once(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    _populate(db)  # association 1 ended (7 received, 2 failed), 2 open
    page = MetricsPage(db)

    def totals() -> tuple[float, float]:
        m = _samples(page.render().decode())
        return m["dicom_node_instances_received_total"], m["dicom_node_store_failures_total"]

    assert totals() == (8, 2)
    with db.write() as s:  # association 2 ends: the receiver writes its counts then
        s.execute(update(Association).where(Association.id == 2).values(ended_at=T0, instances_received=5, failures=1))
    assert totals() == (12, 3)
    with db.write() as s:  # a young association: counted at once, folded in only once it has settled
        s.add(Association(id=3, calling_ae="STORESCU", called_ae="DICOM_NODE", peer_host="127.0.0.1", peer_port=3, started_at=utcnow(),
                          ended_at=utcnow(), receiver_pid=1, instances_received=4, failures=0))
    assert totals() == (16, 3)
    assert totals() == (16, 3)
    with db.write() as s:
        s.execute(update(Association).where(Association.id == 3).values(started_at=T0))
    assert totals() == (16, 3)
    assert totals() == (16, 3)
    fresh = _samples(render_metrics(db))
    db.dispose()
    assert fresh["dicom_node_instances_received_total"] == 16


@pytest.mark.peers
def test_exposition_parses_and_agrees_with_status_after_a_real_forward(make_node, tmp_path: Path) -> None:  # noqa: F811
    node = make_node(destinations={"archive": {"type": "folder", "path": "archive"}}, rules={"a.toml": forward_rule("archive")})
    write_datasets(chest_ct_series(5, 32), tmp_path / "ct")
    assert node.cli("send", str(tmp_path / "ct")).returncode == 0

    def delivered() -> dict | None:
        report = json.loads(node.cli("status", "--json").stdout)
        return report if report["counts"]["deliveries"].get("delivered") else None

    report = wait_for(delivered, timeout=60, what="the series delivered")
    db = Database(load_config(node.config_path).database_url)
    try:
        families = _families(render_metrics(db))
        with db.session() as s:
            web = queries.counts(s)
    finally:
        db.dispose()
    assert {"dicom_node_info", "dicom_node_instances_received", "dicom_node_series", "dicom_node_deliveries", "dicom_node_delivery_items",
            "dicom_node_queue_depth", "dicom_node_delivery_item_duration_seconds", "dicom_node_delivery_latency_seconds",
            "dicom_node_series_routing_latency_seconds", "dicom_node_job_duration_seconds"} <= set(families)
    assert families["dicom_node_instances_received"].type == "counter"
    assert families["dicom_node_delivery_latency_seconds"].type == "histogram"
    assert {s.labels["state"] for s in families["dicom_node_deliveries"].samples} == {str(state) for state in DeliveryState}
    assert {s.labels["queue"] for s in families["dicom_node_queue_depth"].samples} == {"series_waiting", "series_to_dispatch", "jobs", "deliveries"}
    # the CLI, the web and the metrics count alike
    assert web["deliveries"] == report["counts"]["deliveries"] == {"delivered": 1}
    assert web["instances"] == report["counts"]["instances"] == _value(families, "dicom_node_instances_stored") == 5
    assert _value(families, "dicom_node_deliveries", state="delivered") == 1
    assert _value(families, "dicom_node_series", state="dispatched") == report["counts"]["series"]["dispatched"] == 1
    assert _value(families, "dicom_node_instances_received", "dicom_node_instances_received_total") == 5
    assert _value(families, "dicom_node_delivery_items", state="sent") == 5
    assert _value(families, "dicom_node_delivery_item_duration_seconds", "dicom_node_delivery_item_duration_seconds_count") == 5
    assert _value(families, "dicom_node_delivery_latency_seconds", "dicom_node_delivery_latency_seconds_bucket", le="+Inf") == 1
    assert _value(families, "dicom_node_series_routing_latency_seconds", "dicom_node_series_routing_latency_seconds_count") == 1
