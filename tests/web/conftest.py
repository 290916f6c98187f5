"""Fixtures for the admin app: a config and database in tmp_path, the app under TestClient, logins."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("argon2")

from dicom_node.config import NodeConfig, parse_config  # noqa: E402
from dicom_node.db import Database  # noqa: E402

PASSWORD = "correct horse battery"
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


def make_config(tmp_path: Path, **overrides: Any) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"port": 11112},
        "database": {"url": "sqlite:///node.db"},
        "storage": {"spool": "spool", "min_free_mb": 1},
        "rules": {"folder": "rules", "source": "database"},
        "destinations": {"archive": {"type": "folder", "path": "archive"}, "pacs": {"type": "folder", "path": "pacs"}},
        "web": {"port": 18080},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    (tmp_path / "rules").mkdir(exist_ok=True)
    return parse_config(data, tmp_path)


@dataclass
class WebEnv:
    config: NodeConfig
    db: Database
    app: Any

    def client(self):  # type: ignore[no-untyped-def]
        from fastapi.testclient import TestClient

        return TestClient(self.app)

    def user(self, name: str, role: str) -> str:
        from dicom_node.web.auth import create_user

        create_user(self.db, name, PASSWORD, role, created_by="test")
        return name

    def login(self, name: str, role: str | None = None):  # type: ignore[no-untyped-def]
        """A client logged in as ``name`` (created with ``role`` first if given), and its CSRF token."""
        if role is not None:
            self.user(name, role)
        client = self.client()
        page = client.get("/login")
        token = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        response = client.post("/login", data={"username": name, "password": PASSWORD, "login_csrf": token}, follow_redirects=False)
        assert response.status_code == 303, response.text
        csrf = _CSRF_META.search(client.get("/rules").text).group(1)  # type: ignore[union-attr]
        return client, csrf


@pytest.fixture
def web_env(tmp_path: Path) -> WebEnv:
    from dicom_node.web.app import create_app

    config = make_config(tmp_path)
    db = Database(config.database_url)
    env = WebEnv(config, db, create_app(config, db))
    yield env
    db.dispose()


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its default cost takes ~1 s per hash on a busy 2-core machine; tests use a cheap one."""
    from argon2 import PasswordHasher

    from dicom_node.web import auth

    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
