"""The admin app in headless Chromium against a real node: login, rule editing, dry run, routing, self test.

Debian's /usr/bin/chromium is driven by Playwright (no browser download);
every request that is not to 127.0.0.1 is aborted.  Screenshots of the main
pages go to artifacts/web/ (git-ignored) for people to look at.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import REPO, NodeProcess, free_port, node_db_rows, storescu, wait_for, wait_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ARTIFACTS = REPO / "artifacts" / "web"
PASSWORD = "browser-test-password"

BAD_RULE = """[[rule]]
name = "web-ct"
description = "CT from the browser test"

[rule.match]
Modality = "CT"

[[rule.actions]]
type = "forward"
destinations = ["archiv"]
"""
GOOD_RULE = BAD_RULE.replace('["archiv"]', '["archive"]')

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]


def _requirements() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if shutil.which("storescu") is None:
        return "storescu (dcmtk) is missing"
    return None


def _node(tmp_path: Path, web_port: int) -> NodeProcess:
    archive = tmp_path / "archive"
    node = NodeProcess(tmp_path / "node", destinations={"archive": {"type": "folder", "path": str(archive)}},
                       extra_config=f"[web]\nport = {web_port}\n", quiet_seconds=0.5)
    node.write_config()
    text = node.config_path.read_text()
    node.config_path.write_text(text.replace('[rules]\nfolder = "rules"\n', '[rules]\nfolder = "rules"\nsource = "database"\n'))
    created = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli.main", "--config", str(node.config_path), "admin", "create-user", "admin1", "--role", "admin",
         "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, cwd=node.workdir,
    )
    assert created.returncode == 0, created.stderr
    return node


def _ct_files(folder: Path, count: int = 3) -> list[Path]:
    from dicom_node.ops.synthetic import chest_ct_series, write_datasets

    return write_datasets(chest_ct_series(count, 64), folder, "CT")


def test_admin_in_a_browser(tmp_path: Path) -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    web_port = free_port()
    node = _node(tmp_path, web_port).start()
    base = f"http://127.0.0.1:{web_port}"
    upload = _ct_files(tmp_path / "upload", 1)[0]
    study = _ct_files(tmp_path / "study")
    blocked: list[str] = []
    try:
        wait_port(web_port, 60, node.proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            context = browser.new_context(viewport={"width": 1360, "height": 900})

            def guard(route) -> None:  # type: ignore[no-untyped-def]
                if route.request.url.startswith("http://127.0.0.1:"):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            page = context.new_page()
            expect.set_options(timeout=15_000)

            # a wrong password is refused, the right one lets in
            page.goto(f"{base}/rules")
            expect(page).to_have_url(f"{base}/login?next=%2Frules")
            page.fill("#username", "admin1")
            page.fill("#password", "not-the-password")
            page.click("#login")
            expect(page.locator("#login-error")).to_contain_text("wrong user name or password")
            page.screenshot(path=str(ARTIFACTS / "login-failed.png"))
            page.fill("#username", "admin1")
            page.fill("#password", PASSWORD)
            page.click("#login")
            expect(page).to_have_url(f"{base}/rules")

            # a rule with a mistake: the message sits at the line at fault, nothing is saved
            page.click("#new-rule")
            page.fill("#rule-text", BAD_RULE)
            page.click("#save")
            bad_line = next(i for i, line in enumerate(BAD_RULE.split("\n"), start=1) if line.startswith("destinations"))
            marked = page.locator(f"#listing li.bad[data-line='{bad_line}'] .line-error")
            expect(marked).to_contain_text("unknown destination 'archiv'")
            expect(page.locator("#editor-errors")).to_contain_text("Nothing was saved")
            page.screenshot(path=str(ARTIFACTS / "rule-error.png"), full_page=True)

            # fixed, then a dry run against an uploaded file shows the rule firing and why
            page.fill("#rule-text", GOOD_RULE)
            page.set_input_files("#dry-files", str(upload))
            page.click("#dry-run")
            result = page.locator("#dry-run-result")
            expect(result).to_contain_text("rule 'web-ct' fired")
            expect(result).to_contain_text("Modality is 'CT'")
            page.screenshot(path=str(ARTIFACTS / "dry-run.png"), full_page=True)

            page.fill("#rule-note", "route CT to the archive")
            page.click("#save")
            expect(page).to_have_url(f"{base}/rules/web-ct")
            expect(page.locator(".flash")).to_contain_text("saved as version 1")

            # the running node picks the new version up without a restart
            wait_for(lambda: page.request.get(f"{base}/api/status").json()["rules"]["in_force"].get("web-ct") == 1,
                     timeout=15, interval=0.3, what="the node loading the saved rule")
            page.goto(f"{base}/rules")
            expect(page.locator("tr[data-rule='web-ct']")).to_contain_text("v1 (v1)")
            page.screenshot(path=str(ARTIFACTS / "rules.png"), full_page=True)

            # a study sent afterwards is routed by the new rule
            sent = storescu(node.port, study)
            assert sent.returncode == 0, sent.stderr
            archive = tmp_path / "archive"
            # the page below shows the delivery's state, recorded just after the files were written
            wait_for(lambda: node_db_rows(node, "select state from deliveries") == [("delivered",)], timeout=30,
                     what="the study delivered to the archive")
            assert len(list(archive.rglob("*.dcm"))) == len(study), node.log_text()[-3000:]
            page.goto(f"{base}/operations")
            expect(page.locator("#studies")).to_contain_text("web-ct")
            expect(page.locator("[data-key='instances']")).to_have_text("3")
            page.screenshot(path=str(ARTIFACTS / "operations.png"), full_page=True)
            page.locator("#studies a.uid").first.click()
            expect(page.locator("section.series")).to_contain_text("delivered")
            page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

            page.goto(f"{base}/destinations")
            page.click("#destinations button")
            expect(page.locator(".flash")).to_contain_text("archive: OK")
            page.screenshot(path=str(ARTIFACTS / "destinations.png"), full_page=True)

            # the self test: synthetic series -> receiver -> temporary copy of the rule -> destination
            page.goto(f"{base}/selftest")
            page.select_option("#selftest-rule", "web-ct")
            page.select_option("#selftest-destination", "archive")
            page.click("#selftest-start")
            expect(page.locator("#selftest-state")).to_have_text("passed", timeout=60_000)
            expect(page.locator("#selftest-steps")).to_contain_text("delivered to archive")
            page.screenshot(path=str(ARTIFACTS / "selftest.png"), full_page=True)

            page.goto(f"{base}/audit")
            audit = page.locator("#audit")
            for action in ("rule.create", "login", "echo", "selftest"):
                expect(audit).to_contain_text(action)
            expect(audit).to_contain_text("failed")
            page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)

            page.goto(f"{base}/models")
            expect(page.locator("#models")).to_contain_text("no weights")  # this node has no weight files
            page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)

            page.goto(f"{base}/rules/web-ct/history")
            expect(page.locator("section.version")).to_contain_text("route CT to the archive")
            browser.close()
    finally:
        node.stop()
    assert blocked == [], f"pages tried to reach other hosts: {blocked}"
