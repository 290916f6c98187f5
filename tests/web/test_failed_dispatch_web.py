"""Failed series and studies on the operations page and the JSON API: shown with their reason, retried or dismissed by an editor."""
from __future__ import annotations

from datetime import datetime

from dicom_node.db import Series, Study
from tests.web.conftest import WebEnv

T0 = datetime(2026, 12, 3, 12, 0, 0)
REASON = "no header of its 1 object(s) can be read, so no rule can be applied (e.g. /spool/x.dcm: InvalidDicomError: <b>)"


def _failed(env: WebEnv) -> None:
    with env.db.write() as s:
        s.add(Study(id=1, study_instance_uid="1.2.99", state="receiving", first_received_at=T0, last_received_at=T0))
        s.add(Study(id=2, study_instance_uid="1.2.98", state="failed", first_received_at=T0, last_received_at=T0,
                    failure_reason="ValueError: a study needs at least one series"))
        s.flush()
        for n in (1, 2):
            s.add(Series(id=n, study_id=1, series_instance_uid=f"1.2.99.{n}", modality="CT", state="failed", instance_count=1,
                         first_received_at=T0, last_received_at=T0, completed_at=T0, failure_reason=REASON))


def _state(env: WebEnv, model: type, row_id: int) -> tuple[str, str | None]:
    with env.db.session() as s:
        row = s.get(model, row_id)
        return row.state, row.failure_reason


def test_operations_page_shows_failed_dispatches_and_an_editor_retries_or_dismisses(web_env: WebEnv) -> None:
    _failed(web_env)
    viewer, _ = web_env.login("vera", "viewer")
    page = viewer.get("/operations").text
    assert "could not be dispatched" in page and "InvalidDicomError: &lt;b&gt;" in page  # the reason, escaped
    assert 'action="/series/1/retry"' not in page  # buttons for editors only
    assert viewer.get("/api/failed-dispatches").json()[0]["reason"] == REASON
    assert viewer.post("/api/series/1/retry").status_code == 403

    client, csrf = web_env.login("ed", "editor")
    page = client.get("/operations").text
    assert 'action="/series/1/retry"' in page and 'action="/series/2/dismiss"' in page and 'action="/studies/2/retry"' in page
    assert client.post("/series/1/retry", data={}, follow_redirects=False).status_code == 403  # no CSRF token
    assert _state(web_env, Series, 1) == ("failed", REASON)
    response = client.post("/series/1/retry", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and _state(web_env, Series, 1) == ("complete", None)
    assert "Series 1 will be dispatched again" in client.get("/operations").text
    assert client.post("/series/2/dismiss", data={"csrf_token": csrf, "note": "known bad"}, follow_redirects=False).status_code == 303
    state, reason = _state(web_env, Series, 2)
    assert state == "dispatched" and reason is not None and reason.startswith("dismissed by ed") and "(known bad)" in reason

    api = {"X-CSRF-Token": csrf}
    assert client.post("/api/series/2/retry", headers=api).json() == {"retried": False}  # not failed any more
    assert client.post("/api/studies/2/dismiss", json={"note": "empty"}, headers=api).json() == {"dismissed": True}
    assert _state(web_env, Study, 2)[0] == "dispatched"
    with web_env.db.write() as s:
        s.get(Study, 2).state = "failed"  # type: ignore[union-attr]
    assert client.post("/api/studies/2/retry", headers=api).json() == {"retried": True}
    assert _state(web_env, Study, 2) == ("receiving", None)
    assert client.get("/api/failed-dispatches").json() == []

    admin, _ = web_env.login("root", "admin")
    entries = [(e["action"], e["target"], e["outcome"]) for e in admin.get("/api/audit").json() if e["action"] in ("retry", "dismiss")]
    assert entries == [("retry", "study 2", "ok"), ("dismiss", "study 2", "ok"), ("retry", "series 2", "failed"),
                       ("dismiss", "series 2", "ok"), ("retry", "series 1", "ok")]
