"""Hostile rule text through the admin API: a clear answer with the error, never a 500."""
from __future__ import annotations

from tests.web.conftest import WebEnv

DEEP = '[[rule]]\nname = "deep"\n[rule.match]\nModality = "CT"\n[rule.extra]\nx = ' + "{a=" * 5000 + "1" + "}" * 5000 + "\n"
GOOD = '[[rule]]\nname = "ct"\n[rule.match]\nModality = "CT"\n[[rule.actions]]\ntype = "forward"\ndestinations = ["pacs"]\n'


def test_validate_answers_a_deep_text_with_its_error(web_env: WebEnv) -> None:
    client, csrf = web_env.login("ed", "editor")
    response = client.post("/api/rules/_validate", json={"text": DEEP}, headers={"X-CSRF-Token": csrf})
    assert response.status_code in (200, 400), response.text
    body = response.json()
    assert body["valid"] is False
    (error,) = body["errors"]
    assert error["line"] == 6 and "nested deeper than" in error["message"]


def test_saving_or_importing_a_deep_text_is_refused_and_the_rest_imports(web_env: WebEnv) -> None:
    client, csrf = web_env.login("ed", "editor")
    h = {"X-CSRF-Token": csrf}
    saved = client.post("/api/rules", json={"text": DEEP}, headers=h)
    assert saved.status_code == 422 and "nested deeper than" in saved.json()["errors"][0]["message"]
    imported = client.post("/api/rules/_import", json={"files": {"a.toml": GOOD, "b.toml": DEEP}}, headers=h)
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert report["created"] == ["ct"] and any("nested deeper than" in e for e in report["errors"])
