"""Who may do what: anonymous requests get nothing, viewers cannot change, forged forms are refused."""
from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.admin_models import AuditEntry, RuleVersion
from tests.web.conftest import PASSWORD, WebEnv, make_config

RULE = """[[rule]]
name = "ct-to-pacs"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]
"""


def _versions(env: WebEnv) -> int:
    with env.db.session() as session:
        return session.scalar(select(func.count(RuleVersion.id))) or 0


def test_anonymous_requests_get_no_data(web_env: WebEnv) -> None:
    from dicom_node.routing.rule_editing import save_rule

    save_rule(web_env.db, RULE, author="seed", destinations={"pacs", "archive"})
    client = web_env.client()
    for path in ("/operations", "/rules", "/rules/ct-to-pacs", "/audit", "/users", "/docs", "/destinations", "/selftest"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
        assert "ct-to-pacs" not in response.text
    for path in ("/api/status", "/api/rules", "/api/rules/ct-to-pacs", "/api/deliveries", "/api/audit", "/metrics", "/openapi.json", "/audit.csv"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code in (401, 303), path
        assert "ct-to-pacs" not in response.text and "dicom_node_" not in response.text
    assert client.get("/api/rules").status_code == 401
    response = client.post("/api/rules", json={"text": RULE.replace("ct-to-pacs", "sneaky")})
    assert response.status_code == 401
    response = client.post("/rules/_new", data={"text": RULE.replace("ct-to-pacs", "sneaky"), "action": "save"}, follow_redirects=False)
    assert response.status_code == 401
    assert _versions(web_env) == 1
    # a made-up session cookie or API token is no better than none
    client.cookies.set("dn_session", "forged")
    assert client.get("/api/rules").status_code == 401
    assert web_env.client().get("/api/rules", headers={"Authorization": "Bearer dn_forged"}).status_code == 401


def test_viewer_reads_but_cannot_change(web_env: WebEnv) -> None:
    from dicom_node.routing.rule_editing import save_rule

    save_rule(web_env.db, RULE, author="seed", destinations={"pacs", "archive"})
    client, csrf = web_env.login("vera", "viewer")
    assert client.get("/rules").status_code == 200
    assert "ct-to-pacs" in client.get("/api/rules").text
    edited = RULE.replace('"CT"', '"MR"')
    refused = [
        client.post("/rules/ct-to-pacs", data={"text": edited, "action": "save", "csrf_token": csrf}, follow_redirects=False),
        client.post("/rules/ct-to-pacs/disable", data={"csrf_token": csrf}, follow_redirects=False),
        client.post("/rules/ct-to-pacs/delete", data={"csrf_token": csrf}, follow_redirects=False),
        client.post("/rules/_new", data={"text": RULE.replace("ct-to-pacs", "other"), "action": "save", "csrf_token": csrf}, follow_redirects=False),
        client.put("/api/rules/ct-to-pacs", json={"text": edited}, headers={"X-CSRF-Token": csrf}),
        client.delete("/api/rules/ct-to-pacs", headers={"X-CSRF-Token": csrf}),
        client.post("/api/deliveries/_retry-failed", headers={"X-CSRF-Token": csrf}),
        client.post("/api/destinations/archive/echo", headers={"X-CSRF-Token": csrf}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert _versions(web_env) == 1
    # users and the audit log are for admins
    assert client.get("/users").status_code == 403
    assert client.get("/api/audit").status_code == 403
    assert client.get("/audit.csv").status_code == 403
    # the editor page is read-only for a viewer: no save button, a readonly text
    page = client.get("/rules/ct-to-pacs").text
    assert 'id="save"' not in page and "readonly" in page


def test_forged_form_without_csrf_token_is_refused(web_env: WebEnv) -> None:
    client, csrf = web_env.login("eddie", "editor")
    form = {"text": RULE, "action": "save", "note": "first"}
    assert client.post("/rules/_new", data=form, follow_redirects=False).status_code == 403
    forged = ("y" if csrf[0] == "x" else "x") + csrf[1:]  # one character off (a token may itself start with "x")
    assert client.post("/rules/_new", data={**form, "csrf_token": forged}, follow_redirects=False).status_code == 403
    assert client.post("/api/rules", json={"text": RULE}).status_code == 403  # session cookie but no X-CSRF-Token
    assert _versions(web_env) == 0
    # the same form with the session's token goes through: the refusal was about the token
    response = client.post("/rules/_new", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/rules/ct-to-pacs"
    assert _versions(web_env) == 1
    # another user's token does not work for this session either
    _other, other_csrf = web_env.login("olga", "editor")
    assert client.post("/rules/ct-to-pacs/disable", data={"csrf_token": other_csrf}, follow_redirects=False).status_code == 403


def test_api_token_needs_no_csrf_and_keeps_the_role(web_env: WebEnv) -> None:
    client, csrf = web_env.login("erin", "editor")
    page = client.post("/account/token", data={"csrf_token": csrf}).text
    token = re.search(r'id="api-token">([^<]+)<', page).group(1)  # type: ignore[union-attr]
    from fastapi.testclient import TestClient

    script = TestClient(web_env.app)
    headers = {"Authorization": f"Bearer {token}"}
    created = script.post("/api/rules", json={"text": RULE, "note": "from a script"}, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert script.get("/metrics", headers=headers).status_code == 200
    assert script.get("/api/audit", headers=headers).status_code == 403  # an editor's token is an editor's


def test_login_cookie_flags_wrong_password_and_logout(web_env: WebEnv) -> None:
    web_env.user("ada", "admin")
    client = web_env.client()
    login_page = client.get("/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', login_page.text).group(1)  # type: ignore[union-attr]
    wrong = client.post("/login", data={"username": "ada", "password": "not it at all", "login_csrf": token}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text
    missing = client.post("/login", data={"username": "ada", "password": PASSWORD}, follow_redirects=False)
    assert missing.status_code == 403  # no login-form token: refused before the password is looked at
    token = re.search(r'name="login_csrf" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
    ok = client.post("/login", data={"username": "ada", "password": PASSWORD, "login_csrf": token, "next": "https://evil.example/"},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # no redirect to another site
    cookie = next(v for k, v in ok.headers.multi_items() if k == "set-cookie" and v.startswith("dn_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    session_value = client.cookies.get("dn_session")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]*)">', client.get("/operations").text).group(1)  # type: ignore[union-attr]
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    replay = web_env.client()
    replay.cookies.set("dn_session", session_value)
    assert replay.get("/api/status").status_code == 401  # the session row is gone
    with web_env.db.session() as session:
        actions = [(e.action, e.outcome) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert ("login", "failed") in actions and ("login", "ok") in actions and ("logout", "ok") in actions


def test_repeated_failures_lock_the_name(web_env: WebEnv) -> None:
    from dicom_node.web import auth

    web_env.user("bob", "viewer")
    for _ in range(auth.LOCKOUT_FAILURES):
        assert isinstance(auth.login(web_env.db, "bob", "guess-guess", hours=1, client="t"), str)
    locked = auth.login(web_env.db, "bob", PASSWORD, hours=1, client="t")
    assert isinstance(locked, str) and "too many" in locked
    assert not isinstance(auth.login(web_env.db, "other", "whatever-1", hours=1, client="t"), tuple)


def test_folder_source_shows_rules_but_refuses_edits(tmp_path: Path) -> None:
    from dicom_node.web.app import create_app

    config = make_config(tmp_path, rules={"source": "folder"})
    (tmp_path / "rules" / "10-ct.toml").write_text(RULE)
    db = Database(config.database_url)
    env = WebEnv(config, db, create_app(config, db))
    client, csrf = env.login("ed", "editor")
    listing = client.get("/rules").text
    assert "ct-to-pacs" in listing and "10-ct.toml" in listing and 'id="new-rule"' not in listing
    page = client.post("/rules/ct-to-pacs", data={"text": RULE.replace('"CT"', '"MR"'), "action": "save", "csrf_token": csrf})
    assert "edit the files there" in page.text
    assert client.post("/rules/ct-to-pacs/disable", data={"csrf_token": csrf}).status_code == 409
    assert client.put("/api/rules/ct-to-pacs", json={"text": RULE}, headers={"X-CSRF-Token": csrf}).status_code == 409
    assert _versions(env) == 0
    assert (tmp_path / "rules" / "10-ct.toml").read_text() == RULE
    db.dispose()
