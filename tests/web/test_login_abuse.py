"""The login form under attack (issue 15, items 8-11), mostly against a real running node over HTTP.

* 60 parallel guesses for one name run at most the limit of password checks,
  and the right password after them opens no session;
* 40 concurrent logins for unknown names do not take the node's memory up by
  64 MiB each (argon2id), and each gets a normal failure or 429;
* a stranger failing for "admin" from one address does not lock the admin out
  from another; guessers spread over many addresses hit a name-wide limit
  that spares the owner's usual address;
* a typed name that a spreadsheet would run as a formula is text in audit.csv.

The node runs argon2id at its real cost (64 MiB, ~0.2 s a check), as in
production; the in-process tests use conftest's cheap hasher.
"""
from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.node.test_postgres import postgres_url  # noqa: F401 - the throwaway-cluster fixture
from tests.peers import NodeProcess, free_port, node_db_rows, wait_port
from tests.web.conftest import PASSWORD, WebEnv

pytestmark = [pytest.mark.peers, pytest.mark.timeout(240)]
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')
WRONG = "wrong user name or password"
LOCKED = "too many failed logins"


@dataclass
class Answer:
    status: int
    text: str
    session: bool


class WebNode:
    """A running node with its admin app on a free port, and logins to it from a chosen source address."""

    def __init__(self, tmp_path: Path, users: dict[str, str]) -> None:
        self.port = free_port()
        self.node = NodeProcess(tmp_path / "node", extra_config=f"[web]\nport = {self.port}\n", quiet_seconds=0.5)
        self.node.write_config()
        for name, role in users.items():
            made = subprocess.run(
                [sys.executable, "-m", "dicom_node.cli.main", "--config", str(self.node.config_path), "admin", "create-user", name,
                 "--role", role, "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                cwd=self.node.workdir,
            )
            assert made.returncode == 0, made.stderr
        self.node.start()
        wait_port(self.port, 60, self.node.proc)

    def prepared_login(self, name: str, password: str, source: str = "127.0.0.1") -> Callable[[], Answer]:
        """Fetch the login form now (cookie and form token); the returned call posts it."""
        import httpx

        client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120,
                              transport=httpx.HTTPTransport(local_address=source))
        token = _LOGIN_CSRF.search(client.get("/login").text).group(1)  # type: ignore[union-attr]

        def post() -> Answer:
            try:
                response = client.post("/login", data={"username": name, "password": password, "login_csrf": token})
                return Answer(response.status_code, response.text, "dn_session" in response.cookies)
            finally:
                client.close()

        return post

    def login(self, name: str, password: str, source: str = "127.0.0.1") -> Answer:
        return self.prepared_login(name, password, source)()

    def burst(self, posts: list[Callable[[], Answer]]) -> list[Answer]:
        """All posts at once: each thread waits at a barrier with its form already fetched."""
        barrier = threading.Barrier(len(posts))

        def go(post: Callable[[], Answer]) -> Answer:
            barrier.wait(60)
            return post()

        with ThreadPoolExecutor(len(posts)) as pool:
            return list(pool.map(go, posts))

    def audit(self, where: str) -> list[tuple]:
        return node_db_rows(self.node, f"SELECT outcome, client, details FROM audit_log WHERE action = 'login' AND {where}")

    def peak_rss_kib(self) -> int:
        """VmHWM of the node's main process (where the admin app runs): the most memory it ever held."""
        assert self.node.proc is not None
        status = Path(f"/proc/{self.node.proc.pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]

    def stop(self) -> None:
        self.node.stop()


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    node = WebNode(tmp_path_factory.mktemp("login"), {"racer": "viewer", "admin": "admin"})
    yield node
    node.stop()


def test_parallel_guesses_run_at_most_the_limit_of_password_checks(web_node: WebNode) -> None:
    from dicom_node.defaults import LOGIN_FAILURES_PER_ADDRESS

    answers = web_node.burst([web_node.prepared_login("racer", f"guess-{i:03d}") for i in range(60)])
    assert all(a.status in (401, 429) and not a.session for a in answers), {a.status for a in answers}
    checked = web_node.audit("username = 'racer' AND outcome = 'failed'")
    assert len(checked) <= LOGIN_FAILURES_PER_ADDRESS, f"{len(checked)} password checks ran for 60 parallel guesses"
    assert sum(WRONG in a.text for a in answers) <= LOGIN_FAILURES_PER_ADDRESS
    right = web_node.login("racer", PASSWORD)
    assert not right.session and LOCKED in right.text


def test_a_stranger_cannot_lock_the_admin_out(web_node: WebNode) -> None:
    stranger = [web_node.login("admin", f"guess-{i:03d}", source="127.0.0.2") for i in range(15)]
    assert all(a.status == 401 and not a.session for a in stranger)
    assert LOCKED in stranger[-1].text
    assert not web_node.login("admin", PASSWORD, source="127.0.0.2").session  # locked for the address that failed
    owner = web_node.login("admin", PASSWORD)
    assert owner.session and owner.status == 303


def test_concurrent_unknown_logins_do_not_take_64_mib_each(tmp_path: Path) -> None:
    node = WebNode(tmp_path, {})
    try:
        assert WRONG in node.login("nobody-warmup", "guess-guess").text  # argon2 and the dummy hash are loaded
        before = node.peak_rss_kib()
        answers = node.burst([node.prepared_login(f"nobody-{i:02d}", "guess-guess") for i in range(40)])
        grown_mib = (node.peak_rss_kib() - before) / 1024
    finally:
        node.stop()
    # each answer is a normal failure, or 429 for those that found the check queue full
    assert all((a.status == 401 and WRONG in a.text) or a.status == 429 for a in answers), {a.status for a in answers}
    assert any(a.status == 401 for a in answers)
    assert grown_mib < 300, f"the node's peak memory grew by {grown_mib:.0f} MiB for 40 concurrent logins"


def test_name_wide_limit_spares_the_owners_usual_address(web_env: WebEnv) -> None:
    from dicom_node.web import auth

    web_env.user("owner", "admin")
    assert isinstance(auth.login(web_env.db, "owner", PASSWORD, hours=1, client="10.1.0.1"), tuple)
    for i in range(auth.NAME_LOCKOUT_FAILURES):  # a guesser spread over many addresses, a few guesses each
        assert auth.login(web_env.db, "owner", "guess-guess", hours=1, client=f"10.2.{i // 5}.{i % 5}") == "wrong user name or password"
    assert auth.login(web_env.db, "owner", PASSWORD, hours=1, client="10.3.0.1") == auth.LOCKED_MESSAGE  # a new address
    assert isinstance(auth.login(web_env.db, "owner", PASSWORD, hours=1, client="10.1.0.1"), tuple)  # the usual one


@pytest.mark.postgres
def test_concurrent_guesses_on_two_connections_to_postgresql(postgres_url: str) -> None:  # noqa: F811
    """Two Database objects stand for two node processes sharing one PostgreSQL database."""
    from dicom_node.db import Database
    from dicom_node.web import auth

    first, second = Database(postgres_url), Database(postgres_url, migrate=False)
    try:
        auth.create_user(first, "pgracer", PASSWORD, "viewer", created_by="test")
        wide = auth.PasswordGate(40, 40)
        barrier = threading.Barrier(40)

        def guess(i: int) -> object:
            barrier.wait(60)
            return auth.login(first if i % 2 else second, "pgracer", f"guess-{i:03d}", hours=1, client="10.0.0.9", gate=wide)

        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(guess, range(40)))
        from sqlalchemy import func, select

        from dicom_node.db.admin_models import AuditEntry

        with first.session() as session:
            failed = session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.username == "pgracer", AuditEntry.outcome == "failed"))
        assert failed == auth.LOCKOUT_FAILURES, answers
    finally:
        first.dispose()
        second.dispose()


def test_audit_csv_cells_are_not_formulas(web_env: WebEnv) -> None:
    names = ['=HYPERLINK("http://evil.example/","click")', "+1+2", "-2+3", "@SUM(A1)"]
    anonymous = web_env.client()
    for name in names:
        token = _LOGIN_CSRF.search(anonymous.get("/login").text).group(1)  # type: ignore[union-attr]
        assert anonymous.post("/login", data={"username": name, "password": "guess-guess", "login_csrf": token}).status_code == 401
    admin, _csrf = web_env.login("root", "admin")
    rows = list(csv.DictReader(io.StringIO(admin.get("/audit.csv?action=login").text)))
    typed = {row["username"] for row in rows if row["outcome"] == "failed"}
    assert typed == {"'" + name for name in names}
    assert {row["username"] for row in admin.get("/audit.json?action=login").json() if row["outcome"] == "failed"} == set(names)
