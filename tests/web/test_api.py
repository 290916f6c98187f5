"""The JSON API: rule CRUD with versions, validation lines, order, dry runs on stored series, import/export, retry."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dicom_node.db import Delivery, DeliveryItem, Instance, Job, Series, Study
from tests.web.conftest import WebEnv

T0 = datetime(2026, 1, 1, 8, 0, 0)


def rule(name: str, modality: str, dest: str = "pacs", extra: str = "") -> str:
    return f'[[rule]]\nname = "{name}"\n{extra}\n[rule.match]\nModality = "{modality}"\n\n[[rule.actions]]\ntype = "forward"\ndestinations = ["{dest}"]\n'


def _store_series(env: WebEnv, tmp_path: Path) -> int:
    """A synthetic CT series on disk with its rows, as the receiver would leave it."""
    from dicom_node.ops.synthetic import chest_ct_series, write_datasets

    paths = write_datasets(chest_ct_series(2, 32), tmp_path / "spool", "CT")
    with env.db.write() as s:
        study = Study(study_instance_uid="1.2.99", state="dispatched", first_received_at=T0, last_received_at=T0, run_count=1)
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_instance_uid="1.2.99.1", modality="CT", state="dispatched", instance_count=2,
                        first_received_at=T0, last_received_at=T0)
        s.add(series)
        s.flush()
        for i, path in enumerate(paths):
            s.add(Instance(series_id=series.id, sop_instance_uid=f"1.2.99.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(path), size=1, received_at=T0))
        return series.id


def test_rule_lifecycle_through_the_api(web_env: WebEnv) -> None:
    client, csrf = web_env.login("ed", "editor")
    h = {"X-CSRF-Token": csrf}
    bad = client.post("/api/rules", json={"text": rule("mr", "MR").replace("Modality", "Modalty")}, headers=h)
    assert bad.status_code == 422
    (error,) = bad.json()["errors"]
    assert error["line"] == 5 and "Modalty" in error["message"]
    check = client.post("/api/rules/_validate", json={"text": rule("mr", "MR", "nowhere")}, headers=h).json()
    assert not check["valid"] and check["errors"][0]["line"] == 9
    for name, modality in (("mr", "MR"), ("ct", "CT"), ("dx", "DX")):
        assert client.post("/api/rules", json={"text": rule(name, modality), "note": "first"}, headers=h).status_code == 201
    assert [r["name"] for r in client.get("/api/rules").json()["rules"]] == ["ct", "dx", "mr"]
    assert client.put("/api/rules/_order", json={"names": ["mr", "dx", "ct"]}, headers=h).json()["changed"] == ["mr", "dx", "ct"]
    assert [(r["name"], r["order"]) for r in client.get("/api/rules").json()["rules"]] == [("mr", 10), ("dx", 20), ("ct", 30)]
    edited = client.put("/api/rules/ct", json={"text": rule("ct", "CT", "archive", "order = 30"), "note": "archive instead"}, headers=h)
    assert edited.status_code == 200 and edited.json()["version"] == 3 and '+destinations = ["archive"]' in edited.json()["diff"]
    assert client.post("/api/rules/dx/enabled", json={"enabled": False}, headers=h).json() == {"name": "dx", "version": 3, "enabled": False}
    versions = client.get("/api/rules/ct/versions").json()
    assert [(v["version"], v["note"]) for v in versions] == [(3, "archive instead"), (2, "order 100 -> 30"), (1, "first")]
    assert client.get("/api/rules/ct").json()["text"].count("archive") == 1
    assert client.delete("/api/rules/mr", headers=h).json()["deleted"] is True
    assert client.get("/api/rules/mr").status_code == 404
    exported = client.get("/api/rules/_export").json()["files"]
    assert sorted(exported) == ["001-dx.toml", "002-ct.toml"]
    schema = client.get("/openapi.json").json()
    assert {"/api/rules", "/api/rules/{name}", "/api/rules/_dry-run", "/api/deliveries/{delivery_id}/retry"} <= set(schema["paths"])
    assert "/login" not in schema["paths"]  # pages are not part of the API
    assert "swagger-ui" in client.get("/docs").text
    imported = client.post("/api/rules/_import", json={"files": {"x.toml": rule("us", "US") + "\n" + rule("ct", "CT")}}, headers=h).json()
    assert imported["created"] == ["us"] and imported["updated"] == ["ct"]


def test_dry_run_on_a_stored_series(web_env: WebEnv, tmp_path: Path) -> None:
    series_id = _store_series(web_env, tmp_path)
    client, csrf = web_env.login("ed", "editor")
    h = {"X-CSRF-Token": csrf}
    client.post("/api/rules", json={"text": rule("all-ct", "CT", extra="stop = true\norder = 1")}, headers=h)
    client.post("/api/rules", json={"text": rule("mr-only", "MR")}, headers=h)
    assert client.get("/api/dry-run-series").json()[0]["id"] == series_id
    in_force = client.post("/api/rules/_dry-run", json={"series_id": series_id}, headers=h).json()
    statuses = {r["rule"]: r["status"] for r in in_force["series"][0]["rules"]}
    assert statuses == {"all-ct": "fired", "mr-only": "stopped"}
    # a draft of mr-only that accepts CT and runs first: it fires, and all-ct still does
    draft = rule("mr-only", "CT", extra="order = 0")
    tried = client.post("/api/rules/_dry-run", json={"series_id": series_id, "text": draft}, headers=h).json()
    rows = tried["series"][0]["rules"]
    assert [(r["rule"], r["status"], r["candidate"]) for r in rows] == [("mr-only", "fired", True), ("all-ct", "fired", False)]
    assert "Modality is 'CT'" in rows[0]["text"]
    assert client.post("/api/rules/_dry-run", json={"series_id": 999}, headers=h).status_code == 404
    # an instance-level draft is judged object by object
    now = client.post("/api/rules/_dry-run", json={"series_id": series_id, "text": rule("ct-now", "CT", extra='level = "instance"')},
                      headers=h).json()
    (row,) = [r for r in now["series"][0]["rules"] if r["rule"] == "ct-now"]
    assert row["status"] == "fired" and row["text"].startswith("instance level, fires for 2 of 2 object(s): rule 'ct-now' fired")
    assert "ct-now" in now["fired"] and row["actions"] == [{"type": "forward", "destinations": ["pacs"]}]
    # the HTML editor does the same from the form, without saving anything
    page = client.post("/rules/mr-only", data={"text": draft, "action": "dry_run", "series_id": str(series_id), "csrf_token": csrf})
    assert page.status_code == 200 and "rule &#39;mr-only&#39; fired" in page.text
    assert client.get("/api/rules/mr-only").json()["version"] == 1


def test_retry_and_echo_are_audited(web_env: WebEnv, tmp_path: Path) -> None:
    series_id = _store_series(web_env, tmp_path)
    with web_env.db.write() as s:
        s.add(Delivery(id=7, dispatch_key="k", destination="pacs", rule_name="r", series_id=series_id, state="failed", attempts=10,
                       next_attempt_at=T0, created_at=T0, finished_at=T0, last_error="association rejected"))
        s.add(Job(id=3, series_id=series_id, rule_name="r", action={"type": "model", "model": "m"}, state="failed", attempts=2,
                  created_at=T0, finished_at=T0, error="weights missing"))
        s.flush()
        s.add(DeliveryItem(delivery_id=7, sop_instance_uid="1.2.99.1.0", path="/x", state="pending"))
    client, csrf = web_env.login("ops", "editor")
    page = client.get("/operations").text
    assert "association rejected" in page and 'action="/deliveries/7/retry"' in page
    assert client.post("/deliveries/7/retry", data={"csrf_token": csrf, "back": "/operations"}, follow_redirects=False).status_code == 303
    with web_env.db.session() as s:
        delivery = s.get(Delivery, 7)
        assert delivery.state == "pending" and delivery.attempts == 0
    assert "weights missing" in page and 'action="/jobs/3/retry"' in page
    assert client.post("/api/jobs/3/retry", headers={"X-CSRF-Token": csrf}).json() == {"queued": 1}
    with web_env.db.session() as s:
        assert s.get(Job, 3).state == "pending"
    echo = client.post("/api/destinations/archive/echo", headers={"X-CSRF-Token": csrf}).json()
    assert echo["ok"] and "writable" in echo["message"]
    admin, _ = web_env.login("root", "admin")
    entries = admin.get("/api/audit").json()
    assert [(e["action"], e["target"]) for e in entries if e["action"] in ("retry", "echo")] == [
        ("echo", "archive"), ("retry", "jobs [3]"), ("retry", "deliveries [7]")]
    csv_text = admin.get("/audit.csv?action=retry").text
    assert csv_text.splitlines()[0] == "id,at,username,action,target,outcome,client,details" and "deliveries [7]" in csv_text
    detail = client.get("/studies/1").text
    assert "1.2.99.1" in detail and "association rejected" in detail


def test_rule_pages_import_export_history(web_env: WebEnv) -> None:
    client, csrf = web_env.login("ed", "editor")
    files = [("files", ("a.toml", rule("ct", "CT") + "\n" + rule("mr", "MR"), "text/plain")),
             ("files", ("b.toml", rule("bad", "CT", "nowhere"), "text/plain"))]
    response = client.post("/rules/_import", data={"csrf_token": csrf}, files=files)
    assert response.status_code == 200 and "2 created" in response.text and "unknown destination" in response.text
    for form, action in (("/rules/mr/move", {"direction": "up"}), ("/rules/ct/disable", {}), ("/rules/mr/delete", {"note": "not needed"})):
        assert client.post(form, data={"csrf_token": csrf, **action}, follow_redirects=False).status_code == 303, (form, action)
    exported = client.get("/rules/_export.toml")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    from routing_rules import parse_rules_text

    parsed = parse_rules_text(exported.text, "export", {"pacs", "archive"})
    assert [(r.name, r.enabled, r.order) for r in parsed.rules] == [("ct", False, 20)] and not parsed.errors
    history = client.get("/rules/mr/history").text
    assert "Version 3 (deleted)" in history and "not needed" in history and "order 100 -&gt; 10" in history
    listing = client.get("/rules").text
    assert 'data-rule="ct"' in listing and 'data-rule="mr"' not in listing
