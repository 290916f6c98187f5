"""/metrics: Prometheus text computed from the rows the router writes."""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

from dicom_node.db import Association, Database, Delivery, DeliveryItem, Instance, Job, Series, Study
from dicom_node.ops.metrics import ITEM_BUCKETS, render_metrics
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
